"""HR videos made from still images by smooth camera paths.

One video pans, zooms in and out and turns slightly over a single photograph, so it holds
close-ups and distant shots of the same content: exactly the situation per-video memory is
meant to exploit (a close-up tells the network what the distant shot's texture should be).

The built-in image source is the set of real photographs shipped inside scikit-image's
`data` folder (no download). Any folder of the user's images works the same way.

A photograph's videos may be meta-augmented (`PhotoAugment`): a random colour change
(`colour_matrix`) or a collage with pieces of other photographs (`collage`), so that a few
photographs stop being a few recognisable tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hypernet.data import video_io

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
    """The image files of a folder in natural order (the frame-folder lister of `video_io`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    try:
        return video_io.list_frame_files(folder)
    except video_io.VideoReadError as e:
        raise ValueError(f"image folder {folder} holds no images ({e})") from None


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1], read as frame folders are (`video_io.read_image`:
    grayscale repeated, 16-bit scaled to 8, alpha dropped)."""
    return video_io.to_tensor(video_io.read_image(Path(path))[None])[0, 0]


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
    """Levels halved by 2x2 averaging, so a distant view samples a pre-filtered image (no aliasing);
    of one image (C, H, W) or of a batch (B, C, H, W), every level holding the whole batch."""
    pyramid = [image]
    while len(pyramid) < levels and min(pyramid[-1].shape[-2:]) >= 32:
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
    return pyramid


def view_theta(
    cx: float, cy: float, view: float, angle: float, *, height: int, width: int, dtype: torch.dtype
) -> torch.Tensor:
    """(2, 3) affine from output coordinates in [-1, 1] to source coordinates in [-1, 1] of an
    image of height x width: a square view of side `view` centred at (cx, cy), turned by angle."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    half = view / 2
    return torch.tensor(
        [
            [cos * half / (width / 2), -sin * half / (width / 2), cx / (width / 2) - 1],
            [sin * half / (height / 2), cos * half / (height / 2), cy / (height / 2) - 1],
        ],
        dtype=dtype,
    )


def pyramid_level(pyramid: list[torch.Tensor], source_pixels_per_output_pixel: float) -> int:
    """The pyramid level whose resolution is just above the output's."""
    level = math.floor(math.log2(max(source_pixels_per_output_pixel, 1.0)))
    return min(max(level, 0), len(pyramid) - 1)


