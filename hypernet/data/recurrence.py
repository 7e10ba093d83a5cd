"""Videos that hold the memory they test: a wide shot whose detail the video shows elsewhere,
magnified, in close-ups.

At x4 a close-up's LR frames carry a wide shot's HR detail only if the close-up is magnified at
least 4x relative to the wide shot (its view of the scene is at least 4 times smaller). A
recurrence video is cut into shots: close-ups, then the wide shot in the middle, then more
close-ups, each close-up looking inside the wide view (every one of its frames inside every
frame of the wide shot) at another spot of it. The scored clip lies inside the wide shot, so the
base, which sees only the clip, never sees a close-up: whatever the close-ups add reaches the
wide shot only through what reads the whole video (the hypernetwork's context, refine steps).

`test/recurrence` (data.test_recurrence) is made of them, every video under one degradation
(`RECURRENCE_DEGRADATION`), so that telling videos apart by their degradation is worth nothing.
Its items also carry the context the encoder would read without the close-ups (the same count of
frames spread over the wide shot alone), for the control that removes them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hypernet.data.camera import CameraPath, StillsVideo, shot_starts
from hypernet.data.procedural import ProceduralConfig, procedural_video

MAGNIFICATION = (4.0, 5.0)  # wide view side / close-up view side, drawn per video
CLOSEUPS = 4  # close-up shots per video: half before the wide shot, half after
WIDE_PAN = 0.03  # how far the wide shot's centre travels, as a fraction of its view
WIDE_ANGLE = 2.0  # degrees the wide shot may turn
CLOSE_PAN = 0.6  # how far a close-up's centre travels, as a fraction of its view
CLOSE_ANGLE = 6.0  # degrees a close-up may turn
CHECK_TIMES = 9  # times per shot at which containment is checked
SCENE_CANVAS = 6.0  # a recurrence scene's side / frame side: room for a 5x wide view and its pan
# One degradation for every video of the group: the middle of the training family's blur, a
# little noise; no codec. Only what a video shows can tell its videos apart.
RECURRENCE_DEGRADATION = {"mode": "random", "blur_sigma": [1.2, 1.2], "noise_sigma": [0.01, 0.01]}


class RecurrenceError(ValueError):
    """A recurrence video cannot be made as asked (a source too small for the zoom, too few frames)."""


def check_recurrence_frames(*, num_frames: int, clip_len: int, option: str, closeups: int = CLOSEUPS) -> None:
    """The wide shot (one of closeups + 1 equal shots) must hold a whole clip."""
    shots = closeups + 1
    if num_frames // shots < clip_len:
        raise RecurrenceError(
            f"{option}: recurrence videos of {shots} shots need data.num_frames >= {shots * clip_len} "
            f"(data.clip_len={clip_len} frames in the wide shot), got {num_frames}"
        )


def view_corners(cx: float, cy: float, view: float, angle: float) -> np.ndarray:
    """The four corners (4, 2) of a square view of side `view` centred at (cx, cy), turned by
    `angle` degrees, in source pixels (as `camera.view_theta` maps them)."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * view / 2
    rotation = np.array([[cos, -sin], [sin, cos]])
    return unit @ rotation.T + np.array([cx, cy])


def inside(inner: Sequence[float], outer: Sequence[float], *, tolerance: float = 1e-6) -> bool:
    """Whether the view `inner` (cx, cy, view, angle) lies wholly inside the view `outer`."""
    ox, oy, oview, oangle = outer
    cos, sin = math.cos(math.radians(oangle)), math.sin(math.radians(oangle))
    offsets = view_corners(*inner) - np.array([ox, oy])
    local = offsets @ np.array([[cos, -sin], [sin, cos]])  # into the outer view's turned axes
    return bool(np.all(np.abs(local) <= oview / 2 * (1 + tolerance)))


@dataclass(frozen=True)
class RecurrencePlan:
    """The shots of a recurrence video: camera paths and what each shot is ("wide" or "close")."""

    paths: tuple[CameraPath, ...]
    kinds: tuple[str, ...]

    @property
    def wide_shot(self) -> int:
        return self.kinds.index("wide")


def samples(path: CameraPath) -> list[tuple[float, float, float, float]]:
    return [path.at(t) for t in np.linspace(0.0, 1.0, CHECK_TIMES)]


