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
    multishot_paths,
    pyramid_level,
    sprite_theta,
    view_theta,
)
from hypernet.data.procedural import FILLS, ProceduralConfig, Trajectory, load_font, scene_palette

KINDS = ("ellipse", "rectangle", "polygon", "text")
ELLIPSE, RECTANGLE, POLYGON, TEXT = range(4)
FLAT, GRADIENT, STRIPES, NOISE = range(4)  # FILLS order
CORNERS = 7  # polygon edges (fewer corners repeat the last edge)
GLYPHS = string.ascii_letters + string.digits
GLYPH_EM = 32  # atlas pixels per em
GLYPH_CELL = (40, 24)  # atlas cell (height, width): the advance of every letter
NOISE_SIDE = 256
COVERAGE_LEVELS = 1023  # coverage is packed into the depth key in this many steps
BOX_SIDES = (8, 16, 32, 64, 128, 256, 512)


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
        return Shapes(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Shapes.__dataclass_fields__})

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
        corners = np.where(np.arange(CORNERS)[None] < n_corners[:, None], corners, corners[np.arange(count), n_corners - 1][:, None])
        shapes = Shapes(
            kind=kind,
            centre=rng.uniform(0, side, size=(count, 2)),
            turn=rng.uniform(-np.pi, np.pi, size=count),
            extent=extent,
            corners=corners,
            soft=np.where(soft, 2.5 * rng.uniform(0.35, 0.075 * r + 0.5), 1.0),
            fill=fill,
            colours=self.colours(count),
            fill_angle=rng.uniform(0, np.pi, size=count),
            period=rng.uniform(3.0, 0.3 * frame, size=count),
            sharpness=rng.choice([1.0, 4.0, 30.0], size=count),
            noise_at=np.stack(
                [rng.uniform(0.5, 2.0, size=count), rng.uniform(0, NOISE_SIDE, size=count), rng.uniform(0, NOISE_SIDE, size=count)],
                axis=1,
            ),
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
            colours=self.colours(1),
            fill_angle=rng.uniform(0, np.pi, size=1),
            period=rng.uniform(3.0, 0.3 * self.frame, size=1),
            sharpness=rng.choice([1.0, 4.0, 30.0], size=1),
            noise_at=np.stack([rng.uniform(0.5, 2.0, 1), rng.uniform(0, NOISE_SIDE, 1), rng.uniform(0, NOISE_SIDE, 1)], 1),
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
        margin = 0.5 * frame
        start = rng.uniform(margin, scene - margin, size=2) if scene > 2 * margin else np.full(2, scene / 2)
        travel = cfg.max_motion * frame * rng.uniform(0.2, 1.0)
        heading = rng.uniform(0, 2 * np.pi)
        end = start + travel * np.array([math.cos(heading), math.sin(heading)])
        a0 = float(rng.uniform(-180, 180))
        motion = Trajectory(
            centres=((float(start[0]), float(start[1])), (float(end[0]), float(end[1]))),
            angles=(a0, a0 + float(rng.uniform(-40, 40))),
            sizes=(float(side), side * float(rng.uniform(0.75, 1.33))),
        )
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
    paths = multishot_paths(rng, image_size=(side, side), frame_size=frame_size, shots=shots, zoom_range=zoom_range)
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
    """(fonts, len(GLYPHS), *GLYPH_CELL) coverage in [0, 1]: every letter and digit of every font,
    centred in a cell whose width is the advance of a word's letters."""
    height, width = GLYPH_CELL
    atlas = np.zeros((len(fonts), len(GLYPHS), height, width), dtype=np.float32)
    for f, path in enumerate(fonts):
        font = load_font(path, GLYPH_EM)
        for g, glyph in enumerate(GLYPHS):
            image = Image.new("L", (width, height), 0)
            ImageDraw.Draw(image).text((width / 2, height / 2), glyph, fill=255, font=font, anchor="mm")
            atlas[f, g] = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(atlas)


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def _on(tensor_key: tuple, make, device: torch.device) -> torch.Tensor:
    key = (*tensor_key, str(device))
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = make().to(device)
    return _DEVICE_CACHE[key]


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
    "cx", "cy", "cos", "sin", "a", "b", "soft", "fill", "c0r", "c0g", "c0b", "c1r", "c1g", "c1b",
    "dx", "dy", "period", "sharpness", "zoom", "ox", "oy", "font", "noise", "layer", "depth",
)
_COL = {name: k for k, name in enumerate(_COLUMNS)}


