"""Files written so that a crash or a kill never leaves a half-written one under the final name,
with the permissions a new file usually gets. Used by the run bookkeeping, the checkpoints, the
adapter files and the previews alike."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask. mkstemp makes its
    files 0o600 (private), which would leave checkpoints and adapters unreadable to the group
    that shares a run folder. The umask can only be read by setting it, so it is set back."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a reader
    (or a crash) never sees a half-written file under the final name. The file gets the usual
    permissions of a new file (see default_file_mode), not mkstemp's private ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
