"""Training and validation samples: one item per draw of a video.

An item is what stage 1 and stage 2 both need:

    context      (K, C, h, w)   K LR frames drawn from across the WHOLE video (the hypernet's input)
    context_times (K,)          their positions in the video, in [0, 1]
    lr           (N, C, p, p)   N consecutive LR frames, patch-cropped
    hr           (N, C, s*p, s*p) the matching HR frames
    video_id     str
    degradation  (D,)           this video's degradation parameters (`Degradation.as_tensor`)

Sources are "videos": objects with `video_id`, `num_frames`, `hr_size` and `hr_frames(indices)`.
Built-in stills videos render frames on demand; video files and frame folders decode only the
frames asked for. The degradation of a video is drawn once from a generator seeded by the
video, so every sample of a video carries the same parameters.

Training draws are *fresh*: item i of the training set is a new video (new photo crop, camera
path and degradation) seeded by (seed, i), and the sampler hands out new indices every epoch.
docs/design.md: content diversity is the largest lever; a small fixed pool memorises.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from hypernet.data import video_io
from hypernet.data.camera import PhotoAugment, StillsVideo, collage, colour_matrix, image_pyramid, load_image
from hypernet.data.degrade import (
    Degradation,
    DegradationRanges,
    bd_downsample,
    degrade,
    quantise,
    sample_degradation,
)
from hypernet.data.procedural import ProceduralConfig, procedural_video
from hypernet.data.recurrence import recurrence_scene


class Video(Protocol):
    video_id: str
    num_frames: int

    @property
    def hr_size(self) -> tuple[int, int]: ...

    def hr_frames(self, indices: list[int]) -> torch.Tensor: ...


def stable_seed(*parts: object) -> int:
    """A seed from any values, the same in every process and Python run (unlike hash())."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class FileVideo:
    """A video file or a folder of frames, decoded lazily through `video_io`."""

    def __init__(self, path: str | Path, *, video_id: str | None = None):
        self.path = Path(path)
        info = video_io.probe(self.path)
        self.num_frames = info.num_frames
        self._size = (info.height, info.width)
        self.video_id = video_id or self.path.stem

    @property
    def hr_size(self) -> tuple[int, int]:
        return self._size

    def hr_frames(self, indices: list[int]) -> torch.Tensor:
        return video_io.to_tensor(video_io.read_frames(self.path, list(indices)))[0]


@dataclass(frozen=True)
class DegradationConfig:
    """How LR is made from HR. mode: "BI" (MATLAB bicubic), "BD" (blur 1.6 + subsample) or
    "random" (per-video blur, noise and optional H.264 drawn from `ranges`)."""

    mode: str = "random"
    scale: int = 4
    ranges: DegradationRanges = field(default_factory=DegradationRanges)

    def __post_init__(self) -> None:
        if self.mode not in ("BI", "BD", "random"):
            raise ValueError(f"data.degradation.mode must be 'BI', 'BD' or 'random', got {self.mode!r}")
        if self.scale not in (2, 3, 4):
            raise ValueError(f"data.scale must be 2, 3 or 4, got {self.scale}")

    def for_video(self, seed: int) -> Degradation:
        if self.mode == "random":
            return sample_degradation(np.random.default_rng(seed), scale=self.scale, ranges=self.ranges)
        blur = 1.6 if self.mode == "BD" else 0.0
        return Degradation(scale=self.scale, blur_sigma=blur, noise_sigma=0.0, crf=None, seed=seed)

    def apply(self, hr: torch.Tensor, d: Degradation, indices: Sequence[int]) -> torch.Tensor:
        if self.mode == "BD":  # the BD protocol subsamples after a fixed 13x13 blur
            lr = bd_downsample(hr, d.scale)
            return quantise(lr)
        return degrade(hr, d, frame_indices=list(indices))


def spread_indices(num_frames: int, k: int, rng: np.random.Generator | None) -> list[int]:
    """k frame indices covering the whole video: one per equal segment, jittered when rng is given."""
    if k > num_frames:
        raise ValueError(
            f"data.context_frames={k} is larger than the video ({num_frames} frames): lower it or use longer videos"
        )
    edges = np.linspace(0, num_frames, k + 1)
    if rng is None:
        return [int((edges[i] + edges[i + 1]) / 2) for i in range(k)]
    return [int(rng.integers(int(edges[i]), max(int(edges[i + 1]), int(edges[i]) + 1))) for i in range(k)]