def _table(shapes: Shapes, *, layer: np.ndarray, depth: np.ndarray, noise_of_layer: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """The shapes' numbers on the device: one packed float table (rows: shapes, _COLUMNS), the
    polygons' edges and the words' glyphs."""
    columns = [
        shapes.centre[:, 0], shapes.centre[:, 1], np.cos(shapes.turn), np.sin(shapes.turn),
        shapes.extent[:, 0], shapes.extent[:, 1], shapes.soft, shapes.fill,
        *shapes.colours[:, 0].T, *shapes.colours[:, 1].T,
        np.cos(shapes.fill_angle), np.sin(shapes.fill_angle), shapes.period, shapes.sharpness,
        *shapes.noise_at.T, shapes.font, noise_of_layer[layer], layer, depth,
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
    """Half the side of a square around each shape, edge softness included."""
    reach = shapes.extent.max(axis=1)
    text = shapes.kind == TEXT
    letters = np.maximum((shapes.text >= 0).sum(axis=1), 1)
    em = shapes.extent[:, 0] / GLYPH_EM
    reach = np.where(text, em * np.hypot(letters * GLYPH_CELL[1], GLYPH_CELL[0]) / 2, reach)
    return reach + shapes.soft + 1


def _col(rows: torch.Tensor, name: str) -> torch.Tensor:
    """Column `name` of a group's packed rows, shaped (n, 1, 1) to broadcast over its pixels."""
    return rows[:, _COL[name], None, None]


def _coverage(rows: torch.Tensor, kind: int, u: torch.Tensor, v: torch.Tensor, *, edges: torch.Tensor, text: torch.Tensor, atlas: torch.Tensor | None) -> torch.Tensor:
    """Coverage in [0, 1] of a group of shapes (all of `kind`) at their local coordinates (n, P, P):
    signed distance over the edge width, clamped (a 1-pixel ramp anti-aliases, a wider one blurs)."""
    a, b = _col(rows, "a"), _col(rows, "b")
    if kind == ELLIPSE:
        ua, vb = u / a, v / b
        q = torch.sqrt(ua * ua + vb * vb)
        grad = torch.sqrt((ua / a) ** 2 + (vb / b) ** 2).clamp_min(1e-6)
        sd = (q - 1) * q / grad
    elif kind == RECTANGLE:
        sd = torch.maximum(u.abs() - a, v.abs() - b)
    elif kind == POLYGON:
        e = edges[:, :, None, None, :]  # (n, E, 1, 1, 3)
        sd = (e[..., 0] * u[:, None] + e[..., 1] * v[:, None] - e[..., 2]).amax(dim=1)
    else:
        return _text_coverage(rows, u, v, text=text, atlas=atlas)
    return (0.5 - sd / _col(rows, "soft")).clamp(0, 1)


def _text_coverage(rows: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *, text: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
    """A word's coverage: each pixel reads its letter's glyph from the atlas (bilinear)."""
    height, width = GLYPH_CELL
    letters = (text >= 0).sum(dim=1).clamp_min(1)[:, None, None]
    scale = GLYPH_EM / _col(rows, "a")  # atlas pixels per canvas pixel
    ax = u * scale + letters * width / 2 - 0.5
    ay = v * scale + height / 2 - 0.5
    slot = torch.div(ax + 0.5, width, rounding_mode="floor").long()
    inside = (slot >= 0) & (slot < letters) & (ay > -1) & (ay < height)
    glyph = text.gather(1, slot.clamp(0, text.shape[1] - 1).flatten(1)).view_as(slot).clamp_min(0)
    gx = ax - slot * width
    x0, y0 = gx.floor(), ay.floor()
    fx, fy = gx - x0, ay - y0
    base = (_col(rows, "font").long() * len(GLYPHS) + glyph) * (height * width)
    flat = atlas.flatten()

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        ok = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        index = base + yy.clamp(0, height - 1).long() * width + xx.clamp(0, width - 1).long()
        return torch.where(ok, flat[index], 0.0)

    value = (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )
    return torch.where(inside, value, 0.0)


def _fill(rows: torch.Tensor, noise: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, P, P, 3) colours of a group of shapes at canvas pixels (x, y): colour 0 to colour 1 by
    the fill's weight (flat: 0; gradient across the shape; stripes; fractal noise)."""
    c0 = rows[:, None, None, _COL["c0r"] : _COL["c0b"] + 1]
    fill = _col(rows, "fill")
    if not bool((fill != FLAT).any()):
        return c0.expand(*x.shape, 3)
    dx, dy = _col(rows, "dx"), _col(rows, "dy")
    along = x * dx + y * dy
    along_centre = _col(rows, "cx") * dx + _col(rows, "cy") * dy
    reach = torch.maximum(_col(rows, "a"), _col(rows, "b"))
    gradient = (0.5 + (along - along_centre) / (2 * reach)).clamp(0, 1)
    stripes = 0.5 + 0.5 * torch.tanh(_col(rows, "sharpness") * torch.sin(2 * math.pi * along / _col(rows, "period")))
    n = noise.shape[-1]
    zoom = _col(rows, "zoom")
    ty, tx = y * zoom + _col(rows, "oy"), x * zoom + _col(rows, "ox")
    iy = (ty - n * torch.floor(ty / n)).long().clamp(0, n - 1)
    ix = (tx - n * torch.floor(tx / n)).long().clamp(0, n - 1)
    grain = noise.flatten()[(_col(rows, "noise").long() * n + iy) * n + ix]
    w = torch.where(fill == GRADIENT, gradient, torch.where(fill == STRIPES, stripes, grain))
    w = torch.where(fill == FLAT, 0.0, w)
    c1 = rows[:, None, None, _COL["c1r"] : _COL["c1b"] + 1]
    return c0 + (c1 - c0) * w[..., None]


def _box_side(half: float) -> int:
    return next((s for s in BOX_SIDES if s >= 2 * half), math.ceil(2 * half))


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
    later shapes over earlier ones. noise: (V, N, N) fields; layer l fills from field noise_of_layer[l]."""
    count = len(layers)
    sizes = [len(s) for s in layers]
    shapes = Shapes.concat(list(layers))
    layer = np.repeat(np.arange(count), sizes)
    depth = np.concatenate([np.arange(n) for n in sizes])
    table = _table(shapes, layer=layer, depth=depth, noise_of_layer=np.asarray(noise_of_layer), device=device)
    packed = table["packed"]
    atlas = _on(("atlas", fonts), lambda: glyph_atlas(fonts), device) if fonts else None
    pixels = count * side * side

    top_key = torch.full((pixels,), COVERAGE_LEVELS, dtype=torch.long, device=device)  # depth 0, covered
    full_depth = torch.zeros(pixels, dtype=torch.long, device=device)
    box = np.array([_box_side(h) for h in _half_box(shapes)])
    for p, kind in sorted(set(zip(box[depth > 0].tolist(), shapes.kind[depth > 0].tolist(), strict=True))):
        chosen = np.flatnonzero((box == p) & (shapes.kind == kind) & (depth > 0))
        idx = torch.as_tensor(chosen, device=device)
        rows = packed[idx]
        offsets = torch.arange(p, device=device, dtype=torch.float32)
        cx, cy = _col(rows, "cx"), _col(rows, "cy")
        x = torch.floor(cx - p / 2) + offsets[None, None, :]  # (n, 1, P)
        y = torch.floor(cy - p / 2) + offsets[None, :, None]  # (n, P, 1)
        dx, dy = x + 0.5 - cx, y + 0.5 - cy
        c, s = _col(rows, "cos"), _col(rows, "sin")
        u, v = c * dx + s * dy, c * dy - s * dx  # (n, P, P)
        cover = _coverage(
            rows, kind, u, v, edges=table["edges"][idx] if kind == POLYGON else None,
            text=table["text"][idx], atlas=atlas,
        )
        inside = (x >= 0) & (x < side) & (y >= 0) & (y < side) & (cover > 0)
        lay = _col(rows, "layer").long()
        pix = ((lay * side + y.clamp(0, side - 1).long()) * side + x.clamp(0, side - 1).long()).flatten()
        d = _col(rows, "depth").long()
        level = torch.round(cover * COVERAGE_LEVELS).long()
        top_key.scatter_reduce_(0, pix, torch.where(inside, d * (COVERAGE_LEVELS + 1) + level, -1).flatten(), "amax")
        full_depth.scatter_reduce_(0, pix, torch.where(inside & (level == COVERAGE_LEVELS), d, -1).flatten(), "amax")

    # each pixel: its top shape's fill, blended by that shape's coverage over its topmost full one's
    top_depth = torch.div(top_key, COVERAGE_LEVELS + 1, rounding_mode="floor")
    alpha = (top_key % (COVERAGE_LEVELS + 1)).float()[:, None] / COVERAGE_LEVELS
    alpha = torch.where((top_depth == full_depth)[:, None], 1.0, alpha)
    first = torch.as_tensor(np.cumsum([0, *sizes[:-1]]), device=device)  # each layer's row 0
    pixel_layer = torch.arange(count, device=device).repeat_interleave(side * side)
    grid = torch.arange(side, device=device, dtype=torch.float32)
    x = grid.repeat(count * side)[:, None, None]
    y = grid.repeat_interleave(side).repeat(count)[:, None, None]
    full_image = _fill(packed[first[pixel_layer] + full_depth], noise, x, y).reshape(pixels, 3)
    blended = alpha[:, 0] < 1
    image = full_image.clone()
    if bool(blended.any()):
        which = blended.nonzero()[:, 0]
        rows = packed[first[pixel_layer[which]] + top_depth[which]]
        top_colour = _fill(rows, noise, x[which], y[which]).reshape(-1, 3)
        image[which] = alpha[which] * top_colour + (1 - alpha[which]) * full_image[which]
    return image.view(count, side, side, 3).permute(0, 3, 1, 2).contiguous()


def sprite_alpha(masks: Sequence[Shapes], sides: Sequence[int], *, side: int, fonts: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """(M, 1, side, side) coverage of each moving layer's cut-out shape over its side x side
    texture (zero beyond it)."""
    shapes = Shapes.concat(list(masks))
    count = len(shapes)
    table = _table(shapes, layer=np.arange(count), depth=np.ones(count), noise_of_layer=np.zeros(count, dtype=np.int64), device=device)
    grid = torch.arange(side, device=device, dtype=torch.float32) + 0.5
    alpha = torch.zeros(count, side, side, device=device)
    for kind in sorted(set(shapes.kind.tolist())):
        idx = torch.as_tensor(np.flatnonzero(shapes.kind == kind), device=device)
        rows = table["packed"][idx]
        dx, dy = grid[None, None, :] - _col(rows, "cx"), grid[None, :, None] - _col(rows, "cy")
        c, s = _col(rows, "cos"), _col(rows, "sin")
        u, v = c * dx + s * dy, c * dy - s * dx
        atlas = _on(("atlas", fonts), lambda: glyph_atlas(fonts), device) if kind == TEXT else None
        alpha[idx] = _coverage(rows, kind, u, v, edges=table["edges"][idx], text=table["text"][idx], atlas=atlas)
    inside = torch.as_tensor(np.asarray(sides), device=device, dtype=torch.float32)[:, None, None]
    alpha = torch.where((grid[None, None, :] < inside) & (grid[None, :, None] < inside), alpha, 0.0)
    return alpha[:, None]


class SceneBatch:
    """The scenes of a batch of plans, drawn on `device`: canvases and moving layers, ready to be
    filmed. frames() films any frames of any of them in one pass."""

    def __init__(self, plans: Sequence[ScenePlan], cfg: ProceduralConfig, *, device: torch.device | str = "cpu"):
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
        self.canvas = image_pyramid_batch(canvas)
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
                [s.mask for s in sprites], [s.side for s in sprites], side=self.sprite_side, fonts=fonts, device=device
            )
            self.sprite_pyramid = image_pyramid_batch(torch.cat([texture * alpha, alpha], dim=1))

    def frames(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[torch.Tensor]:
        """For each (scene, frame indices): its HR frames (n, 3, F, F) in [0, 1]."""
        views, sprite_views = [], []  # (scene, camera, t) per frame; (frame row, sprite, camera, t)
        for b, indices in requests:
            plan = self.plans[b]
            timing = SceneVideo(pyramid=[], paths=plan.paths, num_frames=plan.num_frames, frame_size=plan.frame_size, video_id="")
            for i in indices:
                if not 0 <= i < plan.num_frames:
                    raise IndexError(f"frame {i} outside a {plan.num_frames}-frame video")
                camera = timing.camera(i)
                t = i / max(plan.num_frames - 1, 1)
                row = len(views)
                views.append((b, camera))
                for m, owner in enumerate(self.sprite_owner):
                    if owner == b:
                        sprite_views.append((row, m, camera, t))
        size = self.plans[0].frame_size
        side = self.canvas[0].shape[-1]
        thetas = torch.tensor(
            [view_theta(*camera, height=side, width=side, dtype=torch.float64).tolist() for _, camera in views],
            device=self.device,
        )
        levels = [pyramid_level(self.canvas, camera[2] / size) for _, camera in views]
        frames = self._film(self.canvas, [b for b, _ in views], thetas, levels, size, mode="bicubic", padding="reflection")
        if sprite_views:
            placements = [self.sprites[m].motion.at(t) for _, m, _, t in sprite_views]
            scale = torch.tensor([self.sprites[m].side / self.sprite_side for _, m, _, _ in sprite_views], device=self.device)
            theta = torch.tensor([sprite_theta(camera, p) for (_, _, camera, _), p in zip(sprite_views, placements, strict=True)], device=self.device, dtype=torch.float32)
            theta = theta * scale[:, None, None]
            theta[:, :, 2] += scale[:, None] - 1  # the texture fills the top-left side x side of its canvas
            levels = [
                pyramid_level(self.sprite_pyramid, (camera[2] / size) * self.sprites[m].side / p[3])
                for (_, m, camera, _), p in zip(sprite_views, placements, strict=True)
            ]
            layers = self._film(self.sprite_pyramid, [m for _, m, _, _ in sprite_views], theta, levels, size, mode="bilinear", padding="zeros")
            for k, (row, _, _, _) in enumerate(sprite_views):  # in drawing order: later over earlier
                frames[row] = frames[row] * (1 - layers[k, 3:]) + layers[k, :3]
        frames = frames.clamp(0, 1)
        out, start = [], 0
        for _, indices in requests:
            out.append(frames[start : start + len(indices)])
            start += len(indices)
        return out

    def _film(self, pyramid, sources, thetas, levels, size, *, mode, padding) -> torch.Tensor:
        """Resample rows sources[k] of the pyramid at affine thetas[k], each from its level."""
        channels = pyramid[0].shape[1]
        out = torch.empty(len(sources), channels, size, size, device=self.device)
        source_index = torch.as_tensor(sources, device=self.device)
        for level in sorted(set(levels)):
            rows = torch.as_tensor([k for k, lv in enumerate(levels) if lv == level], device=self.device)
            theta = thetas[rows].to(pyramid[level].dtype)
            grid = F.affine_grid(theta, [len(rows), channels, size, size], align_corners=False)
            out[rows] = F.grid_sample(pyramid[level][source_index[rows]], grid, mode=mode, padding_mode=padding, align_corners=False)
        return out


def image_pyramid_batch(images: torch.Tensor, *, levels: int = 6) -> list[torch.Tensor]:
    """image_pyramid over a batch (B, C, H, W)."""
    pyramid = [images]
    while len(pyramid) < levels and min(pyramid[-1].shape[-2:]) >= 32:
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
    return pyramid


class TorchSceneVideo(SceneVideo):
    """One procedural video drawn by the tensor program (the `Video` protocol of datasets.py):
    validation and test scenes, and any single video, film their frames as a training batch does.
    Drawn on first use; its `paths` and `sprites` (SpritePlans) may be changed before or after."""

    def __init__(self, plan: ScenePlan, cfg: ProceduralConfig, *, video_id: str, device: torch.device | str = "cpu"):
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
