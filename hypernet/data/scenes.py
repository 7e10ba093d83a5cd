"""Procedural scenes as one tensor program for a whole batch (data.procedural.backend=torch).

The PIL painter (`procedural.py`) draws a scene shape by shape, 40-50 ms of CPU each; a GPU step
takes milliseconds, so that loader would leave the accelerator idle. Here a scene is first
*planned*: every random number it needs (shapes, fills, text, moving layers, camera paths) is
drawn by numpy from the video's seed alone, a few hundred numbers. The plans of a batch are then
drawn together, on any device, by a program whose every pixel depends on its own video only:

- rasterising: each shape is evaluated on its own box of pixels (a signed distance for ellipses,
  rectangles and convex polygons; a glyph atlas, rasterised once from the fonts, for text), its
  coverage anti-aliased over one pixel (or blurred over several for soft edges). Occlusion is a
  depth buffer: per pixel, a `scatter_reduce(amax)` of (shape order, coverage) keeps the topmost
  shape and its coverage, a second one the topmost shape that covers the pixel fully; the pixel
  is the top shape's fill blended over the full one's (exact wherever at most one partly covering
  edge lies over a solid shape, which is nearly every pixel);
- fills: flat, linear gradient, stripes (soft to square) and fractal noise (1/f^beta by FFT);
- frames: the camera and the moving layers as affine resampling (`grid_sample`), as the PIL
  path's `SceneVideo` renders them.

So a video is the same whatever batch, process or device draws it (to float rounding across
devices), and a batch costs a handful of tensor kernels rather than thousands of Python calls.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from hypernet.data.camera import (
    CameraPath,
    SceneVideo,
    image_pyramid,
    multishot_paths,
    pyramid_level,
    shot_camera,
    sprite_theta,
    view_theta,
)
from hypernet.data.procedural import (
    FILLS,
    ProceduralConfig,
    Trajectory,
    load_font,
    scene_palette,
    sprite_motion,
)

KINDS = ("ellipse", "rectangle", "polygon", "text")
ELLIPSE, RECTANGLE, POLYGON, TEXT = range(4)
FLAT, GRADIENT, STRIPES, NOISE = range(4)  # FILLS order
CORNERS = 7  # polygon edges (fewer corners repeat the last edge)
GLYPHS = string.ascii_letters + string.digits
GLYPH_EM = 32  # atlas pixels per em
GLYPH_CELL = (40, 24)  # atlas cell (height, width): the advance of every letter
GLYPH_LEVELS = 4  # mipmap levels of the glyph atlas (cells 40x24 .. 5x3)
NOISE_SIDE = 256
COVERAGE_LEVELS = 1023  # coverage is packed into the depth key in this many steps


# ----------------------------------------------------------------------------------------------
# Plans: every random number of a scene, drawn by numpy from its seed


@dataclass
class Shapes:
    """The shapes of one layer (a scene's canvas or one moving layer's texture), in drawing order.
    Lengths are in canvas pixels; angles in radians."""

    kind: np.ndarray  # (n,) int: KINDS
    centre: np.ndarray  # (n, 2) x, y
    turn: np.ndarray  # (n,)
    extent: np.ndarray  # (n, 2): ellipse semi-axes, rectangle half sides, polygon radii, text em
    corners: np.ndarray  # (n, CORNERS) polygon corner angles, sorted
    soft: np.ndarray  # (n,) edge width in pixels (1: anti-aliased, more: blurred)
    fill: np.ndarray  # (n,) int: FILLS
    colours: np.ndarray  # (n, 2, 3) in [0, 1]: fill from colour 0 to colour 1
    fill_angle: np.ndarray  # (n,)
    period: np.ndarray  # (n,) stripes' period in pixels
    sharpness: np.ndarray  # (n,) stripes: 1 soft sine .. 30 square wave
    noise_at: np.ndarray  # (n, 3): zoom, offset x, offset y into the scene's noise field
    text: np.ndarray  # (n, 6) glyph indices, -1 past the word's end
    font: np.ndarray  # (n,) font index

    @staticmethod
    def concat(parts: Sequence[Shapes]) -> Shapes:
        return Shapes(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in Shapes.__dataclass_fields__}
        )

    def __len__(self) -> int:
        return len(self.kind)


@dataclass
class SpritePlan:
    side: int  # texture side in pixels
    shapes: Shapes  # its dead-leaves texture, shape 0 the background
    mask: Shapes  # one shape: the cut-out (alpha)
    motion: Trajectory


@dataclass
class ScenePlan:
    seed: int
    canvas_side: int
    frame_size: int
    num_frames: int
    shapes: Shapes  # shape 0 is the background (covers the canvas)
    noise_phase: np.ndarray  # (NOISE_SIDE, NOISE_SIDE // 2 + 1)
    noise_beta: float
    sprites: list[SpritePlan]
    paths: list[CameraPath]

    @property
    def video_id(self) -> str:
        return f"procedural-{self.seed}"

    @property
    def hr_size(self) -> tuple[int, int]:
        return self.frame_size, self.frame_size


class _Planner:
    """Draws a scene's numbers in the order of the PIL painter's recipe (same laws, same shares)."""

    def __init__(self, rng: np.random.Generator, cfg: ProceduralConfig, *, frame_size: int, fonts: int):
        self.rng, self.cfg, self.frame = rng, cfg, frame_size
        self.palette = scene_palette(rng, cfg.palette) / 255.0
        self.fonts = fonts

    def colours(self, count: int) -> np.ndarray:
        base = self.palette[self.rng.integers(len(self.palette), size=(count, 2))]
        return np.clip(base + self.rng.normal(0, 12 / 255, size=(count, 2, 3)), 0, 1)

    def fill_numbers(self, count: int) -> dict[str, np.ndarray]:
        """The numbers of `count` fills, at the PIL painter's scales: colours, direction, stripes'
        period (1.5 px .. 0.3 frame) and sharpness, the noise's zoom (1-4 noise pixels a pixel)
        and offset."""
        rng = self.rng
        return {
            "colours": self.colours(count),
            "fill_angle": rng.uniform(0, np.pi, size=count),
            "period": rng.uniform(1.5, 0.3 * self.frame, size=count),
            "sharpness": rng.choice([1.0, 4.0, 30.0], size=count),
            "noise_at": np.stack(
                [
                    rng.uniform(1.0, 4.0, size=count),
                    rng.uniform(0, NOISE_SIDE, size=count),
                    rng.uniform(0, NOISE_SIDE, size=count),
                ],
                axis=1,
            ),
        }

    def shapes(self, count: int, *, side: float, background: bool = True) -> Shapes:
        """`count` dead-leaves shapes over a side x side canvas (radius density ~ r^-3), after a
        background fill covering it when `background`."""
        rng, cfg, frame = self.rng, self.cfg, self.frame
        lo, hi = cfg.min_radius * frame, cfg.max_radius * frame
        r = (lo**-2 - rng.random(count) * (lo**-2 - hi**-2)) ** -0.5
        draws = rng.random((count, 3))
        large = r > 0.04 * frame  # below this a texture or a soft edge would not show
        textured = large & (draws[:, 0] < cfg.textured)
        soft = large & (draws[:, 1] < cfg.soft_edges)
        text = large & (draws[:, 2] < cfg.text) & (self.fonts > 0)
        kind = np.where(text, TEXT, rng.integers(3, size=count))
        aspect = rng.uniform(0.35, 1.0, size=count)
        extent = np.stack([r, r * aspect], axis=1)
        extent[kind == RECTANGLE] *= 0.7
        extent[kind == TEXT] = r[kind == TEXT, None] * np.array([1.0, 1.0])
        fill = np.where(textured, rng.integers(len(FILLS), size=count), FLAT)
        words = rng.integers(len(GLYPHS), size=(count, 6))
        lengths = rng.integers(1, 7, size=count)
        words[np.arange(6)[None, :] >= lengths[:, None]] = -1
        n_corners = rng.integers(3, 8, size=count)
        corners = np.sort(rng.uniform(0, 2 * np.pi, size=(count, CORNERS)), axis=1)
        corners = np.where(
            np.arange(CORNERS)[None] < n_corners[:, None],
            corners,
            corners[np.arange(count), n_corners - 1][:, None],
        )
        shapes = Shapes(
            kind=kind,
            centre=rng.uniform(0, side, size=(count, 2)),
            turn=rng.uniform(-np.pi, np.pi, size=count),
            extent=extent,
            corners=corners,
            # a Gaussian edge of sigma s (the PIL painter's: 0.35 .. 0.15 r + 0.5 pixels) spans about 3 s
            soft=np.where(soft, 3.0 * rng.uniform(0.35, 0.15 * r + 0.5), 1.0),
            fill=fill,
            **self.fill_numbers(count),
            text=words,
            font=rng.integers(max(self.fonts, 1), size=count),
        )
        if not background:
            return shapes
        return Shapes.concat([self.background(side), shapes])

    def background(self, side: float) -> Shapes:
        """One shape covering the whole canvas, with any fill."""
        rng = self.rng
        return Shapes(
            kind=np.array([RECTANGLE]),
            centre=np.array([[side / 2, side / 2]]),
            turn=np.zeros(1),
            extent=np.array([[side, side]], dtype=float),
            corners=np.zeros((1, CORNERS)),
            soft=np.ones(1),
            fill=rng.integers(len(FILLS), size=1),
            **self.fill_numbers(1),
            text=np.full((1, 6), -1),
            font=np.zeros(1, dtype=np.int64),
        )

    def sprite(self, *, scene: int) -> SpritePlan:
        rng, cfg, frame = self.rng, self.cfg, self.frame
        side = max(int(rng.uniform(*cfg.sprite_size) * frame), 8)
        shapes = self.shapes(max(cfg.shapes // 10, 4), side=side)
        kind = TEXT if (self.fonts and rng.random() < cfg.text) else int(rng.integers(3))
        mask = self.shapes(1, side=side, background=False)
        mask.kind[:] = kind
        mask.centre[:] = side / 2
        mask.extent[:] = 0.5 * side * np.array([1.0, rng.uniform(0.6, 1.0)])
        if kind == TEXT:
            mask.extent[:] = side / (GLYPH_CELL[1] / GLYPH_EM * max(int((mask.text[0] >= 0).sum()), 1))
            mask.extent[:] = np.minimum(mask.extent, side * GLYPH_EM / GLYPH_CELL[0])
        mask.soft[:] = 2.5 * rng.uniform(0.35, 1.5) if rng.random() < cfg.soft_edges else 1.0
        motion = sprite_motion(rng, cfg, scene=scene, frame=frame, side=side)
        return SpritePlan(side=side, shapes=shapes, mask=mask, motion=motion)


def plan_scene(
    seed: int,
    cfg: ProceduralConfig,
    *,
    num_frames: int,
    frame_size: int,
    zoom_range: tuple[float, float] = (0.15, 0.85),
    shots: int = 1,
) -> ScenePlan:
    """Every random number of the scene of `seed` (a function of the seed and the options only)."""
    rng = np.random.default_rng(seed)
    side = round(cfg.canvas * frame_size)
    fonts = len(cfg.font_files()) if cfg.text > 0 else 0
    planner = _Planner(rng, cfg, frame_size=frame_size, fonts=fonts)
    noise_beta = float(rng.uniform(1.6, 2.6))
    noise_phase = rng.uniform(0, 2 * np.pi, size=(NOISE_SIDE, NOISE_SIDE // 2 + 1))
    shapes = planner.shapes(cfg.shapes, side=side)
    count = int(rng.integers(cfg.sprites[0], cfg.sprites[1] + 1))
    sprites = [planner.sprite(scene=side) for _ in range(count)]
    paths = multishot_paths(
        rng, image_size=(side, side), frame_size=frame_size, shots=shots, zoom_range=zoom_range
    )
    return ScenePlan(
        seed=seed,
        canvas_side=side,
        frame_size=frame_size,
        num_frames=num_frames,
        shapes=shapes,
        noise_phase=noise_phase,
        noise_beta=noise_beta,
        sprites=sprites,
        paths=paths,
    )


# ----------------------------------------------------------------------------------------------
# Resources made once per process and device


@lru_cache(maxsize=8)
def glyph_atlas(fonts: tuple[str, ...]) -> torch.Tensor:
    """Every letter and digit of every font, centred in a cell whose width is the advance of a
    word's letters, as coverage in [0, 1] at GLYPH_LEVELS resolutions (a mipmap: level l halves
    level l - 1 by 2x2 averaging), so that small text reads a pre-filtered glyph instead of
    aliasing; all levels flattened into one tensor, level l starting at `glyph_level_offsets()[l]`."""
    height, width = GLYPH_CELL
    atlas = np.zeros((len(fonts), len(GLYPHS), height, width), dtype=np.float32)
    for f, path in enumerate(fonts):
        font = load_font(path, GLYPH_EM)
        for g, glyph in enumerate(GLYPHS):
            image = Image.new("L", (width, height), 0)
            ImageDraw.Draw(image).text((width / 2, height / 2), glyph, fill=255, font=font, anchor="mm")
            atlas[f, g] = np.asarray(image, dtype=np.float32) / 255.0
    level = torch.from_numpy(atlas).flatten(0, 1)[:, None]
    levels = [level]
    for _ in range(GLYPH_LEVELS - 1):
        level = F.avg_pool2d(level, 2)
        levels.append(level)
    return torch.cat([lv.flatten() for lv in levels])


def glyph_level_offsets(fonts: int) -> list[int]:
    """Where each level of the flattened glyph atlas starts."""
    height, width = GLYPH_CELL
    sizes = [fonts * len(GLYPHS) * (height >> lv) * (width >> lv) for lv in range(GLYPH_LEVELS)]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()


@lru_cache(maxsize=8)
def glyph_atlas_on(fonts: tuple[str, ...], device: str) -> torch.Tensor:
    """glyph_atlas, once per process and device."""
    return glyph_atlas(fonts).to(device)


def noise_fields(plans: Sequence[ScenePlan], device: torch.device) -> torch.Tensor:
    """(B, N, N) fractal noise in [0, 1] per scene, power spectrum ~ 1/f^beta, by one batched FFT."""
    n = NOISE_SIDE
    fy = torch.fft.fftfreq(n, device=device)[:, None]
    fx = torch.fft.rfftfreq(n, device=device)[None, :]
    freq = torch.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0
    beta = torch.tensor([p.noise_beta for p in plans], device=device, dtype=torch.float32)
    amplitude = freq[None] ** (-beta[:, None, None] / 2)
    amplitude[:, 0, 0] = 0.0
    phase = torch.from_numpy(np.stack([p.noise_phase for p in plans])).to(device=device, dtype=torch.float32)
    field = torch.fft.irfft2(torch.polar(amplitude, phase), s=(n, n))
    # the 1st and 99th percentiles of a Gaussian field: mean -+ 2.326 std (no sort)
    mean, std = field.mean(dim=(1, 2), keepdim=True), field.std(dim=(1, 2), keepdim=True)
    lo, hi = mean - 2.326 * std, mean + 2.326 * std
    return ((field - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Rasterising


# columns of the packed per-shape table (one gather per group of shapes)
_COLUMNS = (
    "cx",
    "cy",
    "cos",
    "sin",
    "a",
    "b",
    "soft",
    "fill",
    "c0r",
    "c0g",
    "c0b",
    "c1r",
    "c1g",
    "c1b",
    "dx",
    "dy",
    "period",
    "sharpness",
    "zoom",
    "ox",
    "oy",
    "font",
    "noise",
    "layer",
    "depth",
)
_COL = {name: k for k, name in enumerate(_COLUMNS)}


def _table(
    shapes: Shapes, *, layer: np.ndarray, depth: np.ndarray, noise_of_layer: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor]:
    """The shapes' numbers on the device: one packed float table (rows: shapes, _COLUMNS), the
    polygons' edges and the words' glyphs."""
    columns = [
        shapes.centre[:, 0],
        shapes.centre[:, 1],
        np.cos(shapes.turn),
        np.sin(shapes.turn),
        shapes.extent[:, 0],
        shapes.extent[:, 1],
        shapes.soft,
        shapes.fill,
        *shapes.colours[:, 0].T,
        *shapes.colours[:, 1].T,
        np.cos(shapes.fill_angle),
        np.sin(shapes.fill_angle),
        shapes.period,
        shapes.sharpness,
        *shapes.noise_at.T,
        shapes.font,
        noise_of_layer[layer],
        layer,
        depth,
    ]
    packed = np.stack(columns, axis=1).astype(np.float32)
    return {
        "packed": torch.as_tensor(packed, device=device),
        "edges": torch.as_tensor(polygon_edges(shapes), dtype=torch.float32, device=device),
        "text": torch.as_tensor(shapes.text, device=device),
    }


def polygon_edges(shapes: Shapes) -> np.ndarray:
    """(n, CORNERS, 3): each convex polygon's edges as (normal x, normal y, offset), so that the
    signed distance of a point p is max over edges of normal . p - offset."""
    a, b = shapes.extent[:, :1], shapes.extent[:, 1:]
    x, y = a * np.cos(shapes.corners), b * np.sin(shapes.corners)  # corners on an ellipse: convex
    dx, dy = np.roll(x, -1, axis=1) - x, np.roll(y, -1, axis=1) - y
    length = np.hypot(dx, dy)
    degenerate = length < 1e-6
    nx, ny = dy / np.maximum(length, 1e-6), -dx / np.maximum(length, 1e-6)
    offset = nx * x + ny * y
    # a repeated corner makes a zero edge: copy a real edge so the max is unchanged
    first = np.argmax(~degenerate, axis=1)
    rows = np.arange(len(x))[:, None]
    nx = np.where(degenerate, nx[rows, first[:, None]], nx)
    ny = np.where(degenerate, ny[rows, first[:, None]], ny)
    offset = np.where(degenerate, offset[rows, first[:, None]], offset)
    return np.stack([nx, ny, offset], axis=-1)


def _half_box(shapes: Shapes) -> np.ndarray:
    """(n, 2): half the width and height of a box around each shape as turned, edge included."""
    a, b = shapes.extent[:, 0], shapes.extent[:, 1]
    text = shapes.kind == TEXT
    letters = np.maximum((shapes.text >= 0).sum(axis=1), 1)
    em = shapes.extent[:, 0] / GLYPH_EM
    a = np.where(text, em * letters * GLYPH_CELL[1] / 2, a)
    b = np.where(text, em * GLYPH_CELL[0] / 2, b)
    polygon = shapes.kind == POLYGON  # its corners lie on the ellipse of its extents
    square = (shapes.kind == RECTANGLE) | text  # corners at (+-a, +-b)
    c, s = np.abs(np.cos(shapes.turn)), np.abs(np.sin(shapes.turn))
    ellipse = np.stack([np.hypot(a * c, b * s), np.hypot(a * s, b * c)], axis=1)
    box = np.stack([a * c + b * s, a * s + b * c], axis=1)
    half = np.where(square[:, None], box, ellipse)
    half = np.where(polygon[:, None], ellipse, half)
    return half + 0.5 * shapes.soft[:, None] + 1  # coverage is 0 half an edge width out


def _col(rows: torch.Tensor, name: str, dims: int = 2) -> torch.Tensor:
    """Column `name` of shapes' packed rows, shaped (n, 1, ...) to broadcast over `dims` pixel dims."""
    return rows[:, _COL[name]].view(-1, *[1] * dims)


