"""Video reading and writing through PyAV: the one place where pixels enter and leave the project.

Everything above this layer sees frames as numpy ``uint8`` RGB arrays shaped ``(T, H, W, 3)``
("t h w c"). A "video" is either a file that FFmpeg can decode (mp4, mkv, avi, webm, ...) or a
folder of still frames (png / jpg / jpeg / bmp, in natural order of their names, the REDS layout).

Why it looks the way it does:

- Decoding is streamed: :func:`iter_chunks` decodes frame by frame and yields every ``chunk_size``
  frames, so a two-hour film never sits in memory. :func:`read_video` and :func:`read_frames` are
  built on the same frame generator, so there is one place that decodes.
- Frame-accurate access decodes sequentially from the first frame (no seeking): seeking lands on
  key frames and timestamps lie in many real files, and the project needs exact frame indices
  more than it needs fast random access.
- Every read problem is a :class:`VideoReadError` naming the path and what is wrong, never a
  stack trace from inside FFmpeg; every write problem is a :class:`VideoWriteError`.
- A file cut short (a download or copy that stopped half-way) decodes without complaint into a
  shorter video, so the frames found are compared with the frames the container announces:
  fewer is a :class:`VideoReadError` naming both counts, or with ``allow_truncated=True`` a
  :class:`TruncatedVideoWarning`. Containers that store a frame count (mp4, mov, avi) are
  compared when a stream reaches its end (or up front with ``probe(verify=True)``), since the
  header alone cannot tell; Matroska / WebM, which store a duration instead, are compared by
  time in :func:`probe`, which counts their packets anyway, and at the end of a stream. Other
  containers announce nothing reliable, and nothing is compared.
- Writes are atomic: frames are encoded into a hidden temporary file in the destination folder
  that is renamed over the final name only when complete, so a crash or a bad frame never leaves
  a truncated video behind under the real name.
- :func:`write_mp4` and :func:`h264_roundtrip` configure their H.264 stream through the same
  function, so the codec artefacts the degradation pipeline simulates are exactly those of the
  videos the project writes.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.logging
import numpy as np
import torch
from av.video.reformatter import Interpolation
from einops import rearrange
from PIL import Image, UnidentifiedImageError

# FFmpeg prints a line for every damaged packet and libx264 its statistics at the end of every
# encode. PyAV's level ``None`` drops them all; we pin it explicitly because the errors raised
# here already carry the path and the reason. To debug a codec problem, call
# ``av.logging.set_level(av.logging.VERBOSE)`` after importing this module.
av.logging.set_level(None)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")
# image files, for frame folders and for folders of still images alike
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_FPS = 25.0  # a folder of frames has no frame rate; 25 is the PAL / REDS-era convention
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)

# swscale's default yuv420p <-> rgb24 converters take each pixel's chroma from the nearest
# half-resolution sample, which costs ~10 dB PSNR on colourful content (38 dB instead of 49 dB for a
# lossless round trip). These flags select its accurate path: box-filtered chroma on the way in,
# bilinear chroma on the way out, exact rounding. Decoding is ~1.5x slower; worth it for SR targets.
RGB_TO_YUV = Interpolation.AREA | Interpolation.FULL_CHR_H_INP | Interpolation.ACCURATE_RND
YUV_TO_RGB = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND

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


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns without decoding; ``fps`` of a folder is a convention, not data."""

    path: str
    num_frames: int
    fps: float
    height: int
    width: int


# ----------------------------------------------------------------------------------------------
# frame folders