@dataclass(frozen=True)
class SamplePlan:
    """Every random choice of one item, made before any frame is drawn: which frames, which flips,
    which crop, which degradation. A video's frames can then be drawn for many items at once."""

    clip: list[int]  # consecutive frame indices
    context: list[int]  # frames spread over the whole video
    flips: list[int]  # dims to flip (-1, -2)
    transpose: bool
    crop: tuple[int, int] | None  # LR (top, left) of the patch; None: full frames
    patch_size: int | None  # LR patch side
    height: int  # HR size cut to a multiple of the scale
    width: int
    degradation: Degradation
    # more LR frames by name, each list given as that key of the item with its times ("<key>_times"):
    # a recurrence video's evaluation item holds its controls' frames (recurrence.control_frames)
    extra: dict[str, list[int]] = field(default_factory=dict)

    @property
    def frames(self) -> list[int]:
        """Every frame the item is made of, in the order finish_sample takes them."""
        return self.clip + self.context + [i for indices in self.extra.values() for i in indices]


def plan_sample(
    video: Video,
    *,
    degradation: DegradationConfig,
    video_seed: int,
    clip_len: int,
    context_frames: int,
    patch_size: int | None,
    rng: np.random.Generator | None,
    controls: bool = True,
) -> SamplePlan:
    """The choices of one item of a video (module docstring). rng=None: deterministic centre clip,
    full frames."""
    scale = degradation.scale
    height, width = video.hr_size
    if height % scale or width % scale:
        # crop HR to a multiple of the scale (what BasicSR's mod_crop does) rather than fail
        height, width = height - height % scale, width - width % scale
    lr_h, lr_w = height // scale, width // scale
    # where clips may lie: the whole video, or a recurrence video's wide shot
    low, high = getattr(video, "clip_range", (0, video.num_frames))
    if clip_len > high - low:
        where = (
            "" if (low, high) == (0, video.num_frames) else f" in its scored shot (frames {low}-{high - 1})"
        )
        raise ValueError(
            f"video {video.video_id} has {high - low} frames{where}, fewer than data.clip_len={clip_len}"
        )
    if patch_size is not None and (patch_size > lr_h or patch_size > lr_w):
        raise ValueError(
            f"video {video.video_id}: LR frames are {lr_w}x{lr_h}, smaller than data.patch_size={patch_size}"
        )
    d = degradation.for_video(video_seed)
    centred = rng is None
    start = low + (high - low - clip_len) // 2 if centred else int(rng.integers(low, high - clip_len + 1))
    context = spread_indices(video.num_frames, context_frames, rng) if context_frames else []
    extra = {}
    if rng is None and controls and hasattr(video, "control_frames"):  # a recurrence video's test item
        extra = video.control_frames(context_frames=context_frames, clip_len=clip_len)
    # training draws flip and transpose the whole video alike (BasicSR's hflip/rot augmentation)
    flips = [] if rng is None else [dim for dim in (-1, -2) if rng.random() < 0.5]
    transpose = rng is not None and height == width and rng.random() < 0.5
    crop = None
    if patch_size is not None:
        if rng is None:
            crop = ((lr_h - patch_size) // 2, (lr_w - patch_size) // 2)
        else:
            crop = (int(rng.integers(0, lr_h - patch_size + 1)), int(rng.integers(0, lr_w - patch_size + 1)))
    return SamplePlan(
        clip=list(range(start, start + clip_len)),
        context=context,
        flips=flips,
        transpose=transpose,
        crop=crop,
        patch_size=patch_size,
        height=height,
        width=width,
        degradation=d,
        extra=extra,
    )


def finish_sample(
    plan: SamplePlan,
    frames: torch.Tensor,
    *,
    video: Video,
    degradation: DegradationConfig,
) -> dict:
    """The item of a plan, given the video's HR frames plan.frames (in that order, as drawn):
    augmented, degraded, cropped."""
    frames = frames[..., : plan.height, : plan.width]
    frames = frames.flip(plan.flips) if plan.flips else frames
    frames = frames.transpose(-1, -2) if plan.transpose else frames
    clip_end, context_end = len(plan.clip), len(plan.clip) + len(plan.context)
    hr_clip, hr_context = frames[:clip_end], frames[clip_end:context_end]
    d, scale = plan.degradation, degradation.scale
    lr_clip = degradation.apply(hr_clip, d, plan.clip)
    if plan.crop is not None:
        (top, left), patch_size = plan.crop, plan.patch_size
        lr_clip = lr_clip[..., top : top + patch_size, left : left + patch_size]
        hr_clip = hr_clip[
            ..., top * scale : (top + patch_size) * scale, left * scale : (left + patch_size) * scale
        ]
    if plan.context:
        context = degradation.apply(hr_context, d, plan.context)
    else:
        context = lr_clip.new_zeros(0, *lr_clip.shape[1:])

    def times(indices: list[int]) -> torch.Tensor:
        return torch.tensor(indices, dtype=torch.float32) / max(video.num_frames - 1, 1)

    extra, start = {}, context_end
    for key, indices in plan.extra.items():
        extra[key] = degradation.apply(frames[start : start + len(indices)], d, indices)
        extra[f"{key}_times"] = times(indices)
        start += len(indices)
    closeups = set(getattr(video, "closeup_frames", ()))
    return {
        "context": context,
        "context_times": times(plan.context),
        # which context frames are close-ups (a recurrence video's; none elsewhere): refine crossscale's pairs
        "context_closeup": torch.tensor([i in closeups for i in plan.context], dtype=torch.bool),
        "lr": lr_clip,
        "hr": hr_clip,
        "video_id": video.video_id,
        "degradation": d.as_tensor(),
        "start": plan.clip[0],
        **extra,
    }


def make_sample(video: Video, **options) -> dict:
    """One item of a video (module docstring): plan_sample's choices (its options), the frames
    drawn, finish_sample. rng=None: deterministic centre clip, full frames."""
    plan = plan_sample(video, **options)
    frames = video.hr_frames(plan.frames)
    return finish_sample(plan, frames, video=video, degradation=options["degradation"])


@dataclass(frozen=True)
class SampleConfig:
    clip_len: int = 5
    context_frames: int = 8
    patch_size: int | None = None  # LR patch side; None = full frames
    controls: bool = True  # a recurrence video's evaluation item holds its controls' frames


FRESH_SOURCES = (
    "stills",
    "procedural",
    "recurrence",
)  # recurrence: procedural scenes filmed as recurrence.py's


def parse_sources(source: str | Mapping[str, float], *, option: str = "data.source") -> dict[str, float]:
    """A source name, or a mapping of names to weights ({stills: 0.3, procedural: 0.7}), as
    normalised weights. Only the sources that draw fresh videos can be mixed."""
    if isinstance(source, str):
        return {source: 1.0}
    weights = {str(k): v for k, v in dict(source).items()}
    unknown = [k for k in weights if k not in FRESH_SOURCES]
    if unknown:
        raise ValueError(
            f"{option}={weights}: {unknown} cannot be mixed; a mix takes weights for {list(FRESH_SOURCES)}"
        )
    for name, weight in weights.items():
        if not isinstance(weight, int | float) or not np.isfinite(weight) or weight < 0:
            raise ValueError(f"{option}.{name}={weight!r}: a weight must be a number >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"{option}={weights}: the weights must sum to a positive number")
    return {k: v / total for k, v in weights.items() if v > 0}


def large_enough(image_paths: Sequence[Path], hr_size: int) -> list[Path]:
    """The images whose short side holds a frame of hr_size pixels (a camera never magnifies a
    photograph); those smaller are left out, and none left is an error naming data.hr_size."""
    from PIL import Image

    def short_side(path: Path) -> int:
        with Image.open(path) as image:  # the header only
            return min(image.size)

    sides = {path: short_side(Path(path)) for path in image_paths}
    kept = [path for path, side in sides.items() if side >= hr_size]
    if not kept:
        raise ValueError(
            f"data.hr_size={hr_size}: no training photograph is that large (the largest short side is "
            f"{max(sides.values())} pixels); lower data.hr_size or give data.root larger images"
        )
    return kept


class FreshVideoDataset(Dataset):
    """Item i is a brand-new video seeded by (seed, i): its source drawn by weight (stills: a
    photograph under a new camera path, optionally meta-augmented; procedural: a new scene;
    recurrence: a new scene filmed as close-ups and a wide shot 4-5x wider, its clip in the wide
    shot, recurrence.py), its shots, its degradation. No two items share a video."""

    def __init__(
        self,
        *,
        sources: Mapping[str, float] | None = None,
        image_paths: Sequence[Path] = (),
        num_samples: int,
        num_frames: int,
        hr_size: int,
        sample: SampleConfig,
        degradation: DegradationConfig,
        seed: int,
        zoom_range: tuple[float, float] = (0.15, 0.85),
        procedural: ProceduralConfig | None = None,
        photo_augment: PhotoAugment | None = None,
        shots: tuple[int, int] = (1, 1),
    ):
        if hr_size % degradation.scale:
            raise ValueError(f"data.hr_size={hr_size} must be divisible by data.scale={degradation.scale}")
        self.sources = dict(sources or {"stills": 1.0})
        if "stills" in self.sources and not image_paths:
            raise ValueError("the stills source needs images: data.root is empty")
        check_shots(shots, num_frames=num_frames, clip_len=sample.clip_len)
        self.image_paths = large_enough(image_paths, hr_size) if "stills" in self.sources else []
        self.num_samples = num_samples
        self.num_frames = num_frames
        self.hr_size = hr_size
        self.sample = sample
        self.degradation = degradation
        self.seed = seed
        self.zoom_range = tuple(zoom_range)
        self.procedural = procedural or ProceduralConfig()
        self.photo_augment = photo_augment or PhotoAugment()
        self.shots = tuple(shots)
        self._pyramids: dict[int, list[torch.Tensor]] = {}
        self.draw_device: torch.device | str = "cpu"  # where a loader process draws procedural scenes
        self.defer_drawing = False  # leave them as plans, for the training device to draw

    def __len__(self) -> int:
        return self.num_samples

    def _pyramid(self, image: int) -> list[torch.Tensor]:
        if image not in self._pyramids:  # one decode per image per worker process
            self._pyramids[image] = image_pyramid(load_image(self.image_paths[image]))
        return self._pyramids[image]

    def _choose(self, video_seed: int, rng: np.random.Generator) -> tuple[str, int]:
        """The item's source and shots: the first draws of its rng."""
        names = list(self.sources)
        source = names[0] if len(names) == 1 else names[rng.choice(len(names), p=list(self.sources.values()))]
        lo, hi = self.shots
        shots = lo if lo == hi else int(rng.integers(lo, hi + 1))
        return source, shots

    def _stills_video(self, video_seed: int, rng: np.random.Generator, shots: int) -> Video:
        image = int(rng.integers(len(self.image_paths)))
        pyramid = self._pyramid(image)
        augment = self.photo_augment
        if augment.collage and rng.random() < augment.collage and len(self.image_paths) > 1:
            others = rng.choice(
                [i for i in range(len(self.image_paths)) if i != image], size=int(rng.integers(1, 4))
            )
            pyramid = image_pyramid(collage(pyramid[0], [self._pyramid(int(i))[0] for i in others], rng))
        video = StillsVideo(
            image_path=self.image_paths[image],
            seed=video_seed,
            num_frames=self.num_frames,
            frame_size=self.hr_size,
            zoom_range=self.zoom_range,
            pyramid=pyramid,
            shots=shots,
        )
        if augment.colour and rng.random() < augment.colour:
            video.colour = colour_matrix(rng)
        return video

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Items `indices` (the DataLoader asks for a whole batch at once): photographs drawn one by
        one, procedural scenes (torch backend) planned one by one and drawn as one batch on
        `draw_device`; with `defer_drawing`, left as plans (`PlannedScene`) for the training device
        to draw (`draw_planned`)."""
        items: list = []
        for index in indices:
            video_seed = stable_seed(self.seed, "train", index)
            rng = np.random.default_rng(video_seed)
            source, shots = self._choose(video_seed, rng)
            if source == "procedural" and self.procedural.backend == "torch":
                items.append(self._plan_scene(video_seed, rng, shots))
                continue
            if source == "procedural":
                video = procedural_video(video_seed, self.procedural, **self._scene_options(shots))
            elif source == "recurrence":  # its shots are its own: close-ups around one wide shot
                video = recurrence_scene(
                    video_seed,
                    self.procedural,
                    num_frames=self.num_frames,
                    frame_size=self.hr_size,
                    video_id=f"recurrence-{video_seed}",
                )
            else:
                video = self._stills_video(video_seed, rng, shots)
            items.append(
                make_sample(
                    video, degradation=self.degradation, video_seed=video_seed, rng=rng, **vars(self.sample)
                )
            )
        if self.defer_drawing:
            return items
        return self.draw_planned(items, device=self.draw_device)

    def _scene_options(self, shots: int) -> dict:
        return {
            "num_frames": self.num_frames,
            "frame_size": self.hr_size,
            "zoom_range": self.zoom_range,
            "shots": shots,
        }

    def _plan_scene(self, video_seed: int, rng: np.random.Generator, shots: int) -> PlannedScene:
        from hypernet.data.scenes import plan_scene

        scene = plan_scene(video_seed, self.procedural, **self._scene_options(shots))
        plan = plan_sample(
            scene, degradation=self.degradation, video_seed=video_seed, rng=rng, **vars(self.sample)
        )
        return PlannedScene(scene=scene, sample=plan)

    def draw_planned(self, items: Sequence, *, device: torch.device | str = "cpu") -> list[dict]:
        """Items with every PlannedScene drawn: all of them in one batch on `device`, then
        degraded and cropped there, as make_sample does for one video."""
        from hypernet.data.scenes import SceneBatch

        planned = [k for k, item in enumerate(items) if isinstance(item, PlannedScene)]
        if not planned:
            return list(items)
        scenes = SceneBatch([items[k].scene for k in planned], self.procedural, device=device)
        frames = scenes.frames([(b, items[k].sample.frames) for b, k in enumerate(planned)])
        out = list(items)
        for k, hr in zip(planned, frames, strict=True):
            item = finish_sample(
                items[k].sample,
                hr,
                video=items[k].scene,
                degradation=self.degradation,
            )
            # all of it where the frames are (its times and degradation numbers start on the CPU)
            out[k] = {key: v.to(hr.device) if isinstance(v, torch.Tensor) else v for key, v in item.items()}
        return out


@dataclass
class PlannedScene:
    """A procedural item not drawn yet: its scene's and its sample's plans (a few hundred numbers)."""

    scene: object  # scenes.ScenePlan
    sample: SamplePlan


def collate_items(items: Sequence) -> dict:
    """The DataLoader's collate: items stacked into a batch; a batch holding PlannedScenes (drawn
    on the training device, `VSRDataModule.on_after_batch_transfer`) stays a list until then."""
    if any(isinstance(item, PlannedScene) for item in items):
        return {"planned_items": list(items)}
    return default_collate(list(items))


def check_shots(
    shots: tuple[int, int], *, num_frames: int, clip_len: int, option: str = "data.shots"
) -> None:
    """Every shot must hold at least one clip, so that a clip can fall inside a single shot."""
    lo, hi = shots
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"{option}={list(shots)}: shots per video is an int >= 1 or a range [min, max]")
    if hi * clip_len > num_frames:
        raise ValueError(
            f"{option}={hi} shots of at least data.clip_len={clip_len} frames do not fit a "
            f"{num_frames}-frame video (data.num_frames): lower the shots or lengthen the videos"
        )


class VideoListDataset(Dataset):
    """A fixed list of videos. Evaluation: item i is video i, centre clip, full frames, fixed
    context. Training (train=True): item i draws a random clip and crop of video i % len."""

    def __init__(
        self,
        videos: Sequence[Video],
        *,
        sample: SampleConfig,
        degradation: DegradationConfig,
        seed: int,
        train: bool = False,
        num_samples: int | None = None,
    ):
        if not videos:
            raise ValueError("the dataset holds no videos: check data.root and the split")
        self.videos = list(videos)
        self.sample = sample
        self.degradation = degradation
        self.seed = seed
        self.train = train
        self.num_samples = num_samples if train and num_samples else len(self.videos)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        return self._item(index, self.sample)

    def _item(self, index: int, sample: SampleConfig) -> dict:
        video = self.videos[index % len(self.videos)]
        rng = np.random.default_rng(stable_seed(self.seed, "draw", index)) if self.train else None
        return make_sample(
            video,
            degradation=self.degradation,
            video_seed=stable_seed(self.seed, "video", video.video_id),
            rng=rng,
            **vars(sample),
        )

    def every_frame(self, index: int) -> torch.Tensor:
        """Every LR frame of video `index`, (T, C, h, w), degraded as its items are: the whole
        video a tool that reads it from start to end sees (eval's `hypernet_stream`)."""
        every = dataclasses.replace(
            self.sample, context_frames=self.videos[index % len(self.videos)].num_frames
        )
        return self._item(index, every)["context"]


class FreshIndexSampler(Sampler[int]):
    """Hands out new dataset indices every epoch (epoch * n + i), split across ranks.

    Epoch e draws videos no earlier epoch saw; the dataset turns each index into a seeded video,
    so a resumed run draws the same ones, provided the epoch is right. `epoch_of` (the data
    module passes the trainer's current epoch) is that epoch; without it, `set_epoch` (which
    Lightning calls) is. Lightning 2.6 calls set_epoch one epoch ahead after resuming from a
    checkpoint written at the end of an epoch, which fed a resumed run the next epoch's videos."""

    def __init__(
        self,
        *,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        epoch_of: Callable[[], int] | None = None,
    ):
        if num_samples % world_size:
            raise ValueError(
                f"data.samples_per_epoch={num_samples} must divide by the world size {world_size}"
            )
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.epoch_of = epoch_of

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_of() if self.epoch_of is not None else self.epoch
        first = epoch * self.num_samples
        return iter(range(first + self.rank, first + self.num_samples, self.world_size))


# ---------------------------------------------------------------- folder layouts


def folder_videos(root: str | Path) -> list[FileVideo]:
    """Every video file and every folder of frames directly under `root` (natural order)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} is not a folder")
    videos = [FileVideo(path) for path in video_io.list_videos(root)]
    if not videos:
        raise ValueError(
            f"data.root={root} holds no video files ({', '.join(video_io.VIDEO_SUFFIXES)}) or frame folders"
        )
    return videos


REDS4_CLIPS = ("000", "011", "015", "020")


def reds_videos(root: str | Path, split: str) -> list[FileVideo]:
    """REDS as BasicSR lays it out: root/train_sharp/<clip>/<frame>.png. The REDS4 partition
    (clips 000, 011, 015, 020) is the validation split; the other clips train."""
    folder = Path(root) / "train_sharp"
    if not folder.is_dir():
        raise FileNotFoundError(f"REDS layout expected {folder} (root/train_sharp/<clip>/00000000.png)")
    clips = sorted(p for p in folder.iterdir() if p.is_dir())
    chosen = [p for p in clips if (p.name in REDS4_CLIPS) == (split == "val")]
    return [FileVideo(p, video_id=f"reds-{p.name}") for p in chosen]


def vimeo_videos(root: str | Path, split: str) -> list[FileVideo]:
    """Vimeo-90K septuplets: root/sequences/<group>/<clip>/im1..im7.png with sep_trainlist.txt and
    sep_testlist.txt naming "<group>/<clip>" per line."""
    root = Path(root)
    list_file = root / ("sep_trainlist.txt" if split == "train" else "sep_testlist.txt")
    if not list_file.is_file():
        raise FileNotFoundError(f"Vimeo-90K layout expected {list_file}")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    return [
        FileVideo(root / "sequences" / name, video_id="vimeo-" + name.replace("/", "-")) for name in names
    ]


def vid4_videos(root: str | Path) -> list[FileVideo]:
    """Vid4: root/GT/<name>/*.png (calendar, city, foliage, walk); test only."""
    folder = Path(root) / "GT"
    if not folder.is_dir():
        raise FileNotFoundError(f"Vid4 layout expected {folder} (root/GT/<name>/*.png)")
    return [FileVideo(p, video_id=f"vid4-{p.name}") for p in sorted(folder.iterdir()) if p.is_dir()]