def _coverage(
    kind: int,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    a: torch.Tensor,
    b: torch.Tensor,
    soft: torch.Tensor,
    edges: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    font: torch.Tensor | None = None,
    atlas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coverage in [0, 1] of shapes of one kind at local coordinates u, v (extents a, b, edge width
    soft broadcasting against them): the signed distance over the edge width, clamped (a 1-pixel
    ramp anti-aliases, a wider one blurs); text reads its glyphs."""
    if kind == ELLIPSE:
        ua, vb = u / a, v / b
        q = torch.sqrt(ua * ua + vb * vb)
        grad = torch.sqrt((ua / a) ** 2 + (vb / b) ** 2).clamp_min(1e-6)
        sd = (q - 1) * q / grad
    elif kind == RECTANGLE:
        sd = torch.maximum(u.abs() - a, v.abs() - b)
    elif kind == POLYGON:
        e = edges.reshape(edges.shape[0], edges.shape[1], *([1] * (u.dim() - 1)), 3)
        sd = (e[..., 0] * u[:, None] + e[..., 1] * v[:, None] - e[..., 2]).amax(dim=1)
    else:
        return _text_coverage(u, v, em=a, text=text, font=font, atlas=atlas)
    return (0.5 - sd / soft).clamp(0, 1)


def _text_coverage(
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    em: torch.Tensor,
    text: torch.Tensor,
    font: torch.Tensor,
    atlas: torch.Tensor,
) -> torch.Tensor:
    """A word's coverage: each pixel reads its letter's glyph (bilinear) from the atlas level whose
    resolution is just above the word's (atlas pixels per canvas pixel in [1, 2) where it can)."""
    shape = (-1, *([1] * (u.dim() - 1)))
    letters = (text >= 0).sum(dim=1).clamp_min(1).view(shape)
    scale = GLYPH_EM / em  # level-0 atlas pixels per canvas pixel
    level = torch.floor(torch.log2(scale)).clamp(0, GLYPH_LEVELS - 1)
    step = torch.pow(2.0, level)
    height, width = GLYPH_CELL[0] / step, GLYPH_CELL[1] / step
    offsets = torch.tensor(glyph_level_offsets(atlas_font_count(atlas)), device=u.device, dtype=torch.float32)
    offset = offsets[level.long()]
    scale = scale / step
    ax = u * scale + letters * width / 2 - 0.5
    ay = v * scale + height / 2 - 0.5
    slot = torch.floor((ax + 0.5) / width)
    inside = (slot >= 0) & (slot < letters) & (ay > -1) & (ay < height)
    slots = slot.long().clamp(0, text.shape[1] - 1).reshape(slot.shape[0], -1)
    glyph = text.gather(1, slots).view_as(slot).clamp_min(0)
    gx = ax - slot * width
    x0, y0 = gx.floor(), ay.floor()
    fx, fy = gx - x0, ay - y0
    base = offset + (font.view(shape) * len(GLYPHS) + glyph) * (height * width)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        ok = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        index = (
            base
            + torch.minimum(yy.clamp_min(0), height - 1) * width
            + torch.minimum(xx.clamp_min(0), width - 1)
        )
        return torch.where(ok, atlas[index.long()], 0.0)

    value = (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )
    return torch.where(inside, value, 0.0)


def atlas_font_count(atlas: torch.Tensor) -> int:
    """How many fonts a flattened glyph atlas holds, from its size."""
    height, width = GLYPH_CELL
    per_font = sum(len(GLYPHS) * (height >> lv) * (width >> lv) for lv in range(GLYPH_LEVELS))
    return atlas.numel() // per_font


def _weight(
    kind: int, rows: torch.Tensor, noise: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The weight from colour 0 to colour 1 of shapes whose fill is `kind` (not FLAT) at canvas
    pixels (x, y) (rows' columns broadcast against them)."""
    dims = max(x.dim(), y.dim()) - 1

    def col(name: str) -> torch.Tensor:
        return _col(rows, name, dims)

    if kind == NOISE:
        n = noise.shape[-1]
        zoom = col("zoom")
        ty, tx = y * zoom + col("oy"), x * zoom + col("ox")
        iy = (ty - n * torch.floor(ty / n)).long().clamp(0, n - 1)
        ix = (tx - n * torch.floor(tx / n)).long().clamp(0, n - 1)
        return noise.flatten()[(col("noise").long() * n + iy) * n + ix]
    dx, dy = col("dx"), col("dy")
    along = x * dx + y * dy
    if kind == STRIPES:
        return 0.5 + 0.5 * torch.tanh(col("sharpness") * torch.sin(2 * math.pi * along / col("period")))
    along_centre = col("cx") * dx + col("cy") * dy
    reach = torch.maximum(col("a"), col("b"))
    return (0.5 + (along - along_centre) / (2 * reach)).clamp(0, 1)


def _fill(rows: torch.Tensor, noise: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, *pixels, 3) colours of shapes `rows` (n, F) at canvas pixels x, y (broadcasting to
    (n, *pixels)): colour 0 to colour 1 by the fill's weight, each fill's formula evaluated only on
    the shapes that have it."""
    c0 = rows[:, _COL["c0r"] : _COL["c0b"] + 1]
    c1 = rows[:, _COL["c1r"] : _COL["c1b"] + 1]
    pixels = torch.broadcast_shapes(x.shape, y.shape)[1:]
    out = c0.view(len(rows), *[1] * len(pixels), 3).expand(len(rows), *pixels, 3).clone()
    fill = rows[:, _COL["fill"]].long()
    for kind in (GRADIENT, STRIPES, NOISE):
        which = (fill == kind).nonzero()[:, 0]
        if len(which) == 0:
            continue
        xs = x if x.shape[0] == 1 else x[which]
        ys = y if y.shape[0] == 1 else y[which]
        w = _weight(kind, rows[which], noise, xs, ys)
        shape = (len(which), *[1] * len(pixels), 3)
        out[which] = c0[which].view(shape) + (c1[which] - c0[which]).view(shape) * w[..., None]
    return out


def rasterise(
    layers: Sequence[Shapes],
    *,
    side: int,
    noise: torch.Tensor,
    noise_of_layer: Sequence[int],
    fonts: tuple[str, ...],
    device: torch.device,
) -> torch.Tensor:
    """(L, 3, side, side) images of dead-leaves layers: shape 0 of each covers it (the background),
    later shapes over earlier ones. noise: (V, N, N) fields; layer l fills from field noise_of_layer[l].

    Every shape is evaluated on the box of pixels around it as turned (one flat list of (shape, pixel)
    pairs for the whole batch, the shapes ordered by kind so that each kind's formula runs on one
    slice); two scatter-maxima give each pixel its top shape (and coverage) and its topmost fully
    covering one; each pixel's colour is then filled from those two shapes."""
    count = len(layers)
    sizes = [len(s) for s in layers]
    shapes = Shapes.concat(list(layers))
    layer = np.repeat(np.arange(count), sizes)
    depth = np.concatenate([np.arange(n) for n in sizes])
    first = np.cumsum([0, *sizes[:-1]])  # each layer's row of its background
    table = _table(shapes, layer=layer, depth=depth, noise_of_layer=np.asarray(noise_of_layer), device=device)
    packed = table["packed"]
    pixels = count * side * side

    # (shape, pixel) pairs: each foreground shape's square, kinds in turn
    leaves = np.flatnonzero(depth > 0)
    leaves = leaves[np.argsort(shapes.kind[leaves], kind="stable")]
    half = _half_box(shapes)[leaves]  # (n, 2): half the box's width and height
    lo = np.clip(np.floor(shapes.centre[leaves] - half), 0, side)
    hi = np.clip(np.ceil(shapes.centre[leaves] + half) + 1, 0, side)  # boxes cut to the canvas
    size = (hi - lo).astype(np.int64)
    corner, width, pair_count = lo, size[:, 0], size[:, 0] * size[:, 1]
    geometry = np.concatenate(
        [
            corner,
            shapes.centre[leaves],
            np.cos(shapes.turn[leaves])[:, None],
            np.sin(shapes.turn[leaves])[:, None],
            shapes.extent[leaves],
            shapes.soft[leaves, None],
            width[:, None],
            layer[leaves, None],
            depth[leaves, None],
        ],
        axis=1,
    )
    counts = torch.as_tensor(pair_count, device=device)
    per = torch.repeat_interleave(
        torch.as_tensor(geometry, dtype=torch.float32, device=device), counts, dim=0
    )
    x0, y0, cx, cy, c, s_, a, b, soft, w, pair_layer, d = per.unbind(1)
    total = int(counts.sum())
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts).float()
    offset = torch.arange(total, device=device, dtype=torch.float32) - starts  # exact below 2**24 pairs
    row = torch.floor((offset + 0.5) / w)
    x = x0 + (offset - row * w)
    y = y0 + row
    dx, dy = x + 0.5 - cx, y + 0.5 - cy
    u, v = c * dx + s_ * dy, c * dy - s_ * dx
    cover = torch.empty(total, device=device)
    bounds = np.concatenate([[0], np.cumsum(pair_count)])
    kinds = shapes.kind[leaves]
    for kind in np.unique(kinds).tolist():
        k0, k1 = np.flatnonzero(kinds == kind)[[0, -1]]
        lo, hi = int(bounds[k0]), int(bounds[k1 + 1])
        idx = torch.as_tensor(leaves[k0 : k1 + 1], device=device)
        pair_counts = counts[k0 : k1 + 1]
        extra = {}
        if kind == POLYGON:
            extra["edges"] = table["edges"][idx].repeat_interleave(pair_counts, dim=0)
        if kind == TEXT:
            extra["text"] = table["text"][idx].repeat_interleave(pair_counts, dim=0)
            extra["font"] = packed[idx, _COL["font"]].repeat_interleave(pair_counts)
            extra["atlas"] = glyph_atlas_on(fonts, str(device))
        cover[lo:hi] = _coverage(kind, u[lo:hi], v[lo:hi], a=a[lo:hi], b=b[lo:hi], soft=soft[lo:hi], **extra)
    inside = cover > 0
    pix = ((pair_layer * side + y) * side + x).long()
    d = d.long()
    level = torch.round(cover * COVERAGE_LEVELS).long()
    top_key = torch.full((pixels,), COVERAGE_LEVELS, dtype=torch.long, device=device)  # depth 0, covered
    top_key.scatter_reduce_(0, pix, torch.where(inside, d * (COVERAGE_LEVELS + 1) + level, -1), "amax")
    full_depth = torch.zeros(pixels, dtype=torch.long, device=device)
    full_depth.scatter_reduce_(0, pix, torch.where(inside & (level == COVERAGE_LEVELS), d, -1), "amax")

    # each pixel: its top shape's fill, blended by that shape's coverage over its topmost full one's
    top_depth = torch.div(top_key, COVERAGE_LEVELS + 1, rounding_mode="floor")
    alpha = (top_key % (COVERAGE_LEVELS + 1)).float() / COVERAGE_LEVELS
    alpha = torch.where(top_depth == full_depth, 1.0, alpha)
    grid = torch.arange(side, device=device, dtype=torch.float32)
    background = _fill(
        packed[torch.as_tensor(first, device=device)], noise, grid[None, None, :], grid[None, :, None]
    ).reshape(pixels, 3)
    first_row = torch.as_tensor(first, device=device).repeat_interleave(side * side)
    flat = packed[:, _COL["fill"]] == FLAT
    colours = packed[:, _COL["c0r"] : _COL["c0b"] + 1]

    def colour_of(depth_at: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Colours of the shapes at `depth_at` of pixels `at` (all when None)."""
        layer_first = first_row if at is None else first_row[at]
        shape = layer_first + depth_at
        out = torch.where(
            (depth_at == 0)[:, None], background if at is None else background[at], colours[shape]
        )
        textured = (depth_at > 0) & ~flat[shape]
        if bool(textured.any()):
            which = textured.nonzero()[:, 0]
            where = which if at is None else at[which]
            out[which] = _fill(packed[shape[which]], noise, grid[where % side], grid[(where // side) % side])
        return out

    image = colour_of(full_depth)
    blended = (alpha < 1).nonzero()[:, 0]
    if len(blended):
        a = alpha[blended, None]
        image[blended] = a * colour_of(top_depth[blended], blended) + (1 - a) * image[blended]
    return image.view(count, side, side, 3).permute(0, 3, 1, 2).contiguous()


def sprite_alpha(
    masks: Sequence[Shapes], sides: Sequence[int], *, side: int, fonts: tuple[str, ...], device: torch.device
) -> torch.Tensor:
    """(M, 1, side, side) coverage of each moving layer's cut-out shape over its side x side
    texture (zero beyond it)."""
    shapes = Shapes.concat(list(masks))
    count = len(shapes)
    table = _table(
        shapes,
        layer=np.arange(count),
        depth=np.ones(count),
        noise_of_layer=np.zeros(count, dtype=np.int64),
        device=device,
    )
    grid = torch.arange(side, device=device, dtype=torch.float32) + 0.5
    alpha = torch.zeros(count, side, side, device=device)
    for kind in sorted(set(shapes.kind.tolist())):
        idx = torch.as_tensor(np.flatnonzero(shapes.kind == kind), device=device)
        rows = table["packed"][idx]
        dx, dy = grid[None, None, :] - _col(rows, "cx"), grid[None, :, None] - _col(rows, "cy")
        c, s = _col(rows, "cos"), _col(rows, "sin")
        u, v = c * dx + s * dy, c * dy - s * dx
        atlas = glyph_atlas_on(fonts, str(device)) if kind == TEXT else None
        alpha[idx] = _coverage(
            kind,
            u,
            v,
            a=_col(rows, "a"),
            b=_col(rows, "b"),
            soft=_col(rows, "soft"),
            edges=table["edges"][idx],
            text=table["text"][idx],
            font=rows[:, _COL["font"]],
            atlas=atlas,
        )
    inside = torch.as_tensor(np.asarray(sides), device=device, dtype=torch.float32)[:, None, None]
    alpha = torch.where((grid[None, None, :] < inside) & (grid[None, :, None] < inside), alpha, 0.0)
    return alpha[:, None]


class SceneBatch:
    """The scenes of a batch of plans, drawn on `device`: canvases and moving layers, ready to be
    filmed. frames() films any frames of any of them in one pass."""

    def __init__(
        self, plans: Sequence[ScenePlan], cfg: ProceduralConfig, *, device: torch.device | str = "cpu"
    ):
        device = torch.device(device)
        self.plans, self.device = list(plans), device
        fonts = tuple(str(f) for f in cfg.font_files()) if cfg.text > 0 else ()
        sides = {p.canvas_side for p in self.plans}
        if len(sides) != 1:
            raise ValueError(f"a batch of scenes needs one canvas side, got {sorted(sides)}")
        side = sides.pop()
        noise = noise_fields(self.plans, device)
        canvas = rasterise(
            [p.shapes for p in self.plans],
            side=side,
            noise=noise,
            noise_of_layer=range(len(self.plans)),
            fonts=fonts,
            device=device,
        )
        self.canvas = image_pyramid(canvas)
        self.sprite_owner = [b for b, p in enumerate(self.plans) for _ in p.sprites]
        sprites = [s for p in self.plans for s in p.sprites]
        self.sprite_side = max(math.ceil(cfg.sprite_size[1] * p.frame_size) for p in self.plans) + 1
        self.sprites = sprites
        if sprites:
            texture = rasterise(
                [s.shapes for s in sprites],
                side=self.sprite_side,
                noise=noise,
                noise_of_layer=self.sprite_owner,
                fonts=fonts,
                device=device,
            )
            alpha = sprite_alpha(
                [s.mask for s in sprites],
                [s.side for s in sprites],
                side=self.sprite_side,
                fonts=fonts,
                device=device,
            )
            self.sprite_pyramid = image_pyramid(torch.cat([texture * alpha, alpha], dim=1))

    def frames(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[torch.Tensor]:
        """For each (scene, frame indices): its HR frames (n, 3, F, F) in [0, 1]. The camera
        films each scene's frames in one resampling from the pyramid level its nearest view needs,
        and each moving layer likewise; the layers go over the frames in drawing order."""
        size = self.plans[0].frame_size
        side = self.canvas[0].shape[-1]
        cameras, times = [], []
        for b, indices in requests:
            plan = self.plans[b]
            for i in indices:
                if not 0 <= i < plan.num_frames:
                    raise IndexError(f"frame {i} outside a {plan.num_frames}-frame video")
            cameras.append([shot_camera(plan.paths, plan.num_frames, i) for i in indices])
            times.append([i / max(plan.num_frames - 1, 1) for i in indices])
        thetas = [
            [view_theta(*camera, height=side, width=side, dtype=torch.float32).tolist() for camera in views]
            for views in cameras
        ]
        levels = [pyramid_level(self.canvas, min(c[2] for c in views) / size) for views in cameras]
        frames = self._film(
            self.canvas, [b for b, _ in requests], thetas, levels, size, "bicubic", "reflection"
        )
        for j, (b, _) in enumerate(requests):
            for m in (m for m, owner in enumerate(self.sprite_owner) if owner == b):
                sprite = self.sprites[m]
                placements = [sprite.motion.at(t) for t in times[j]]
                scale = sprite.side / self.sprite_side  # the texture fills the top-left side x side
                theta = [
                    [[e * scale for e in r[:2]] + [(r[2] + 1) * scale - 1] for r in sprite_theta(camera, p)]
                    for camera, p in zip(cameras[j], placements, strict=True)
                ]
                nearest = min(c[2] / p[3] for c, p in zip(cameras[j], placements, strict=True))
                level = pyramid_level(self.sprite_pyramid, nearest * sprite.side / size)
                (y0, y1), (x0, x1) = footprint(theta, texture=2 * scale - 1, size=size)
                if y1 <= y0 or x1 <= x0:
                    continue  # out of view the whole time
                theta_t = torch.tensor(theta, device=self.device, dtype=torch.float32)
                grid = F.affine_grid(theta_t, [len(theta), 4, size, size], align_corners=False)[
                    :, y0:y1, x0:x1
                ]
                source = self.sprite_pyramid[level][m : m + 1]
                layer = F.grid_sample(
                    source,
                    grid.reshape(1, -1, x1 - x0, 2),
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=False,
                ).view(4, len(theta), y1 - y0, x1 - x0)
                region = frames[j][:, :, y0:y1, x0:x1]
                frames[j][:, :, y0:y1, x0:x1] = region * (1 - layer[3:]) + layer[:3]
        return [f.transpose(0, 1).clamp(0, 1) for f in frames]

    def _film(self, pyramid, sources, thetas, levels, size, mode, padding) -> list[torch.Tensor]:
        """For each k: image sources[k] of the pyramid, at its level, resampled at the affines
        thetas[k] (one per frame): (C, frames, size, size). The images of one level go through one
        grid_sample, each image's frames stacked one under the other in its grid."""
        channels = pyramid[0].shape[1]
        out: list[torch.Tensor | None] = [None] * len(sources)
        for level in sorted(set(levels)):
            group = [k for k, lv in enumerate(levels) if lv == level]
            depth = max(len(thetas[k]) for k in group)
            padded = [thetas[k] + [thetas[k][0]] * (depth - len(thetas[k])) for k in group]
            theta = torch.tensor(padded, device=self.device, dtype=pyramid[level].dtype).flatten(0, 1)
            grid = F.affine_grid(theta, [len(theta), channels, size, size], align_corners=False)
            grid = grid.view(len(group), depth * size, size, 2)
            image = pyramid[level][torch.as_tensor([sources[k] for k in group], device=self.device)]
            filmed = F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=False)
            filmed = filmed.view(len(group), channels, depth, size, size)
            for g, k in enumerate(group):
                out[k] = filmed[g, :, : len(thetas[k])]
        return out


def footprint(theta: Sequence, *, texture: float, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows and columns [start, end) of a size x size frame that a moving layer can touch in
    any of its frames: its texture spans [-1, texture] in its coordinates, theta maps output to
    texture coordinates (one (2, 3) per frame); a pixel of margin for the bilinear taps."""
    corners = np.array([[-1, -1], [texture, -1], [-1, texture], [texture, texture]], dtype=np.float64)
    points = []
    for t in theta:
        t = np.asarray(t, dtype=np.float64)
        points.append((corners - t[:, 2]) @ np.linalg.inv(t[:, :2]).T)  # output coordinates in [-1, 1]
    pixels = (np.concatenate(points) + 1) / 2 * size - 0.5
    lo = np.clip(np.floor(pixels.min(axis=0)) - 1, 0, size).astype(int)
    hi = np.clip(np.ceil(pixels.max(axis=0)) + 2, 0, size).astype(int)
    return (int(lo[1]), int(hi[1])), (int(lo[0]), int(hi[0]))


class TorchSceneVideo(SceneVideo):
    """One procedural video drawn by the tensor program (the `Video` protocol of datasets.py):
    validation and test scenes, and any single video, film their frames as a training batch does.
    Drawn on first use; its `paths` and `sprites` (SpritePlans) may be changed before or after."""

    def __init__(
        self, plan: ScenePlan, cfg: ProceduralConfig, *, video_id: str, device: torch.device | str = "cpu"
    ):
        super().__init__(
            pyramid=[],
            paths=plan.paths,
            num_frames=plan.num_frames,
            frame_size=plan.frame_size,
            video_id=video_id,
            sprites=plan.sprites,
        )
        self.plan, self.cfg, self.device = plan, cfg, device
        self._drawn: tuple[tuple, SceneBatch] | None = None

    def hr_frames(self, indices: list[int]) -> torch.Tensor:
        state = (tuple(self.paths), tuple(id(s) for s in self.sprites))
        if self._drawn is None or self._drawn[0] != state:
            plan = dataclasses.replace(self.plan, paths=list(self.paths), sprites=list(self.sprites))
            self._drawn = (state, SceneBatch([plan], self.cfg, device=self.device))
        return self._drawn[1].frames([(0, list(indices))])[0]
