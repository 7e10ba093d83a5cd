"""Procedural scenes: content that never repeats, for training both stages.

With 14 training photographs the hypernetwork learns *which photograph* it is looking at, and
that does not transfer to new videos (the memorisation failure of meta-learning). Restoration
networks trained on dead-leaves images come close to those trained on natural images (Achddou
et al. 2021), so every procedural video is a new scene drawn from (seed, index):

- a dead-leaves canvas: occluding shapes (ellipses, polygons, rotated rectangles, text in the
  fonts that ship with matplotlib) whose sizes follow a power law (density ~ r^-3, the
  scale-invariant law that gives natural images' 1/f^2 power spectrum), each filled with a flat
  colour, a linear gradient, stripes (sharp or soft) or fractal noise, with sharp or blurred
  edges at every orientation, anti-aliased;
- moving layers ("sprites"): small dead-leaves patches cut out by a shape, each with its own
  motion (translation, rotation, scale) in scene coordinates, occluding and uncovering the
  canvas and each other; the camera path then moves over the whole scene.

Colours come from a per-scene palette: random hues, or pixels of the *training* photographs
(natural colour statistics without their content).

This module holds the options (`ProceduralConfig`), what both ways of drawing share (palette,
fonts, the moving layers' paths) and the PIL painter (data.procedural.backend=pil, shape by shape,
at twice the resolution). The default draws a whole batch as one tensor program: `scenes.py`.
"""

from __future__ import annotations

import colorsys
import math
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from hypernet.data import video_io
from hypernet.data.camera import SceneVideo, SpriteLayer, image_pyramid, multishot_paths

SHAPES = ("ellipse", "polygon", "rectangle", "text")
FILLS = ("flat", "gradient", "stripes", "noise")
PALETTES = ("random", "photos", "mixed")
BACKENDS = ("torch", "pil")


class ProceduralConfigError(ValueError):
    """A data.procedural option is out of range or a font cannot be loaded."""


