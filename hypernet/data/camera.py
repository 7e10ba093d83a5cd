"""HR videos made from still images by smooth camera paths.

One video pans, zooms in and out and turns slightly over a single photograph, so it holds
close-ups and distant shots of the same content: exactly the situation per-video memory is
meant to exploit (a close-up tells the network what the distant shot's texture should be).

The built-in image source is the set of real photographs shipped inside scikit-image's
`data` folder (no download). Any folder of the user's images works the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Real photographs among skimage/data (synthetic test patterns, logos and tiny images left out).
# The split is by photograph, so no held-out video shares content with a training video.
# motorcycle_left/right are a stereo pair: they stay on the same side.
BUILTIN_TRAIN = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "clock_motion.png",
    "coffee.png",
    "grass.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "text.png",
)
BUILTIN_VAL = ("chelsea.png", "coins.png", "gravel.png", "ihc.png", "rocket.jpg")


def builtin_image_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def builtin_images(split: str) -> list[Path]:
    """Paths of the built-in photographs of a split ("train" or "val")."""
    names = {"train": BUILTIN_TRAIN, "val": BUILTIN_VAL}.get(split)
    if names is None:
        raise ValueError(f"built-in image split must be 'train' or 'val', got {split!r}")
    folder = builtin_image_dir()
    paths = [folder / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"scikit-image's shipped photographs are missing: {missing}; reinstall scikit-image"
        )
    return paths


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1]. Grayscale is repeated to RGB; alpha is dropped."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            array = np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


@dataclass(frozen=True)
class CameraPath:
    """Keyframes at the start, middle and end of the video, eased with a cosine.

    centre: (x, y) in pixels of the source image; view: the side of the square view in source
    pixels (small = close-up, large = distant); angle: degrees."""

    centres: tuple[tuple[float, float], ...]
    views: tuple[float, ...]
    angles: tuple[float, ...]

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(cx, cy, view, angle) at time t in [0, 1]."""
        segments = len(self.views) - 1
        position = min(max(t, 0.0), 1.0) * segments
        k = min(int(position), segments - 1)
        u = position - k
        w = 0.5 - 0.5 * math.cos(math.pi * u)  # ease in and out: no jerks at keyframes

        def lerp(a: float, b: float) -> float:
            return a + (b - a) * w

        cx = lerp(self.centres[k][0], self.centres[k + 1][0])
        cy = lerp(self.centres[k][1], self.centres[k + 1][1])
        return cx, cy, lerp(self.views[k], self.views[k + 1]), lerp(self.angles[k], self.angles[k + 1])


def random_camera_path(
    rng: np.random.Generator,
    *,
    image_size: tuple[int, int],
    frame_size: int,
    zoom_range: tuple[float, float] = (0.15, 0.85),
    max_angle: float = 8.0,
) -> CameraPath:
    """A path whose view stays inside the image; zoom_range is the view side as a fraction of
    the image's shorter side. Zoom goes in then out (or out then in), so both scales appear."""
    height, width = image_size
    short = min(height, width)
    low = max(zoom_range[0] * short, min(frame_size, short * 0.95))  # never magnify the photo
    high = max(zoom_range[1] * short, low)
    near, far = sorted(rng.uniform(low, high, size=2))
    views = (far, near, far) if rng.random() < 0.5 else (near, far, near)
    angles = tuple(float(a) for a in rng.uniform(-max_angle, max_angle, size=3))
    centres = []
    for view, angle in zip(views, angles, strict=True):
        # the rotated square must stay inside the image: half its diagonal extent
        half = 0.5 * view * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle))))
        half = min(half, 0.5 * short)
        centres.append((float(rng.uniform(half, width - half)), float(rng.uniform(half, height - half))))
    return CameraPath(centres=tuple(centres), views=tuple(float(v) for v in views), angles=angles)


def image_pyramid(image: torch.Tensor, *, levels: int = 6) -> list[torch.Tensor]:
    """Levels halved by 2x2 averaging, so a distant view samples a pre-filtered image (no aliasing)."""
    pyramid = [image]
    while len(pyramid) < levels and min(pyramid[-1].shape[-2:]) >= 32:
        pyramid.append(F.avg_pool2d(pyramid[-1][None], 2, ceil_mode=True)[0])
    return pyramid


def render_frames(
    pyramid: list[torch.Tensor], path: CameraPath, *, num_frames: int, frame_size: int, indices: list[int]
) -> torch.Tensor:
    """Frames `indices` of a num_frames-long video along `path`: (n, 3, frame_size, frame_size) in [0, 1]."""
    height, width = pyramid[0].shape[-2:]
    frames = []
    for i in indices:
        if not 0 <= i < num_frames:
            raise IndexError(f"frame {i} outside a {num_frames}-frame video")
        cx, cy, view, angle = path.at(i / max(num_frames - 1, 1))
        # choose the pyramid level whose resolution is just above the output's
        level = min(max(math.floor(math.log2(max(view / frame_size, 1.0))), 0), len(pyramid) - 1)
        source = pyramid[level]
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        half = view / 2
        # affine map from output coordinates in [-1, 1] to source coordinates in [-1, 1]
        theta = torch.tensor(
            [
                [cos * half / (width / 2), -sin * half / (width / 2), cx / (width / 2) - 1],
                [sin * half / (height / 2), cos * half / (height / 2), cy / (height / 2) - 1],
            ],
            dtype=source.dtype,
        )
        grid = F.affine_grid(theta[None], [1, 3, frame_size, frame_size], align_corners=False)
        frame = F.grid_sample(
            source[None], grid, mode="bicubic", padding_mode="reflection", align_corners=False
        )
        frames.append(frame[0])
    return torch.stack(frames).clamp(0.0, 1.0)


class StillsVideo:
    """An HR video over one photograph; frames are rendered on demand, so any frame of any
    length of video costs the same and nothing is stored."""

    def __init__(
        self,
        *,
        image_path: str | Path,
        seed: int,
        num_frames: int,
        frame_size: int,
        zoom_range: tuple[float, float] = (0.15, 0.85),
        max_angle: float = 8.0,
        pyramid: list[torch.Tensor] | None = None,
    ):
        self.image_path = Path(image_path)
        self.num_frames = num_frames
        self.frame_size = frame_size
        self.video_id = f"{self.image_path.stem}-{seed}"
        self.pyramid = pyramid if pyramid is not None else image_pyramid(load_image(image_path))
        height, width = self.pyramid[0].shape[-2:]
        if min(height, width) < frame_size:
            raise ValueError(
                f"image {self.image_path} is {width}x{height}, smaller than the frame size {frame_size}: "
                "use a larger image or a smaller data.hr_size"
            )
        rng = np.random.default_rng(seed)
        self.path = random_camera_path(
            rng, image_size=(height, width), frame_size=frame_size, zoom_range=zoom_range, max_angle=max_angle
        )

    @property
    def hr_size(self) -> tuple[int, int]:
        return self.frame_size, self.frame_size

    def hr_frames(self, indices: list[int]) -> torch.Tensor:
        return render_frames(
            self.pyramid,
            self.path,
            num_frames=self.num_frames,
            frame_size=self.frame_size,
            indices=list(indices),
        )