def natural_key(name: str) -> tuple:
    """Sort key under which ``im2`` < ``im10`` (digit runs compare as numbers, case ignored)."""
    parts = re.split(r"(\d+)", name.lower())
    # re.split with one capture group alternates text, number, text, ...: even slots are str, odd
    # slots int, so two keys always compare like with like. The raw name breaks ties (a01 / a1).
    return (*(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def list_frame_files(folder: PathLike) -> list[Path]:
    """The frame files of ``folder`` in natural order; hidden files (our temporaries) are skipped."""
    folder = Path(folder)
    try:
        names = [
            entry.name
            for entry in os.scandir(folder)
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.name.lower().endswith(FRAME_EXTENSIONS)
        ]
    except OSError as e:
        raise VideoReadError(f"{folder}: cannot list the frame folder ({_reason(e)})") from e
    if not names:
        raise VideoReadError(
            f"{folder}: folder holds no frames (no {'/'.join(x[1:] for x in FRAME_EXTENSIONS)} files)"
        )
    return [folder / name for name in sorted(names, key=natural_key)]


def _holds_frames(folder: Path) -> bool:
    try:
        return any(
            e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(FRAME_EXTENSIONS)
            for e in os.scandir(folder)
        )
    except OSError:
        return False


def list_videos(folder: PathLike) -> list[Path]:
    """The videos directly under ``folder`` in natural order: video files (VIDEO_SUFFIXES) and
    subfolders (frame folders: one without frames fails when read, naming it). Empty when it
    holds none; hidden entries are skipped."""
    folder = Path(folder)
    try:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    except OSError as e:
        raise VideoReadError(f"{folder}: cannot list the folder ({_reason(e)})") from e
    videos = [e for e in entries if (e.is_file() and e.suffix.lower() in VIDEO_SUFFIXES) or e.is_dir()]
    return sorted(videos, key=lambda p: natural_key(p.name))


def expand_videos(paths: Sequence[PathLike], *, option: str) -> list[Path]:
    """Videos named on a command line: a file is one video; a folder of frames is one video; any
    other folder stands for the videos in it (`list_videos`). VideoReadError names the option
    and the folder that holds none."""
    videos: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise VideoReadError(f"{option} {path}: no such file or folder")
        if path.is_file() or _holds_frames(path):
            videos.append(path)
            continue
        found = list_videos(path)
        if not found:
            raise VideoReadError(
                f"{option} {path}: the folder holds no video ({', '.join(VIDEO_SUFFIXES)} files, or "
                "folders of frames) and no frames of its own"
            )
        videos.extend(found)
    return videos


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image as (H, W, 3) uint8 RGB.

    Grayscale (``1``, ``L``, ``I;16``, ``I``) is repeated over the three channels; 16-bit values
    (``I;16*`` and ``I``, read as 16-bit) are scaled to 8-bit by ``round(v * 255 / 65535)``.
    Alpha (``RGBA``, ``LA``, a palette with transparency) is dropped, not composited: the colour
    under a transparent pixel is kept as it is, because for video frames alpha is almost always
    a constant-opaque leftover of the tool that saved them.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float64)  # handles the big-endian I;16B too
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, P, RGBA, LA, CMYK, YCbCr, ...: drops alpha
    return np.array(image, dtype=np.uint8)  # a writable copy: torch takes it without a warning


def read_image(path: Path) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB (`image_to_rgb`); VideoReadError names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: not a readable image ({e})") from e


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: not a readable image ({e})") from e
    return height, width


def _size_mismatch(path: Path, got: tuple[int, ...], want: tuple[int, ...], first: Path) -> VideoReadError:
    return VideoReadError(
        f"{path}: frame is {got[0]}x{got[1]} (HxW) but {first.name} is {want[0]}x{want[1]}; "
        "all frames of a folder must have the same size"
    )


def _iter_folder_frames(files: Sequence[Path]) -> Iterator[np.ndarray]:
    first_shape: tuple[int, ...] | None = None
    for path in files:
        frame = read_image(path)
        if first_shape is None:
            first_shape, first_path = frame.shape, path
        elif frame.shape != first_shape:
            raise _size_mismatch(path, frame.shape, first_shape, first_path)
        yield frame


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


# ----------------------------------------------------------------------------------------------
# files cut short


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


# ----------------------------------------------------------------------------------------------
# writing


def _iter_rgb_frames(frames: np.ndarray | Iterable[np.ndarray], *, dest: Path) -> Iterator[np.ndarray]:
    """Flatten an array, or an iterable of single frames and chunks, into checked (H, W, 3) frames."""
    items = [frames] if isinstance(frames, np.ndarray) else frames
    shape = None
    index = 0
    for item in items:
        array = np.asarray(item)
        if array.ndim == 3:
            array = array[None]  # (h, w, c) -> (1, h, w, c)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise VideoWriteError(
                f"{dest}: frames must be RGB arrays shaped (H, W, 3) or (t, H, W, 3); "
                f"got shape {tuple(np.shape(item))} at frame {index}"
            )
        if array.dtype != np.uint8:
            raise VideoWriteError(
                f"{dest}: frames must be uint8, got {array.dtype} at frame {index}; convert with "
                "np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1]"
            )
        for frame in array:
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise VideoWriteError(
                    f"{dest}: frame {index} is {frame.shape[0]}x{frame.shape[1]} but frame 0 is "
                    f"{shape[0]}x{shape[1]}; all frames must have the same size"
                )
            yield frame
            index += 1


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p stores chroma at half resolution, so H.264 needs even sizes: replicate the last
    row / column (invisible once cropped, and cheaper for the encoder than a black border)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _check_encoder_args(*, fps: float, crf: int, preset: str) -> Fraction:
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not (isinstance(crf, int | np.integer) and 0 <= crf <= 51):
        raise ValueError(f"crf must be an integer in 0..51 (0 = lossless, 18 ~ visually lossless), got {crf}")
    if preset not in X264_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}; got {preset!r}")
    # 30000/1001 and 24000/1001 come back exactly; 29.97 becomes 2997/100
    return Fraction(fps).limit_denominator(1001)


