"""Encoding, atomic: H.264 mp4 files and PNG folders written under a hidden temporary name and
renamed when complete, and the in-memory H.264 round trip the degradation pipeline uses, with
the same encoder settings."""

from __future__ import annotations

import io
import itertools
import os
import uuid
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

from hypernet.data.video_io.decode import _to_rgb
from hypernet.data.video_io.errors import PathLike, VideoWriteError, _reason

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


# the way in of decode.YUV_TO_RGB's accurate path: box-filtered chroma, exact rounding
RGB_TO_YUV = Interpolation.AREA | Interpolation.FULL_CHR_H_INP | Interpolation.ACCURATE_RND


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