@dataclass(frozen=True)
class ProceduralConfig:
    """data.procedural. Sizes are relative to the video's frame side, so one config serves any
    data.hr_size."""

    canvas: float = 2.0  # scene side / frame side (the camera zooms over it)
    shapes: int = 200  # dead-leaves shapes on the canvas
    min_radius: float = 0.03  # smallest shape radius / frame side
    max_radius: float = 0.5  # largest shape radius / frame side
    text: float = 0.08  # fraction of the larger shapes that are text
    soft_edges: float = 0.2  # fraction of the larger shapes with blurred edges
    textured: float = 0.35  # fraction of the larger shapes filled with a gradient, stripes or noise
    sprites: tuple[int, int] = (1, 4)  # moving layers per video, inclusive range
    sprite_size: tuple[float, float] = (0.25, 0.7)  # sprite side / frame side
    max_motion: float = 0.6  # sprite travel over the whole video / frame side
    palette: str = "mixed"  # random | photos | mixed
    fonts: tuple[str, ...] | None = None  # TrueType files for the text leaves; None: matplotlib's
    backend: str = "torch"  # torch: a batch drawn as one tensor program (scenes.py); pil: shape by shape
    device: str = "auto"  # where training batches are drawn: auto (CUDA when training there), cpu, cuda[:N]

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, what: str) -> None:
            if not ok:
                raise ProceduralConfigError(f"data.procedural.{option}={getattr(self, option)!r}: {what}")

        need(self.canvas >= 1.0, "canvas", "must be >= 1 (the scene is at least one frame wide)")
        need(int(self.shapes) == self.shapes and self.shapes >= 1, "shapes", "must be an int >= 1")
        need(0 < self.min_radius <= self.max_radius, "min_radius", "must be > 0 and <= max_radius")
        need(0 <= self.text <= 1, "text", "is a fraction in [0, 1]")
        need(0 <= self.soft_edges <= 1, "soft_edges", "is a fraction in [0, 1]")
        need(0 <= self.textured <= 1, "textured", "is a fraction in [0, 1]")
        lo, hi = self.sprites
        need(0 <= lo <= hi, "sprites", "is an inclusive range [min, max] of ints >= 0")
        need(0 < self.sprite_size[0] <= self.sprite_size[1], "sprite_size", "is a range (min, max) > 0")
        need(self.max_motion >= 0, "max_motion", "must be >= 0")
        need(self.palette in PALETTES, "palette", f"choose one of {list(PALETTES)}")
        need(self.backend in BACKENDS, "backend", f"choose one of {list(BACKENDS)}")
        need(
            isinstance(self.device, str)
            and (self.device in ("auto", "cpu") or self.device.split(":")[0] == "cuda"),
            "device",
            "choose auto, cpu, cuda or cuda:N",
        )
        if self.device.startswith("cuda"):
            need(self.backend == "torch", "device", "drawing on a GPU needs data.procedural.backend=torch")
            check_cuda_device(self.device, option="data.procedural.device")
        for font in self.font_files() if self.text > 0 else []:
            load_font(str(font), 12)  # fail now, naming the file, not in a loader worker mid-run

    def font_files(self) -> list[Path]:
        if self.fonts is None:
            return font_paths()
        if not self.fonts:
            raise ProceduralConfigError(
                "data.procedural.fonts is empty: list font files, or null for matplotlib's"
            )
        return [Path(f) for f in self.fonts]

    @classmethod
    def from_options(cls, options: dict | None) -> ProceduralConfig:
        options = dict(options or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ProceduralConfigError(
                f"data.procedural: unknown options {unknown}; known options are {sorted(known)}"
            )
        for key in ("sprites", "sprite_size", "fonts"):
            if options.get(key) is not None:
                options[key] = tuple(options[key])
        return cls(**options)


def check_cuda_device(device: str, *, option: str) -> None:
    """A CUDA device that is there, or a one-line error naming the option."""
    if not torch.cuda.is_available():
        raise ProceduralConfigError(f"{option}={device}: no CUDA device is available here; use auto or cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ProceduralConfigError(
            f"{option}={device}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1}, auto or cpu"
        )


# ----------------------------------------------------------------------------------------------
# Resources: fonts and the photo palette, loaded once per process


def font_paths() -> list[Path]:
    """The TrueType fonts shipped with matplotlib (DejaVu, STIX, Computer Modern)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = sorted(p for p in folder.glob("*.ttf") if "Display" not in p.name)
    if not paths:
        raise ProceduralConfigError(
            f"no TrueType fonts under {folder}: the procedural text shapes need matplotlib's fonts; "
            "reinstall matplotlib or set data.procedural.text=0"
        )
    return paths


@lru_cache(maxsize=256)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError as e:
        raise ProceduralConfigError(
            f"data.procedural.fonts: cannot load the font {path} ({e}); name TrueType files or set "
            "data.procedural.text=0"
        ) from e


@lru_cache(maxsize=1)
def photo_colours() -> np.ndarray:
    """(N, 3) uint8 colours sampled from the built-in *training* photographs (never the held-out
    ones), so that palettes follow natural colour statistics without carrying their content."""
    from hypernet.data.camera import builtin_images, load_image

    rng = np.random.default_rng(0)
    pools = []
    for path in builtin_images("train"):
        image = (load_image(path).permute(1, 2, 0).reshape(-1, 3).numpy() * 255).astype(np.uint8)
        pools.append(image[rng.integers(0, len(image), size=512)])
    return np.concatenate(pools)


def scene_palette(rng: np.random.Generator, kind: str, size: int = 6) -> np.ndarray:
    """(size, 3) float colours in [0, 255]."""
    if kind == "mixed":
        kind = "photos" if rng.random() < 0.5 else "random"
    if kind == "photos":
        pool = photo_colours()
        return pool[rng.integers(0, len(pool), size=size)].astype(np.float64)
    # random hues around one or two base hues, saturation and value spread like natural scenes
    hues = (rng.uniform(0, 1) + rng.normal(0, 0.15, size=size)) % 1.0
    sat = rng.beta(1.5, 2.0, size=size)
    val = rng.beta(2.0, 1.5, size=size)
    return np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sat, val, strict=True)]) * 255.0


def fractal_noise(rng: np.random.Generator, size: int, *, beta: float) -> np.ndarray:
    """(size, size) noise in [0, 1] with power spectrum ~ 1/f^beta (1/f^2: natural images)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0
    amplitude = freq ** (-beta / 2)
    amplitude[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, size=amplitude.shape)
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(size, size))
    lo, hi = np.percentile(field, [1, 99])
    return np.clip((field - lo) / max(hi - lo, 1e-8), 0, 1)