def add_h264_stream(
    container: av.container.OutputContainer,
    *,
    height: int,
    width: int,
    fps: float,
    crf: int,
    preset: str = "medium",
) -> av.video.stream.VideoStream:
    """The project's one H.264 configuration: libx264, yuv420p, constant quality ``crf``.

    ``height``/``width`` are the frame size before padding; the stream gets the even size
    above it. The stream is tagged BT.601, limited range, centred chroma: what the RGB -> YUV
    conversion in :func:`_encode` produces, so players and our own reader convert back exactly.
    """
    rate = _check_encoder_args(fps=fps, crf=crf, preset=preset)
    # the box filter of RGB_TO_YUV puts chroma at the centre of each 2x2 block; H.264 assumes
    # "left" unless told, and a reader that honours the tag would shift colour by half a pixel
    options = {"crf": str(int(crf)), "preset": preset, "chroma_sample_location": "center"}
    stream = container.add_stream("libx264", rate=rate, options=options)
    stream.height, stream.width = height + height % 2, width + width % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.colorspace = 6  # AVCOL_SPC_SMPTE170M (BT.601)
    stream.codec_context.color_range = 1  # AVCOL_RANGE_MPEG (limited, 16..235)
    return stream


def _encode(
    container: av.container.OutputContainer,
    first: np.ndarray,
    rest: Iterator[np.ndarray],
    *,
    fps: float,
    crf: int,
    preset: str,
) -> int:
    """Encode ``first`` and then ``rest`` into ``container``; returns the number of frames."""
    height, width = first.shape[:2]
    stream = add_h264_stream(container, height=height, width=width, fps=fps, crf=crf, preset=preset)
    count = 0
    for frame in itertools.chain([first], rest):
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(_pad_to_even(frame)), format="rgb24")
        video_frame = rgb.reformat(format="yuv420p", interpolation=RGB_TO_YUV)  # BT.601, limited range
        video_frame.pts = count
        video_frame.time_base = 1 / stream.codec_context.framerate
        container.mux(stream.encode(video_frame))
        count += 1
    container.mux(stream.encode(None))  # flush the frames the encoder holds back for look-ahead
    return count