def recurrence_paths(
    rng: np.random.Generator,
    *,
    image_size: tuple[int, int],
    frame_size: int,
    closeups: int = CLOSEUPS,
    magnification: tuple[float, float] = MAGNIFICATION,
) -> RecurrencePlan:
    """Close-ups, the wide shot, close-ups: the close-ups' views `magnification` times smaller than
    the wide view (as large as the source allows, up to the range's top), never finer than the
    source's pixels (a close-up's view is at least frame_size source pixels), each inside every
    frame of the wide shot at its own spot (the wide view's quarters in turn)."""
    height, width = image_size
    short = min(height, width)
    turned = abs(math.cos(math.radians(WIDE_ANGLE))) + abs(math.sin(math.radians(WIDE_ANGLE)))
    largest = short / (turned * (1 + 2 * WIDE_PAN))  # the widest view that fits with its pan
    if largest < magnification[0] * frame_size:
        raise RecurrenceError(
            f"a {width}x{height} source is too small for a {magnification[0]:g}x zoom at frame size "
            f"{frame_size}: it needs a short side of at least "
            f"{math.ceil(magnification[0] * frame_size * turned * (1 + 2 * WIDE_PAN))}"
        )
    ratio = float(rng.uniform(magnification[0], min(magnification[1], largest / frame_size)))
    close_view = float(rng.uniform(frame_size, largest / ratio))
    wide_view = ratio * close_view
    pan = WIDE_PAN * wide_view
    margin = turned * wide_view / 2 + pan
    start = np.array([rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)])
    travel = rng.uniform(-pan, pan, size=2)
    centres = (tuple(start - travel), tuple(start), tuple(start + travel))
    wide = CameraPath(
        centres=tuple((float(x), float(y)) for x, y in centres),
        views=(wide_view,) * 3,
        angles=tuple(float(a) for a in rng.uniform(-WIDE_ANGLE, WIDE_ANGLE, size=3)),
    )
    wide_frames = samples(wide)
    spots = [(-0.25, -0.25), (0.25, 0.25), (0.25, -0.25), (-0.25, 0.25)]
    first = int(rng.integers(len(spots)))
    close_paths = [
        _close_path(rng, wide, wide_frames, close_view, spots[(first + k) % len(spots)])
        for k in range(closeups)
    ]
    before = closeups // 2
    kinds = ("close",) * before + ("wide",) + ("close",) * (closeups - before)
    paths = (*close_paths[:before], wide, *close_paths[before:])
    return RecurrencePlan(paths=paths, kinds=kinds)


def _close_path(
    rng: np.random.Generator,
    wide: CameraPath,
    wide_frames: list[tuple[float, float, float, float]],
    view: float,
    spot: tuple[float, float],
) -> CameraPath:
    """A close-up of side `view` panning near `spot` (in wide-view units from its centre), every
    frame inside every frame of the wide shot; the pan shrinks until it fits."""
    wx, wy, wview, wangle = wide.at(0.5)
    cos, sin = math.cos(math.radians(wangle)), math.sin(math.radians(wangle))
    for attempt in range(40):
        shrink = 0.8**attempt
        jitter = rng.uniform(-0.06, 0.06, size=2) * shrink
        u, v = (np.array(spot) * shrink + jitter) * wview
        centre = np.array([wx + cos * u - sin * v, wy + sin * u + cos * v])
        direction = rng.uniform(0, 2 * math.pi)
        travel = 0.5 * CLOSE_PAN * view * shrink * np.array([math.cos(direction), math.sin(direction)])
        angles = tuple(float(a) for a in rng.uniform(-CLOSE_ANGLE, CLOSE_ANGLE, size=3) * shrink)
        path = CameraPath(
            centres=tuple((float(x), float(y)) for x, y in (centre - travel, centre, centre + travel)),
            views=(view,) * 3,
            angles=angles,
        )
        if all(inside(c, w) for c in samples(path) for w in wide_frames):
            return path
    raise RecurrenceError("no close-up fits inside the wide shot: lower the magnification")


class RecurrenceVideo:
    """A video (any `Video` whose frames come from camera paths) filmed by a RecurrencePlan: the
    `Video` protocol, plus the frames of its wide shot (where clips are scored and the control's
    context is read) and the plan. Evaluation clips are centred in the wide shot (`clip_range`)."""

    def __init__(self, video, plan: RecurrencePlan):
        if len(plan.paths) > video.num_frames:
            raise RecurrenceError(
                f"{len(plan.paths)} shots do not fit a {video.num_frames}-frame video: lengthen data.num_frames"
            )
        video.paths = list(plan.paths)
        self.video, self.plan = video, plan

    @property
    def video_id(self) -> str:
        return self.video.video_id

    @property
    def num_frames(self) -> int:
        return self.video.num_frames

    @property
    def hr_size(self) -> tuple[int, int]:
        return self.video.hr_size

    def hr_frames(self, indices: list[int]) -> torch.Tensor:
        """Frames `indices`, each shot's drawn apart: a procedural scene films the frames of one
        request from the pyramid level of their nearest view, so a wide frame drawn with a
        close-up would alias (every view of a shot is the same size here)."""
        shot_of = {i: k for k, frames in enumerate(self.shot_frames) for i in frames}
        frames: list[torch.Tensor | None] = [None] * len(indices)
        for k in sorted({shot_of[i] for i in indices if i in shot_of}):
            positions = [p for p, i in enumerate(indices) if shot_of.get(i) == k]
            for p, frame in zip(
                positions, self.video.hr_frames([indices[p] for p in positions]), strict=True
            ):
                frames[p] = frame
        missing = [i for i, f in zip(indices, frames, strict=True) if f is None]
        if missing:
            raise IndexError(f"frames {missing} outside a {self.num_frames}-frame video")
        return torch.stack(frames)

    @property
    def shot_frames(self) -> list[range]:
        starts = [*shot_starts(self.num_frames, len(self.plan.paths)), self.num_frames]
        return [range(a, b) for a, b in itertools.pairwise(starts)]

    @property
    def wide_frames(self) -> list[int]:
        return list(self.shot_frames[self.plan.wide_shot])

    @property
    def closeup_frames(self) -> list[int]:
        return [
            i for k, frames in enumerate(self.shot_frames) if self.plan.kinds[k] == "close" for i in frames
        ]

    @property
    def clip_range(self) -> tuple[int, int]:
        """[start, end) of the frames a clip may take: the wide shot."""
        frames = self.wide_frames
        return frames[0], frames[-1] + 1

    def camera(self, index: int) -> tuple[float, float, float, float]:
        return self.video.camera(index)

    def control_frames(self, *, context_frames: int, clip_len: int) -> dict[str, list[int]]:
        """The frames an evaluation item carries for the memory controls: the context the encoder
        reads without the close-ups (as many frames as the context, spread over the wide shot,
        repeated where it is shorter), and a clip of clip_len frames from the middle of every
        close-up shot, one after another (the internal-learning reference's cross-scale pairs)."""
        wide = self.wide_frames
        closeups = []
        for kind, frames in zip(self.plan.kinds, self.shot_frames, strict=True):
            if kind == "close":
                start = frames[0] + (len(frames) - clip_len) // 2
                closeups += range(start, start + clip_len)
        frames = {"closeups": closeups}
        if context_frames:  # a stage-1 item reads no context, so it has none to remove close-ups from
            frames["context_without_closeups"] = [
                wide[round(j)] for j in np.linspace(0, len(wide) - 1, context_frames)
            ]
        return frames


