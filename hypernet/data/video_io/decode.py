"""Decoding, streamed: one frame generator under `probe`, `iter_chunks`, `read_video` and
`read_frames`, decoding sequentially from the first frame (no seeking) so frame indices are
exact, and checking a file against what its container announces (`truncation`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import Interpolation

from hypernet.data.video_io.errors import PathLike, TruncatedVideoWarning, VideoReadError
from hypernet.data.video_io.folders import _image_size, _iter_folder_frames, _size_mismatch, list_frame_files
from hypernet.data.video_io.truncation import _cut_short, _PacketTally, _shortfall

DEFAULT_FOLDER_FPS = 25.0  # a folder of frames has no frame rate; 25 is the PAL / REDS-era convention

# swscale's default yuv420p <-> rgb24 converters take each pixel's chroma from the nearest
# half-resolution sample, which costs ~10 dB PSNR on colourful content (38 dB instead of 49 dB for a
# lossless round trip). These flags select its accurate path: box-filtered chroma on the way in,
# bilinear chroma on the way out, exact rounding. Decoding is ~1.5x slower; worth it for SR targets.
YUV_TO_RGB = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns without decoding; ``fps`` of a folder is a convention, not data."""

    path: str
    num_frames: int
    fps: float
    height: int
    width: int


# ----------------------------------------------------------------------------------------------
# video files


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes), not a video")


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path), "r")
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(
            f"{path}: not a video FFmpeg can open, or the file is truncated or corrupt ({e})"
        ) from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: the file has no video stream")
    return container, container.streams.video[0]


def _iter_video_frames(
    path: Path, *, stop: int | None = None, allow_truncated: bool = False
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) for each decoded frame, up to index ``stop`` (exclusive). A stream that
    reaches the end of the file is checked against what the container announces (see
    :func:`_shortfall`); one stopped early is not."""
    container, stream = _open_video(path)
    with container:
        # slice threads only: with frame threads ("AUTO") two decodes of one file now and then gave
        # different pixels in the last frames (seen as a flaky specialise test, 1 run in 5 or 6)
        stream.thread_type = "SLICE"
        tally = _PacketTally(stream)
        index = -1
        try:
            # what container.decode(stream) does, with the packets counted on the way
            for packet in container.demux(stream):
                tally.add(packet)
                for frame in packet.decode():
                    index += 1
                    yield index, frame
                    if stop is not None and index + 1 >= stop:
                        return  # before decoding the next frame
        except av.error.FFmpegError as e:
            # a file cut in the middle ends in a partial packet; whether that is what happened is
            # told by what the container announces against the packets it held
            if index >= 0 and (shortfall := _shortfall(container, stream, tally)) is not None:
                _cut_short(path, index + 1, shortfall, allow_truncated=allow_truncated)
                return
            raise VideoReadError(f"{path}: cannot decode frame {index + 1} ({e}); the file is corrupt") from e
        if index < 0:
            raise VideoReadError(f"{path}: the video has no frames")
        if (shortfall := _shortfall(container, stream, tally)) is not None:
            _cut_short(path, index + 1, shortfall, allow_truncated=allow_truncated)


def _to_rgb(frame: av.VideoFrame, path: Path | str) -> np.ndarray:
    try:
        # swscale converts every pixel format (gray, gray16, yuva, pal8, 10-bit, ...) to rgb24,
        # with the matrix and range the frame is tagged with; alpha is dropped, not composited.
        return frame.reformat(format="rgb24", interpolation=YUV_TO_RGB).to_ndarray()
    except (av.error.FFmpegError, ValueError) as e:
        raise VideoReadError(f"{path}: cannot convert a {frame.format.name} frame to RGB ({e})") from e


def _count_decodable(path: Path) -> int:
    """Frames that actually decode, for a file already known (and allowed) to be cut short."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedVideoWarning)  # the caller says it once
        return sum(1 for _ in _iter_video_frames(path, allow_truncated=True))


# ----------------------------------------------------------------------------------------------
# public reading API


