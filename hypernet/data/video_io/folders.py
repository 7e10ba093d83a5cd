"""Frame folders and image files: the frames of a folder in natural order, the videos a folder
holds, and any image as (H, W, 3) uint8 RGB."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hypernet.data.video_io.errors import PathLike, VideoReadError, _reason

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")
# image files, for frame folders and for folders of still images alike
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