# ----------------------------------------------------------------------------------------------
# Drawing


class _Painter:
    """Draws dead-leaves images (supersampled) with one rng, palette and noise field per scene.

    Most leaves under the power law are small: those, and any flat sharp-edged leaf, are drawn
    straight onto the canvas as one polygon (ellipses as 24-gons); only textured, soft-edged or
    rotated-text leaves go through a mask and a paste. That keeps a scene at a few tens of ms."""

    def __init__(self, rng: np.random.Generator, cfg: ProceduralConfig, *, frame: int):
        self.rng = rng
        self.cfg = cfg
        self.frame = frame  # supersampled pixels of one frame side (radii are relative to it)
        self.palette = scene_palette(rng, cfg.palette)
        self.noise = fractal_noise(rng, 256, beta=float(rng.uniform(1.6, 2.6)))
        self.fonts = cfg.font_files() if cfg.text > 0 else []
        self.census: list[tuple[str, str, float]] = []  # (shape, fill, radius / frame) per leaf drawn

    def colour(self) -> np.ndarray:
        base = self.palette[self.rng.integers(len(self.palette))]
        return np.clip(base + self.rng.normal(0, 12, size=3), 0, 255)

    def radii(self, count: int, *, frame: int) -> np.ndarray:
        """Radii from the density r^-3 on [min, max] (inverse CDF of the truncated law)."""
        lo, hi = self.cfg.min_radius * frame, self.cfg.max_radius * frame
        u = self.rng.random(count)
        return (lo**-2 - u * (lo**-2 - hi**-2)) ** -0.5

    def texture(self, height: int, width: int) -> Image.Image:
        """An RGB image of height x width holding one fill."""
        rng = self.rng
        kind = FILLS[rng.choice(len(FILLS), p=(0.25, 0.25, 0.25, 0.25))]
        self.last_fill = kind
        c0 = self.colour()
        if kind == "flat":
            return Image.new("RGB", (width, height), tuple(int(v) for v in c0.astype(np.uint8)))
        c1 = self.colour()
        # computed on every second pixel and repeated: the canvas is box-filtered by 2 anyway, so
        # only the leaf's outline needs the supersampling, not its fill (4x less work)
        ys = np.arange(0, height, 2, dtype=np.float32)[:, None]
        xs = np.arange(0, width, 2, dtype=np.float32)[None, :]
        angle = rng.uniform(0, np.pi)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        if kind == "gradient":
            w = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        elif kind == "stripes":
            period = rng.uniform(3, 0.3 * self.frame)
            sharpness = rng.choice([1.0, 4.0, 30.0])  # soft sine .. square wave
            w = 0.5 + 0.5 * np.tanh(sharpness * np.sin(2 * np.pi * along / period))
        else:
            n = self.noise.shape[0]
            zoom = rng.uniform(0.5, 2.0)
            iy = (ys * zoom + rng.integers(n)).astype(np.int64) % n
            ix = (xs * zoom + rng.integers(n)).astype(np.int64) % n
            w = self.noise[iy, ix]
        colours = (c0 + (c1 - c0) * w[..., None]).astype(np.uint8)
        colours = np.repeat(np.repeat(colours, 2, axis=0), 2, axis=1)[:height, :width]
        return Image.fromarray(np.ascontiguousarray(colours), "RGB")

    def outline(self, kind: str, r: float, cx: float, cy: float) -> list[tuple[float, float]]:
        """Corners of an ellipse (24-gon), rectangle or polygon of radius ~r around (cx, cy)."""
        rng = self.rng
        turn = rng.uniform(0, np.pi)
        if kind == "ellipse":
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            x, y = r * np.cos(t), r * rng.uniform(0.35, 1.0) * np.sin(t)
        elif kind == "rectangle":
            aspect = rng.uniform(0.2, 1.0)
            x = 0.7 * r * np.array([-1, 1, 1, -1])
            y = 0.7 * r * aspect * np.array([-1, -1, 1, 1])
        else:
            corners = int(rng.integers(3, 8))
            t = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
            q = r * rng.uniform(0.5, 1.0, size=corners)
            x, y = q * np.cos(t), q * np.sin(t)
        c, s = math.cos(turn), math.sin(turn)
        return list(zip((cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist(), strict=True))

    def text_mask(self, r: float) -> Image.Image:
        rng = self.rng
        font = load_font(str(self.fonts[rng.integers(len(self.fonts))]), max(int(r), 6))
        word = "".join(rng.choice(list(string.ascii_letters + string.digits), size=int(rng.integers(1, 7))))
        left, top, right, bottom = font.getbbox(word)
        image = Image.new("L", (max(right - left, 1) + 4, max(bottom - top, 1) + 4), 0)
        ImageDraw.Draw(image).text((2 - left, 2 - top), word, fill=255, font=font)
        return image.rotate(float(rng.uniform(-180, 180)), resample=Image.BILINEAR, expand=True)

    def mask(self, kind: str, r: float) -> Image.Image:
        """An 'L' image holding one shape of radius ~r, centred."""
        if kind == "text":
            return self.text_mask(r)
        size = max(int(2 * r) + 2, 3)
        image = Image.new("L", (size, size), 0)
        ImageDraw.Draw(image).polygon(self.outline(kind, r, size / 2, size / 2), fill=255)
        return image

    def shape_kind(self) -> str:
        if self.fonts and self.rng.random() < self.cfg.text:
            return "text"
        return SHAPES[self.rng.integers(3)]

    def flat_outlines(self, radii: np.ndarray, side: int) -> list[list[tuple[float, float]]]:
        """Outlines of many flat leaves at once (vectorised: most leaves are these): ellipses
        as 16-gons, rectangles, and random polygons (7 corners, some merged)."""
        rng = self.rng
        count = len(radii)
        kinds = rng.integers(3, size=count)  # 0 ellipse, 1 rectangle, 2 polygon
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        aspect = rng.uniform(0.35, 1.0, size=(count, 1))
        ex, ey = np.cos(t) * np.ones((count, 1)), np.sin(t) * aspect
        rx = 0.7 * np.repeat(np.array([[-1, 1, 1, -1]]), 4, axis=1).astype(float) * np.ones((count, 1))
        ry = 0.7 * aspect * np.repeat(np.array([[-1, -1, 1, 1]]), 4, axis=1)
        pt = np.sort(rng.uniform(0, 2 * np.pi, size=(count, 16)), axis=1)
        pq = np.repeat(rng.uniform(0.5, 1.0, size=(count, 4)), 4, axis=1)  # 4 distinct corners
        pt = np.repeat(pt[:, ::4], 4, axis=1)
        px, py = pq * np.cos(pt), pq * np.sin(pt)
        x = np.where((kinds == 0)[:, None], ex, np.where((kinds == 1)[:, None], rx, px)) * radii[:, None]
        y = np.where((kinds == 0)[:, None], ey, np.where((kinds == 1)[:, None], ry, py)) * radii[:, None]
        turn = rng.uniform(0, np.pi, size=(count, 1))
        centre = rng.uniform(0, side, size=(count, 2))
        xs = centre[:, :1] + np.cos(turn) * x - np.sin(turn) * y
        ys = centre[:, 1:] + np.sin(turn) * x + np.cos(turn) * y
        self.census += [
            (SHAPES[(0, 2, 1)[k]], "flat", r / self.frame)
            for k, r in zip(kinds.tolist(), radii.tolist(), strict=True)
        ]
        return [list(zip(a.tolist(), b.tolist(), strict=True)) for a, b in zip(xs, ys, strict=True)]

    def colours(self, count: int) -> np.ndarray:
        base = self.palette[self.rng.integers(len(self.palette), size=count)]
        return np.clip(base + self.rng.normal(0, 12, size=(count, 3)), 0, 255).astype(np.uint8)

    def paint(self, canvas: Image.Image, count: int) -> None:
        """Drop `count` leaves on the canvas, later ones over earlier ones."""
        side = canvas.size[0]
        draw = ImageDraw.Draw(canvas)
        small = 0.04 * self.frame  # below this a texture or a soft edge would not show
        radii = self.radii(count, frame=self.frame)
        draws = self.rng.random((count, 3))
        fancy = (radii > small) & (
            (draws[:, 0] < self.cfg.textured)
            | (draws[:, 1] < self.cfg.soft_edges)
            | (draws[:, 2] < self.cfg.text)
        )
        plain = np.flatnonzero(~fancy)
        outlines = self.flat_outlines(radii[plain], side)
        colours = [tuple(c) for c in self.colours(len(plain)).tolist()]
        plain_at = {int(i): k for k, i in enumerate(plain)}
        for i, r in enumerate(radii):
            k = plain_at.get(i)
            if k is not None:
                draw.polygon(outlines[k], fill=colours[k])
                continue
            textured, soft, text = draws[i] < (self.cfg.textured, self.cfg.soft_edges, self.cfg.text)
            kind = "text" if text and self.fonts else SHAPES[self.rng.integers(3)]
            mask = self.mask(kind, r)
            if soft:
                mask = mask.filter(ImageFilter.GaussianBlur(float(self.rng.uniform(0.7, 0.15 * r + 1.0))))
            w, h = mask.size
            x = int(self.rng.integers(-w // 2, side - w // 2))
            y = int(self.rng.integers(-h // 2, side - h // 2))
            if textured:
                canvas.paste(self.texture(h, w), (x, y), mask)
            self.census.append((kind, self.last_fill if textured else "flat", r / self.frame))
            if not textured:
                canvas.paste(tuple(int(v) for v in self.colour()), (x, y, x + w, y + h), mask)

    def background(self, side: int) -> Image.Image:
        return self.texture(side, side)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [0, 1], by video_io's frame conversion."""
    return video_io.to_tensor(np.array(image, dtype=np.uint8)[None])[0, 0]


def dead_leaves(painter: _Painter, *, side: int, shapes: int) -> Image.Image:
    """A side x side dead-leaves image (anti-aliased: drawn at 2x and box-filtered)."""
    canvas = painter.background(2 * side)
    painter.paint(canvas, shapes)
    return canvas.reduce(2)


@dataclass(frozen=True)
class Trajectory:
    """A moving layer's motion in scene pixels: eased from start to end over the whole video."""

    centres: tuple[tuple[float, float], tuple[float, float]]
    angles: tuple[float, float]  # degrees
    sizes: tuple[float, float]  # side in scene pixels

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(x, y, angle, side) at scene time t in [0, 1]."""
        w = 0.5 - 0.5 * math.cos(math.pi * min(max(t, 0.0), 1.0))
        (x0, y0), (x1, y1) = self.centres
        return (
            x0 + (x1 - x0) * w,
            y0 + (y1 - y0) * w,
            self.angles[0] + (self.angles[1] - self.angles[0]) * w,
            self.sizes[0] + (self.sizes[1] - self.sizes[0]) * w,
        )


def make_sprite(painter: _Painter, *, scene: int, frame: int) -> SpriteLayer:
    """A small dead-leaves patch cut out by a shape, with its own motion over the scene."""
    rng, cfg = painter.rng, painter.cfg
    side = max(int(rng.uniform(*cfg.sprite_size) * frame), 8)
    texture = dead_leaves(painter, side=side, shapes=max(cfg.shapes // 10, 4))
    mask = painter.mask(painter.shape_kind(), 0.95 * side)  # supersampled, box-filtered like the texture
    if rng.random() < cfg.soft_edges:
        mask = mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.7, 3.0))))
    alpha = to_tensor(mask.resize((2 * side, 2 * side), Image.BILINEAR).reduce(2).convert("RGB"))[:1]
    motion = sprite_motion(rng, cfg, scene=scene, frame=frame, side=side)
    return SpriteLayer(torch.cat([to_tensor(texture), alpha]), motion.at)


def sprite_motion(
    rng: np.random.Generator, cfg: ProceduralConfig, *, scene: int, frame: int, side: int
) -> Trajectory:
    """A moving layer's path over a scene of side `scene`: a start away from the edges, a travel of
    up to cfg.max_motion frames in any direction, a turn of up to 40 degrees, a change of size."""
    margin = 0.5 * frame
    start = rng.uniform(margin, scene - margin, size=2) if scene > 2 * margin else np.full(2, scene / 2)
    travel = cfg.max_motion * frame * rng.uniform(0.2, 1.0)
    heading = rng.uniform(0, 2 * np.pi)
    end = start + travel * np.array([math.cos(heading), math.sin(heading)])
    a0 = float(rng.uniform(-180, 180))
    return Trajectory(
        centres=((float(start[0]), float(start[1])), (float(end[0]), float(end[1]))),
        angles=(a0, a0 + float(rng.uniform(-40, 40))),
        sizes=(float(side), side * float(rng.uniform(0.75, 1.33))),
    )


def procedural_video(
    seed: int,
    cfg: ProceduralConfig,
    *,
    num_frames: int,
    frame_size: int,
    zoom_range: tuple[float, float] = (0.15, 0.85),
    shots: int = 1,
    video_id: str | None = None,
):
    """A new scene from `seed`: dead-leaves canvas, moving layers, camera path(s) over it, drawn by
    cfg.backend (the torch backend's video films its frames as a training batch does)."""
    video_id = video_id or f"procedural-{seed}"
    if cfg.backend == "torch":
        from hypernet.data.scenes import TorchSceneVideo, plan_scene

        plan = plan_scene(
            seed, cfg, num_frames=num_frames, frame_size=frame_size, zoom_range=zoom_range, shots=shots
        )
        return TorchSceneVideo(plan, cfg, video_id=video_id)
    rng = np.random.default_rng(seed)
    side = round(cfg.canvas * frame_size)
    painter = _Painter(rng, cfg, frame=2 * frame_size)
    canvas = to_tensor(dead_leaves(painter, side=side, shapes=cfg.shapes))
    count = int(rng.integers(cfg.sprites[0], cfg.sprites[1] + 1))
    sprites = [make_sprite(painter, scene=side, frame=frame_size) for _ in range(count)]
    paths = multishot_paths(
        rng, image_size=(side, side), frame_size=frame_size, shots=shots, zoom_range=zoom_range
    )
    return SceneVideo(
        pyramid=image_pyramid(canvas),
        paths=paths,
        num_frames=num_frames,
        frame_size=frame_size,
        video_id=video_id or f"procedural-{seed}",
        sprites=sprites,
    )
