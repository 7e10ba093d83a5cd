"""Files cut short: what a container announces (a stored frame count, or a stored duration)
against the packets a stream really holds, and the error or warning that says so."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import av

from hypernet.data.video_io.errors import TruncatedVideoWarning, VideoReadError


class _PacketTally:
    """The packets of one stream seen so far: how many carry data, and the latest time (seconds)
    any of them reaches (pts + duration), what a duration-only container is compared with."""

    def __init__(self, stream: av.video.stream.VideoStream):
        self.time_base = stream.time_base
        self.count = 0
        self.end: float | None = None

    def add(self, packet: av.Packet) -> None:
        if packet.size <= 0:  # the flush packets that end a demux carry no frame
            return
        self.count += 1
        if packet.pts is not None and self.time_base is not None:
            end = float((packet.pts + (packet.duration or 0)) * self.time_base)
            self.end = end if self.end is None else max(self.end, end)


def _parse_clock(text: str) -> float | None:
    """Seconds from Matroska's ``DURATION`` tag, ``HH:MM:SS.nnnnnnnnn``; None if it is not that."""
    match = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", text or "")
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _announced_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """Seconds of video a Matroska / WebM header announces, written by the muxer from the real
    timestamps: the stream's own duration, its ``DURATION`` tag, or the segment's duration when
    the video is the only stream (with audio, the file may be longer than its video). Other
    containers without a frame count (MPEG-TS, Ogg, raw streams) get their duration estimated
    by FFmpeg from the end of the file or the bit rate, which says nothing about truncation:
    None, and nothing is compared."""
    if "matroska" not in (container.format.name or "") and "webm" not in (container.format.name or ""):
        return None
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tags = {str(k).upper(): v for k, v in (stream.metadata or {}).items()}
    if (seconds := _parse_clock(tags.get("DURATION", ""))) is not None:
        return seconds
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _cut_short(path: Path, found: int, shortfall: str, *, allow_truncated: bool) -> None:
    """Raise the VideoReadError of a file cut short, or warn with the same text when allowed
    (the same text each time, so that a filter on "once" shows it once however often it is read)."""
    message = (
        f"{path}: the file is cut short (truncated or damaged): {found} frames could be read but "
        f"the container announces {shortfall}"
    )
    if not allow_truncated:
        raise VideoReadError(
            f"{message}; copy or download it again, or pass allow_truncated=True "
            "(specialise: --allow-truncated) to use the frames there are"
        )
    warnings.warn(f"{message}; using the frames there are", TruncatedVideoWarning, stacklevel=2)


def _shortfall(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, tally: _PacketTally
) -> str | None:
    """After a whole demux (or decode) of a file: None when its packets are all the container
    announces, else what it announces, for the message. A stored frame count is compared with
    the packets present (not with the frames decoded: an mp4 edit list may drop some frames of a
    complete file on purpose); a stored duration with the time the packets reach, less two
    frames and 0.1 s of slack for rounding (time, not a count from the average rate, so a
    variable frame rate is no false alarm)."""
    if stream.frames > 0:
        return None if tally.count >= stream.frames else str(stream.frames)
    duration = _announced_duration(container, stream)
    if duration is None or tally.end is None:
        return None  # nothing trustworthy to compare with
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    if tally.end >= duration - 0.1 - (2 / rate if rate > 0 else 0.0):
        return None
    frames = f"about {round(duration * rate)} frames" if rate > 0 else "more"
    return f"{frames} ({duration:.2f} s at {rate:g} fps; the frames there are end at {tally.end:.2f} s)"