def _temp_name(path: Path) -> Path:
    """A hidden name in the same folder (same file system, so ``os.replace`` is atomic); it keeps
    the suffix so tools that sniff extensions still work, and the leading dot keeps it out of
    :func:`list_frame_files`."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")


def _make_folder(folder: Path, *, dest: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoWriteError(f"{dest}: cannot create the folder {folder} ({_reason(e)})") from e


def write_mp4(
    path: PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    fps: float = 25.0,
    crf: int = 18,
    preset: str = "medium",
) -> int:
    """Write RGB uint8 frames to an H.264 mp4, atomically; returns the number of frames written.

    ``frames`` is a (T, H, W, 3) array or any iterable of (H, W, 3) frames and (t, H, W, 3)
    chunks, consumed once, so a caller can stream a video longer than memory. An odd height or
    width is padded to even by replicating the last row / column (yuv420p needs even sizes):
    the file is then one pixel larger than the frames; :func:`h264_roundtrip` crops it back.
    Missing parent folders are created. Nothing is ever left at ``path`` unless the whole video
    was written.
    """
    path = Path(path)
    _check_encoder_args(fps=fps, crf=crf, preset=preset)  # fail before touching the disk
    _make_folder(path.parent, dest=path)
    stream = _iter_rgb_frames(frames, dest=path)
    first = next(stream, None)
    if first is None:
        raise VideoWriteError(f"{path}: no frames to write")
    temp = _temp_name(path)
    try:
        try:
            with av.open(str(temp), "w", format="mp4") as container:
                count = _encode(container, first, stream, fps=fps, crf=crf, preset=preset)
        except av.error.FFmpegError as e:  # opening, encoding or muxing; not the caller's frames
            raise VideoWriteError(f"{path}: cannot write the video ({_reason(e)})") from e
        try:
            os.replace(temp, path)
        except OSError as e:  # e.g. a folder already has that name
            raise VideoWriteError(f"{path}: cannot write the video ({_reason(e)})") from e
    except BaseException:  # also the caller's frames failing, or Ctrl-C: leave nothing behind
        temp.unlink(missing_ok=True)
        raise
    return count


def write_png_folder(
    folder: PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    start_index: int = 0,
    digits: int = 8,
) -> int:
    """Write frames as ``00000000.png``, ``00000001.png``, ... (the REDS layout); returns the count.

    ``frames`` is accepted in the same forms as :func:`write_mp4`. Each file is written under a
    hidden temporary name and renamed, so a reader never sees half a PNG. The folder is created
    if needed; existing files with the same names are replaced, other files are left alone.
    """
    folder = Path(folder)
    if start_index < 0 or digits < 1:
        raise ValueError(f"start_index must be >= 0 and digits >= 1; got {start_index} and {digits}")
    _make_folder(folder, dest=folder)
    count = 0
    for frame in _iter_rgb_frames(frames, dest=folder):
        target = folder / f"{start_index + count:0{digits}d}.png"
        temp = _temp_name(target)
        try:
            Image.fromarray(frame).save(temp, format="PNG")  # (h, w, 3) uint8 -> RGB
            os.replace(temp, target)
        except OSError as e:
            temp.unlink(missing_ok=True)
            raise VideoWriteError(f"{target}: cannot write the frame ({_reason(e)})") from e
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        count += 1
    if count == 0:
        raise VideoWriteError(f"{folder}: no frames to write")
    return count


def h264_roundtrip(frames: np.ndarray, *, crf: int, fps: float = 25.0, preset: str = "medium") -> np.ndarray:
    """Encode (T, H, W, 3) uint8 frames to H.264 in memory and decode them back, same shape.

    Simulates the compression artefacts of a video delivered at quality ``crf`` (higher = worse)
    with exactly the encoder settings of :func:`write_mp4`; no temporary files are written.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"h264_roundtrip needs a non-empty uint8 array shaped (T, H, W, 3); "
            f"got {frames.dtype} {frames.shape}"
        )
    _, height, width, _ = frames.shape
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        _encode(container, frames[0], iter(frames[1:]), fps=fps, crf=crf, preset=preset)
    buffer.seek(0)
    with av.open(buffer, "r") as container:
        decoded = np.stack([_to_rgb(f, "h264_roundtrip") for f in container.decode(video=0)])
    if len(decoded) != len(frames):  # would be an encoder bug, not a user error
        raise RuntimeError(f"h264_roundtrip: encoded {len(frames)} frames but decoded {len(decoded)}")
    return decoded[:, :height, :width]  # crop the even-size padding


# ----------------------------------------------------------------------------------------------
# frames <-> tensors


def to_tensor(chunk: np.ndarray, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames (t, H, W, 3) -> one video of floats in [0, 1], (1, t, 3, H, W)."""
    frames = torch.from_numpy(np.ascontiguousarray(chunk)).to(device).float().div_(255)
    return rearrange(frames, "t h w c -> 1 t c h w")


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """One video of floats (1, t, 3, H, W), clamped to [0, 1] -> uint8 frames (t, H, W, 3)."""
    frames = rearrange(video.clamp(0, 1).mul(255).round(), "1 t c h w -> t h w c")
    return frames.to(torch.uint8).cpu().numpy()