def recurrence_scene(
    seed: int, cfg: ProceduralConfig, *, num_frames: int, frame_size: int, video_id: str
) -> RecurrenceVideo:
    """A procedural scene of `seed` on a canvas SCENE_CANVAS frames wide, as densely filled with
    shapes as cfg's own canvas (the shape count grows with the area; shape sizes are relative to
    the frame, so a close-up shows them as large as a scene of cfg shows them), filmed as a
    recurrence video."""
    canvas = max(SCENE_CANVAS, cfg.canvas)
    wide = dataclasses.replace(cfg, canvas=canvas, shapes=round(cfg.shapes * (canvas / cfg.canvas) ** 2))
    video = procedural_video(seed, wide, num_frames=num_frames, frame_size=frame_size, video_id=video_id)
    side = round(canvas * frame_size)
    rng = np.random.default_rng([seed, 21])  # the shots' own draws: the scene stays the seed's
    return RecurrenceVideo(video, recurrence_paths(rng, image_size=(side, side), frame_size=frame_size))


def recurrence_still(
    path, pyramid: list[torch.Tensor], seed: int, *, num_frames: int, frame_size: int, video_id: str
) -> RecurrenceVideo:
    """A photograph filmed as a recurrence video (RecurrenceError when it is too small for the zoom)."""
    plan = recurrence_paths(
        np.random.default_rng([seed, 21]), image_size=tuple(pyramid[0].shape[-2:]), frame_size=frame_size
    )
    video = StillsVideo(
        image_path=path,
        seed=seed,
        num_frames=num_frames,
        frame_size=frame_size,
        pyramid=pyramid,
        video_id=video_id,
    )
    return RecurrenceVideo(video, plan)


def without_closeups(item: dict) -> dict:
    """An evaluation item (or a batch of them) as the encoder and the refine steps read it in the
    memory control: its context spread over the wide shot alone, no frame of it a close-up."""
    return {
        **item,
        "context": item["context_without_closeups"],
        "context_times": item["context_without_closeups_times"],
        "context_closeup": torch.zeros_like(item["context_closeup"]),
    }


def crossscale_pairs(
    closeups: torch.Tensor, degradation: torch.Tensor, *, clip_len: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs from a video's own close-ups alone (no HR): the close-ups' LR frames
    (n * clip_len, C, h, w), one clip per close-up shot, degraded once more by the video's
    degradation (`Degradation.as_tensor()` numbers: the group's, known as ZSSR's kernel is known)
    as inputs, the LR frames themselves as targets: (n, clip_len, C, h/s, w/s) and
    (n, clip_len, C, h', w'), h' = h cut to a multiple of the scale."""
    from hypernet.data.degrade import Degradation, degrade

    scale, blur, noise, crf = degradation.tolist()
    scale = int(scale)
    height, width = (
        closeups.shape[-2] - closeups.shape[-2] % scale,
        closeups.shape[-1] - closeups.shape[-1] % scale,
    )
    if height < scale or width < scale:
        raise RecurrenceError(
            f"close-up frames of {closeups.shape[-1]}x{closeups.shape[-2]} are too small to degrade x{scale}"
        )
    targets = closeups[..., :height, :width]
    d = Degradation(
        scale=scale, blur_sigma=blur, noise_sigma=noise, crf=None if crf < 0 else int(crf), seed=seed
    )
    inputs = degrade(targets, d)
    shape = (-1, clip_len)
    return inputs.reshape(*shape, *inputs.shape[1:]), targets.reshape(*shape, *targets.shape[1:])