def render_view(
    pyramid: list[torch.Tensor], cx: float, cy: float, view: float, angle: float, *, frame_size: int
) -> torch.Tensor:
    """One square view of the image (pyramid level 0 coordinates): (C, frame_size, frame_size)."""
    height, width = pyramid[0].shape[-2:]
    source = pyramid[pyramid_level(pyramid, view / frame_size)]
    theta = view_theta(cx, cy, view, angle, height=height, width=width, dtype=source.dtype)
    grid = F.affine_grid(theta[None], [1, source.shape[0], frame_size, frame_size], align_corners=False)
    frame = F.grid_sample(source[None], grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return frame[0]


def sprite_theta(
    camera: tuple[float, float, float, float], placement: tuple[float, float, float, float]
) -> list[list[float]]:
    """(2, 3) affine from output coordinates o in [-1, 1] to a moving layer's coordinates u in
    [-1, 1], the camera at (cx, cy, view, phi) and the layer at `placement` (x, y, theta, size).

    Output coordinates map to scene pixels q = c + (view / 2) R(phi) o; the layer at (s, theta,
    size) maps u to p = s + (size / 2) R(theta) u; so u = (view / size) R(phi - theta) o +
    (2 / size) R(-theta) (c - s), one affine per frame."""
    cx, cy, view, phi = camera
    sx, sy, theta_deg, size = placement
    rel = math.radians(phi - theta_deg)
    back = math.radians(-theta_deg)
    k = view / size
    dx, dy = (cx - sx) * 2 / size, (cy - sy) * 2 / size
    return [
        [k * math.cos(rel), -k * math.sin(rel), math.cos(back) * dx - math.sin(back) * dy],
        [k * math.sin(rel), k * math.cos(rel), math.sin(back) * dx + math.cos(back) * dy],
    ]


def render_sprite(
    sprite: SpriteLayer, camera: tuple[float, float, float, float], t: float, *, frame_size: int
) -> torch.Tensor:
    """A moving layer as seen by the camera at scene time t: premultiplied RGBA (4, F, F)."""
    placement = sprite.at(t)
    pixels = sprite.pyramid[0].shape[-1]
    source = sprite.pyramid[pyramid_level(sprite.pyramid, (camera[2] / frame_size) * pixels / placement[3])]
    theta = torch.tensor(sprite_theta(camera, placement), dtype=source.dtype)
    grid = F.affine_grid(theta[None], [1, 4, frame_size, frame_size], align_corners=False)
    return F.grid_sample(source[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


class SpriteLayer:
    """A moving layer of a scene: premultiplied RGBA pyramid and a trajectory `at(t)` ->
    (x, y, angle, side) in scene pixels, t in [0, 1] over the whole video."""

    def __init__(self, rgba: torch.Tensor, at):
        premultiplied = torch.cat([rgba[:3] * rgba[3:], rgba[3:]])
        self.pyramid = image_pyramid(premultiplied)
        self.at = at


def colour_matrix(rng: np.random.Generator) -> torch.Tensor:
    """(3, 4) random colour change for meta-augmentation: channel order, hue rotation about the
    grey axis, saturation, contrast and brightness. Linear, so it commutes with the blur and
    resampling of rendering and is applied to HR before degradation (LR and HR alike)."""
    perm = np.eye(3)[rng.permutation(3)]
    angle = rng.uniform(-math.pi, math.pi)
    axis = np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    hue = math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(axis, axis)
    grey = np.full((3, 3), 1 / 3)
    saturation = rng.uniform(0.4, 1.5)
    sat = saturation * np.eye(3) + (1 - saturation) * grey
    contrast = rng.uniform(0.7, 1.2)
    matrix = contrast * sat @ hue @ perm
    offset = (1 - contrast) * 0.5 + rng.uniform(-0.1, 0.1)
    return torch.tensor(np.concatenate([matrix, np.full((3, 1), offset)], axis=1), dtype=torch.float32)


@dataclass(frozen=True)
class PhotoAugment:
    """Meta-augmentation of the photographs, so that 14 photos stop being 14 recognisable tasks
    (Rajendran et al. 2020): each video of a photo may get a random colour change (channel
    order, hue, saturation, contrast, brightness) and may be a collage with pieces of other
    photographs pasted into it. Applied to the HR scene, so LR and HR change alike."""

    colour: float = 0.0  # probability of a colour change per video
    collage: float = 0.0  # probability of pasting 1-3 pieces of other photographs

    def __post_init__(self) -> None:
        for name in ("colour", "collage"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value <= 1):
                raise ValueError(f"data.photo_augment.{name}={value!r} is a probability in [0, 1]")


def collage(base: torch.Tensor, others: Sequence[torch.Tensor], rng: np.random.Generator) -> torch.Tensor:
    """base (3, H, W) with a piece of each of `others` pasted in, cut out by an ellipse or a
    polygon with sharp or soft edges."""
    from PIL import Image, ImageDraw, ImageFilter

    out = base.clone()
    height, width = base.shape[-2:]
    for other in others:
        oh, ow = other.shape[-2:]
        side = int(rng.uniform(0.3, 0.7) * min(height, width, oh, ow))
        top, left = int(rng.integers(0, oh - side + 1)), int(rng.integers(0, ow - side + 1))
        piece = other[:, top : top + side, left : left + side]
        mask_image = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(mask_image)
        if rng.random() < 0.5:
            draw.ellipse((0, side * rng.uniform(0, 0.3), side - 1, side * rng.uniform(0.7, 1.0)), fill=255)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))
            draw.polygon([(side / 2 * (1 + np.cos(a)), side / 2 * (1 + np.sin(a))) for a in angles], fill=255)
        if rng.random() < 0.5:
            mask_image = mask_image.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
        mask = torch.from_numpy(np.asarray(mask_image, dtype=np.float32) / 255.0)
        y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        region = out[:, y : y + side, x : x + side]
        out[:, y : y + side, x : x + side] = region * (1 - mask) + piece * mask
    return out


class SceneVideo:
    """An HR video of a scene: a still image (pyramid), moving layers over it, filmed by one
    camera path per shot (hard cuts between shots), optionally colour-transformed. Frames are
    rendered on demand, so any frame costs the same and nothing is stored."""

    def __init__(
        self,
        *,
        pyramid: list[torch.Tensor],
        paths: Sequence[CameraPath],
        num_frames: int,
        frame_size: int,
        video_id: str,
        sprites: Sequence[SpriteLayer] = (),
        colour: torch.Tensor | None = None,
    ):
        if len(paths) > num_frames:
            raise ValueError(f"{len(paths)} shots do not fit a {num_frames}-frame video")
        self.pyramid = pyramid
        self.paths = list(paths)
        self.num_frames = num_frames
        self.frame_size = frame_size
        self.video_id = video_id
        self.sprites = list(sprites)
        self.colour = colour

    @property
    def path(self) -> CameraPath:
        return self.paths[0]

    @property
    def hr_size(self) -> tuple[int, int]:
        return self.frame_size, self.frame_size

    @property
    def shot_starts(self) -> list[int]:
        return shot_starts(self.num_frames, len(self.paths))

    def camera(self, index: int) -> tuple[float, float, float, float]:
        """(cx, cy, view, angle) of frame `index`."""
        return shot_camera(self.paths, self.num_frames, index)

    def hr_frames(self, indices: list[int]) -> torch.Tensor:
        """Frames `indices`: (n, 3, frame_size, frame_size) in [0, 1]."""
        frames = []
        for i in indices:
            if not 0 <= i < self.num_frames:
                raise IndexError(f"frame {i} outside a {self.num_frames}-frame video")
            camera = self.camera(i)
            frame = render_view(self.pyramid, *camera, frame_size=self.frame_size)
            t = i / max(self.num_frames - 1, 1)
            for sprite in self.sprites:
                layer = render_sprite(sprite, camera, t, frame_size=self.frame_size)
                frame = frame * (1 - layer[3:]) + layer[:3]
            frames.append(frame)
        video = torch.stack(frames)
        if self.colour is not None:
            video = torch.einsum("ij,njhw->nihw", self.colour[:, :3], video) + self.colour[:, 3, None, None]
        return video.clamp(0.0, 1.0)


def shot_starts(num_frames: int, shots: int) -> list[int]:
    """Shot k covers frames starts[k] .. starts[k+1]-1: equal lengths, the rest to the last."""
    return [k * num_frames // shots for k in range(shots)]


def shot_camera(
    paths: Sequence[CameraPath], num_frames: int, index: int
) -> tuple[float, float, float, float]:
    """(cx, cy, view, angle) of frame `index` of a video filmed by `paths`, one per shot."""
    starts = shot_starts(num_frames, len(paths))
    k = max(k for k, start in enumerate(starts) if start <= index)
    end = starts[k + 1] if k + 1 < len(paths) else num_frames
    return paths[k].at((index - starts[k]) / max(end - starts[k] - 1, 1))


def multishot_paths(
    rng: np.random.Generator,
    *,
    image_size: tuple[int, int],
    frame_size: int,
    shots: int,
    zoom_range: tuple[float, float] = (0.15, 0.85),
    max_angle: float = 8.0,
) -> list[CameraPath]:
    """Camera paths of a video cut into `shots` shots of one scene, alternating wide shots and
    close-ups (starting with either); every close-up looks inside the wide shot before it or,
    for a first close-up, after it, so the close-up's LR shows what the wide shot's HR holds."""
    if shots == 1:
        return [
            random_camera_path(
                rng, image_size=image_size, frame_size=frame_size, zoom_range=zoom_range, max_angle=max_angle
            )
        ]
    lo, hi = zoom_range
    mid = math.sqrt(lo * hi)
    wide_first = rng.random() < 0.5
    kinds = ["wide" if (k % 2 == 0) == wide_first else "close" for k in range(shots)]
    paths: list[CameraPath | None] = [None] * shots
    for k, kind in enumerate(kinds):
        if kind == "wide":
            paths[k] = random_camera_path(
                rng, image_size=image_size, frame_size=frame_size, zoom_range=(mid, hi), max_angle=max_angle
            )
    height, width = image_size
    for k, kind in enumerate(kinds):
        if kind != "close":
            continue
        wide = paths[k - 1] if k > 0 else paths[k + 1]
        assert wide is not None
        close = random_camera_path(
            rng, image_size=image_size, frame_size=frame_size, zoom_range=(lo, mid), max_angle=max_angle
        )
        # move the close-up onto a point of the wide shot's middle view, staying inside the image
        wx, wy, wview, _ = wide.at(0.5)
        target = (wx + rng.uniform(-0.3, 0.3) * wview, wy + rng.uniform(-0.3, 0.3) * wview)
        centres = []
        for (x, y), view in zip(close.centres, close.views, strict=True):
            half = min(0.75 * view, 0.5 * min(height, width))
            centres.append(
                (
                    float(np.clip(target[0] + (x - close.centres[1][0]) * 0.2, half, width - half)),
                    float(np.clip(target[1] + (y - close.centres[1][1]) * 0.2, half, height - half)),
                )
            )
        paths[k] = CameraPath(centres=tuple(centres), views=close.views, angles=close.angles)
    return [p for p in paths if p is not None]


class StillsVideo(SceneVideo):
    """An HR video over one photograph (one or several shots)."""

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
        shots: int = 1,
        video_id: str | None = None,
    ):
        self.image_path = Path(image_path)
        pyramid = pyramid if pyramid is not None else image_pyramid(load_image(image_path))
        height, width = pyramid[0].shape[-2:]
        if min(height, width) < frame_size:
            raise ValueError(
                f"image {self.image_path} is {width}x{height}, smaller than the frame size {frame_size}: "
                "use a larger image or a smaller data.hr_size"
            )
        rng = np.random.default_rng(seed)
        paths = multishot_paths(
            rng,
            image_size=(height, width),
            frame_size=frame_size,
            shots=shots,
            zoom_range=zoom_range,
            max_angle=max_angle,
        )
        super().__init__(
            pyramid=pyramid,
            paths=paths,
            num_frames=num_frames,
            frame_size=frame_size,
            video_id=video_id or f"{self.image_path.stem}-{seed}",
        )
