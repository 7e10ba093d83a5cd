"""The errors every part of video reading and writing raises, and the path type they take."""

from __future__ import annotations

import os

PathLike = str | os.PathLike[str]


class VideoReadError(ValueError):
    """A video or frame folder could not be read; the message names the path and the reason."""


class VideoWriteError(ValueError):
    """A video or frame folder could not be written; the message names the path and the reason."""


class TruncatedVideoWarning(UserWarning):
    """A video file holds fewer frames than its container announces, read anyway because the
    caller passed ``allow_truncated=True``."""


def _reason(error: Exception) -> str:
    """``No such file or directory`` rather than ``[Errno 2] No such file or directory: '/x/.y.tmp'``."""
    return getattr(error, "strerror", None) or str(error)