def probe(
    path: PathLike, *, fps: float | None = None, verify: bool = False, allow_truncated: bool = False
) -> VideoInfo:
    """Frame count, frame rate and size of a video file or frame folder, cheaply.

    A video file is not decoded: the frame count comes from the container header
    (``stream.frames``) or, where the container does not store it (mkv, webm), from counting the
    packets of the video stream (demuxing only). A folder opens only the header of each frame,
    to check that all frames have one size. ``fps``: ``None`` takes the container's average rate
    for a file and ``DEFAULT_FOLDER_FPS`` (25.0) for a folder; a number overrides both.

    A file cut short is a VideoReadError naming both frame counts: always where the packets are
    counted anyway (mkv, webm: compared with the stored duration), and with ``verify=True`` also
    where the header stores a count (mp4, mov, avi), at the cost of reading the file once
    (demuxing, no decoding). With ``allow_truncated=True`` it is a TruncatedVideoWarning instead,
    and ``num_frames`` is the frames that decode (found by decoding the file once).
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        files = list_frame_files(path)
        size = _image_size(files[0])
        for file in files[1:]:
            if (other := _image_size(file)) != size:
                raise _size_mismatch(file, other, size, files[0])
        rate = DEFAULT_FOLDER_FPS if fps is None else float(fps)
        return VideoInfo(path=str(path), num_frames=len(files), fps=rate, height=size[0], width=size[1])

    container, stream = _open_video(path)
    with container:
        num_frames = stream.frames
        shortfall = None
        try:
            if num_frames <= 0 or verify:
                tally = _PacketTally(stream)
                for packet in container.demux(stream):
                    tally.add(packet)
                num_frames = num_frames if num_frames > 0 else tally.count
                shortfall = _shortfall(container, stream, tally) if tally.count > 0 else None
        except av.error.FFmpegError as e:
            raise VideoReadError(f"{path}: cannot read the video packets ({e}); the file is corrupt") from e
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        height, width = stream.codec_context.height, stream.codec_context.width
    if shortfall is not None:  # allowed: the count is what will really come out of the decoder
        num_frames = _count_decodable(path) if allow_truncated else tally.count
        _cut_short(path, num_frames, shortfall, allow_truncated=allow_truncated)
    if num_frames <= 0:
        raise VideoReadError(f"{path}: the video has no frames")
    if fps is not None:
        rate = fps
    if height <= 0 or width <= 0:  # codec parameters missing from the header: ask the first frame
        first = next(iter_chunks(path, chunk_size=1, count=1))
        height, width = first.shape[1:3]
    return VideoInfo(
        path=str(path), num_frames=int(num_frames), fps=float(rate or 0.0), height=height, width=width
    )


def _check_range(start: int, count: int | None) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1 or None (all frames), got {count}")


def _iter_frames(
    path: Path, *, start: int, count: int | None, allow_truncated: bool = False
) -> Iterator[np.ndarray]:
    """Frames ``start`` .. ``start + count`` (exclusive) of a video or folder, one by one."""
    _check_exists(path)
    stop = None if count is None else start + count
    if path.is_dir():
        files = list_frame_files(path)
        if start >= len(files):
            raise VideoReadError(f"{path}: start={start} is past the end ({len(files)} frames)")
        yield from _iter_folder_frames(files[start:stop])
        return
    shape = None
    index = -1
    for index, frame in _iter_video_frames(path, stop=stop, allow_truncated=allow_truncated):
        if index < start:
            continue  # still decoded (frames depend on each other), but not converted to RGB
        rgb = _to_rgb(frame, path)
        if shape is None:
            shape = rgb.shape
        elif rgb.shape != shape:
            raise VideoReadError(
                f"{path}: frame {index} is {rgb.shape[0]}x{rgb.shape[1]} but earlier frames are "
                f"{shape[0]}x{shape[1]}; videos that change size mid-stream are not supported"
            )
        yield rgb
    if shape is None:
        raise VideoReadError(f"{path}: start={start} is past the end ({index + 1} frames)")


def iter_chunks(
    path: PathLike,
    *,
    chunk_size: int = 32,
    start: int = 0,
    count: int | None = None,
    allow_truncated: bool = False,
) -> Iterator[np.ndarray]:
    """Stream frames ``[start, start + count)`` as (t, H, W, 3) uint8 chunks, t <= ``chunk_size``.

    Memory holds one chunk at a time, whatever the length of the video. Like a slice, ``count``
    past the end of the video yields the frames there are; a ``start`` past the end is an error.
    The frames before ``start`` are decoded and thrown away. A file found cut short when the
    stream reaches its end raises VideoReadError there (after the frames before it were
    yielded: a consumer writing a file must not keep it), or only warns with ``allow_truncated``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_range(start, count)
    chunk: list[np.ndarray] = []
    for frame in _iter_frames(Path(path), start=start, count=count, allow_truncated=allow_truncated):
        chunk.append(frame)
        if len(chunk) == chunk_size:
            yield np.stack(chunk)  # (t, h, w, c)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def read_video(
    path: PathLike, *, start: int = 0, count: int | None = None, allow_truncated: bool = False
) -> np.ndarray:
    """Frames ``[start, start + count)`` of a video or folder as one (T, H, W, 3) uint8 array."""
    chunks = iter_chunks(path, chunk_size=64, start=start, count=count, allow_truncated=allow_truncated)
    return np.concatenate(list(chunks))


def read_frames(path: PathLike, indices: Sequence[int], *, allow_truncated: bool = False) -> np.ndarray:
    """Just the frames at ``indices`` (any order, repeats allowed), as (len(indices), H, W, 3).

    A video is decoded once, sequentially, up to the largest index, and only the requested
    frames are converted and kept; for a folder only the requested files are opened. A file cut
    short is found by :func:`probe` (mkv, webm) or by a requested frame that is missing;
    ``allow_truncated`` lets the first pass with a warning, never the second.
    """
    path = Path(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: read_frames needs at least one frame index")
    wanted = sorted(set(indices))
    # cheap: a folder listing, a container header, or packets counted without decoding
    num_frames = (
        len(list_frame_files(path))
        if path.is_dir()
        else probe(path, allow_truncated=allow_truncated).num_frames
    )
    if wanted[0] < 0 or wanted[-1] >= num_frames:
        bad = wanted[0] if wanted[0] < 0 else wanted[-1]
        raise VideoReadError(
            f"{path}: frame index {bad} is out of range; the video has {num_frames} frames (0..{num_frames - 1})"
        )

    if path.is_dir():
        files = list_frame_files(path)
        by_index = dict(zip(wanted, _iter_folder_frames([files[i] for i in wanted]), strict=True))
    else:
        by_index = {}
        keep = set(wanted)
        for index, frame in _iter_video_frames(path, stop=wanted[-1] + 1, allow_truncated=allow_truncated):
            if index in keep:
                by_index[index] = _to_rgb(frame, path)
        if len(by_index) < len(wanted):  # the header promised more frames than the stream holds
            missing = next(i for i in wanted if i not in by_index)
            raise VideoReadError(
                f"{path}: frame index {missing} is out of range; only {index + 1} frames could be "
                f"decoded (the header says {num_frames})"
            )
        shapes = {f.shape for f in by_index.values()}
        if len(shapes) > 1:
            raise VideoReadError(f"{path}: frames change size mid-stream ({sorted(shapes)}); not supported")
    return np.stack([by_index[i] for i in indices])
