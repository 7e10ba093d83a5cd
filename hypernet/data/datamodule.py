"""The LightningDataModule that Hydra configures (`configs/data/*.yaml`).

`batch_size` is the GLOBAL batch: each of the world's ranks loads batch_size / world_size,
with an error when it does not divide. Training draws fresh videos every epoch
(`FreshIndexSampler`) from one source or a weighted mix ({stills: 0.3, procedural: 0.7}).

Three splits, so that nothing is chosen on the test videos:

- train: fresh videos, never repeated;
- val (model selection: best.ckpt, early curves): `val_source`, by default fixed-seed
  procedural videos, drawn from the training distribution;
- test (reported, chooses nothing): `test_source`, by default the held-out photographs (5
  photos never seen in training, `val_videos_per_image` single-shot videos each), plus
  multi-shot videos of the same photos (`test_shots`) and videos at a larger frame size
  (`test_large_hr`), each group in its own loader and reported apart;
- the real-size groups (`test_real_sides`), what users' videos look like: LR frames of
  128 to 320 pixels and more, each group one degradation of the same videos (`REAL_DEGRADATIONS`):
  procedural scenes at every listed LR side (moving layers, camera motion), and the held-out
  photographs at the largest listed side they allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, default_collate

from hypernet.cli_checks import MIN_SIZE
from hypernet.data.camera import (
    PhotoAugment,
    StillsVideo,
    builtin_images,
    image_pyramid,
    list_images,
    load_image,
)
from hypernet.data.datasets import (
    FRESH_SOURCES,
    DegradationConfig,
    FreshIndexSampler,
    FreshVideoDataset,
    SampleConfig,
    VideoListDataset,
    check_shots,
    collate_items,
    folder_videos,
    parse_sources,
    reds_videos,
    stable_seed,
    vid4_videos,
    vimeo_videos,
)
from hypernet.data.degrade import DegradationRanges
from hypernet.data.procedural import ProceduralConfig, procedural_video
from hypernet.data.recurrence import (
    RECURRENCE_DEGRADATION,
    SCENE_CANVAS,
    RecurrenceError,
    check_recurrence_frames,
    recurrence_scene,
    recurrence_still,
)

SOURCES = ("stills", "procedural", "recurrence", "folder", "reds", "vimeo90k", "vid4")

# The degradations of the real-size test groups, fixed here (not taken from data.degradation) so
# that every run is scored on the same videos: clean MATLAB bicubic (most users' downscales), the
# BD protocol, the per-video blur and noise the models train on by default, and clean bicubic
# through H.264 at a good and a poor quality.
REAL_DEGRADATIONS: dict[str, dict[str, Any]] = {
    "bi": {"mode": "BI"},
    "bd": {"mode": "BD"},
    "random": {"mode": "random", "blur_sigma": [0.4, 2.4], "noise_sigma": [0.0, 12 / 255]},
    **{
        f"crf{crf}": {
            "mode": "random",
            "blur_sigma": [0, 0],
            "noise_sigma": [0, 0],
            "crf": [crf, crf],
            "codec_prob": 1.0,
        }
        for crf in (23, 33)
    },
}
REAL_GROUPS = tuple(f"real_{name}" for name in REAL_DEGRADATIONS)
TEST_GROUPS = ("single", "multishot", "large", "recurrence", *REAL_GROUPS)
RECURRENCE_PHOTO_VIDEOS = 2  # recurrence videos of every held-out photograph large enough for the zoom
MAX_RECURRENCE_HR = 512  # its scenes' canvases are SCENE_CANVAS frames wide: 3072 pixels at most
# The largest HR frame side of a real-size group: a procedural scene is drawn on a canvas twice
# the frame's side, and a 4096-pixel canvas (200 MB a pyramid level) is as far as the content goes.
MAX_REAL_HR = 2048


def check_recurrence_canvas(size: int, *, option: str, videos: str, fix: str = "") -> None:
    """Recurrence videos are drawn on canvases SCENE_CANVAS frames wide: `videos`' frames of `size`
    pixels (the value of `option`) must fit MAX_RECURRENCE_HR."""
    if size > MAX_RECURRENCE_HR:
        raise ValueError(
            f"{option}={size} ({videos}): recurrence videos are drawn on canvases {SCENE_CANVAS:g} frames wide, so their "
            f"frames may be at most {MAX_RECURRENCE_HR} pixels; {fix or f'set a smaller {option}'}"
        )


def to_plain(value: Any) -> Any:
    """Hydra's config nodes as plain dicts and lists: checkpoints are read with weights_only,
    which refuses any other class."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def per_rank_batch_size(
    batch_size: int, world_size: int, *, option: str = "data.batch_size", world: str | None = None
) -> int:
    """The batch of each process. `world` says where the number of processes comes from."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{option}={batch_size!r} must be a positive int (the global batch, in videos)")
    if batch_size % world_size:
        processes = f"{world_size} = {world}" if world else f"{world_size}"
        raise ValueError(
            f"{option}={batch_size} is the global batch and must divide by the number of processes "
            f"({processes}); choose a multiple of {world_size}"
        )
    return batch_size // world_size


def check_count(option: str, value: Any, minimum: int, meaning: str) -> None:
    """A data.* option that counts something: an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        at_least = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"data.{option}={value!r} must be {at_least} ({meaning})")


def check_frame_options(
    *,
    scale: int,
    hr_size: int,
    num_frames: int,
    clip_len: int,
    context_frames: int,
    patch_size: int | None,
    fresh_videos: bool,
    fresh_training: bool,
) -> None:
    """The sizes and lengths of the videos and samples, checked together: a zero or negative one
    would otherwise fail deep inside training (empty reductions, torch.stack of nothing).
    `fresh_videos`: some split draws the built-in videos, whose frames are data.hr_size square
    and data.num_frames long; `fresh_training`: the training split does."""
    check_count(
        "hr_size", hr_size, MIN_SIZE * scale, f"HR frame side; LR frames of at least {MIN_SIZE} pixels"
    )
    if hr_size % scale:
        raise ValueError(f"data.hr_size={hr_size} must be divisible by data.scale={scale}")
    check_count("num_frames", num_frames, 1, "frames per video")
    check_count("clip_len", clip_len, 1, "consecutive frames per sample")
    check_count("context_frames", context_frames, 0, "LR frames from across the video for the hypernetwork")
    if clip_len > num_frames:
        raise ValueError(
            f"data.clip_len={clip_len} is longer than the videos (data.num_frames={num_frames}): lower it "
            "or make the videos longer"
        )
    if fresh_videos and context_frames > num_frames:
        raise ValueError(
            f"data.context_frames={context_frames} is larger than the video ({num_frames} frames, "
            "data.num_frames): lower it or make the videos longer"
        )
    if patch_size is None:
        return
    check_count("patch_size", patch_size, scale, "HR patch side, or null for whole frames")
    if patch_size % scale:
        raise ValueError(
            f"data.patch_size={patch_size} (HR pixels) must be divisible by data.scale={scale}; "
            f"try {patch_size - patch_size % scale} or {patch_size + scale - patch_size % scale}"
        )
    if fresh_training and patch_size > hr_size:
        raise ValueError(
            f"data.patch_size={patch_size} is larger than the frames it is cut from (data.hr_size={hr_size})"
        )


def check_lr_sides(sides: Any, *, scale: int, option: str, meaning: str) -> tuple[int, ...]:
    """LR frame sides given as `option` (a list): ints from MIN_SIZE up to what the built-in
    content allows (an HR side of at most MAX_REAL_HR); ValueError naming `option` otherwise."""
    sides = to_plain(sides)
    if not isinstance(sides, list | tuple):
        raise ValueError(f"{option}={sides!r} must be a list of LR frame sides, e.g. [128, 320]")
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or side < MIN_SIZE:
            raise ValueError(f"{option}={side!r} must be an int >= {MIN_SIZE} ({meaning})")
        if side * scale > MAX_REAL_HR:
            raise ValueError(
                f"{option}: {side} is larger than the content allows: a real-size video's "
                f"HR side (LR side x data.scale={scale} = {side * scale}) is at most {MAX_REAL_HR}; "
                f"use LR sides up to {MAX_REAL_HR // scale}"
            )
    return tuple(sides)


def check_real_sides(sides: Any, *, scale: int, test_source: str | None) -> tuple[int, ...]:
    """data.test_real_sides: LR frame sides, each from MIN_SIZE up to what the content allows."""
    plain = to_plain(sides)
    if isinstance(plain, list | tuple) and plain and test_source not in ("stills", "procedural"):
        raise ValueError(
            f"data.test_real_sides={list(plain)}: the real-size groups are built-in videos; "
            f"set data.test_source=stills or procedural (it is {test_source})"
        )
    return check_lr_sides(
        plain, scale=scale, option="data.test_real_sides", meaning="LR frame sides of the real-size groups"
    )


def degradation_config(*, scale: int, degradation: dict[str, Any] | None) -> DegradationConfig:
    options = dict(degradation or {})
    mode = options.pop("mode", "random")
    ranges = DegradationRanges(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    return DegradationConfig(mode=mode, scale=scale, ranges=ranges)


class VSRDataModule(L.LightningDataModule):
    def __init__(
        self,
        *,
        source: str | dict[str, float] = "stills",
        val_source: str | None = None,
        test_source: str | None = None,
        root: str | None = None,
        val_root: str | None = None,
        scale: int = 4,
        hr_size: int = 96,
        num_frames: int = 30,
        clip_len: int = 5,
        context_frames: int = 8,
        patch_size: int | None = None,  # HR patch side (BasicSR's gt_size); None = full frames
        samples_per_epoch: int = 256,
        val_videos_per_image: int = 4,
        val_videos: int = 2,
        val_procedural_videos: int = 16,
        val_recurrence: int = 0,
        test_shots: int = 0,
        test_large_hr: int | None = None,
        test_real_sides: Sequence[int] = (),
        test_real_scenes: int = 2,
        test_recurrence: int = 0,
        test_recurrence_hr: int | None = None,
        shots: int | list[int] = 1,
        procedural: dict[str, Any] | None = None,
        photo_augment: dict[str, Any] | None = None,
        zoom_range: tuple[float, float] = (0.15, 0.85),
        batch_size: int = 8,
        val_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        val_seed: int = 1234,
        degradation: dict[str, Any] | None = None,
    ):
        super().__init__()
        # kept in every checkpoint (datamodule_hyper_parameters): how the model was fed, which
        # eval, specialise and finetune read back (checkpointing.trained_inputs)
        self.save_hyperparameters(
            to_plain({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        )
        self.sources = parse_sources(source)
        source = next(iter(self.sources)) if len(self.sources) == 1 else "mix"
        for option, value in (
            ("data.source", source),
            ("data.val_source", val_source or source),
            ("data.test_source", test_source),
        ):
            if value is not None and value not in (*SOURCES, "mix"):
                raise ValueError(f"{option}={value!r} is not a known source; choose one of {list(SOURCES)}")
        if source == "vid4":
            raise ValueError(
                "data.source=vid4: Vid4 is a test set; train on another source and set data.test_source=vid4"
            )
        if val_source is None and source == "recurrence":
            raise ValueError(
                "data.source=recurrence draws training videos only: set data.val_source (e.g. procedural) to "
                "say what selects models"
            )
        for option, value in (("data.val_source", val_source), ("data.test_source", test_source)):
            if value == "recurrence":
                raise ValueError(
                    f"{option}=recurrence: recurrence draws training videos; validate on procedural scenes "
                    "(data.val_source=procedural) and test memory with data.test_recurrence"
                )
        if source not in (*FRESH_SOURCES, "mix") and root is None:
            raise ValueError(f"data.source={source} needs data.root (the dataset folder)")
        if val_source is None and source == "mix":
            raise ValueError(
                "data.source is a mix: set data.val_source (e.g. procedural) to say what selects models"
            )
        self.source = source
        self.val_source = val_source or source
        self.test_source = test_source
        self.degradation = degradation_config(scale=scale, degradation=degradation)  # checks data.scale
        splits = {*self.sources, self.val_source, test_source}
        check_frame_options(
            scale=scale,
            hr_size=hr_size,
            num_frames=num_frames,
            clip_len=clip_len,
            context_frames=context_frames,
            patch_size=patch_size,
            fresh_videos=bool(splits & set(FRESH_SOURCES)),
            fresh_training=bool(set(self.sources) & set(FRESH_SOURCES)),
        )
        for option, value, minimum, meaning in (
            ("samples_per_epoch", samples_per_epoch, 1, "training videos per epoch"),
            ("batch_size", batch_size, 1, "videos per batch, over all processes"),
            ("val_batch_size", val_batch_size, 1, "videos per evaluation batch"),
            ("val_procedural_videos", val_procedural_videos, 1, "procedural validation scenes"),
            ("val_videos_per_image", val_videos_per_image, 1, "test videos per held-out photograph"),
            ("val_videos", val_videos, 1, "videos or images of data.root held out"),
            ("test_shots", test_shots, 0, "shots of the multi-shot test videos, 0 for none"),
            ("num_workers", num_workers, 0, "data loading processes"),
        ):
            check_count(option, value, minimum, meaning)
        if samples_per_epoch < batch_size:
            raise ValueError(
                f"data.samples_per_epoch={samples_per_epoch} is fewer than data.batch_size={batch_size}: "
                "an epoch would hold no batch"
            )
        self.procedural = ProceduralConfig.from_options(procedural)
        self.photo_augment = PhotoAugment(**dict(photo_augment or {}))
        self.shots = (shots, shots) if isinstance(shots, int) else tuple(shots)
        check_shots(self.shots, num_frames=num_frames, clip_len=clip_len)
        if test_shots:
            check_shots(
                (test_shots, test_shots), num_frames=num_frames, clip_len=clip_len, option="data.test_shots"
            )
        if test_large_hr is not None:
            check_count(
                "test_large_hr", test_large_hr, MIN_SIZE * scale, "HR frame side of the large test videos"
            )
            if test_large_hr % scale:
                raise ValueError(
                    f"data.test_large_hr={test_large_hr} must be divisible by data.scale={scale}"
                )
        self.test_real_sides = check_real_sides(test_real_sides, scale=scale, test_source=test_source)
        check_count(
            "test_real_scenes", test_real_scenes, 1, "procedural scenes per side of the real-size groups"
        )
        self.test_real_scenes = test_real_scenes
        check_count(
            "test_recurrence", test_recurrence, 0, "procedural scenes of the recurrence group, 0 for none"
        )
        if test_recurrence:
            check_recurrence_frames(num_frames=num_frames, clip_len=clip_len, option="data.test_recurrence")
        if "recurrence" in self.sources:
            check_recurrence_frames(num_frames=num_frames, clip_len=clip_len, option="data.source")
        self.test_recurrence = test_recurrence
        if test_recurrence_hr is not None:
            check_count(
                "test_recurrence_hr",
                test_recurrence_hr,
                MIN_SIZE * scale,
                "HR frame side of the recurrence group",
            )
            if test_recurrence_hr % scale or test_recurrence_hr > MAX_RECURRENCE_HR:
                raise ValueError(
                    f"data.test_recurrence_hr={test_recurrence_hr} must be divisible by data.scale={scale} and at "
                    f"most {MAX_RECURRENCE_HR} (a scene is drawn {SCENE_CANVAS:g} frames wide)"
                )
        self.recurrence_hr = test_recurrence_hr or hr_size
        if test_recurrence and not test_recurrence_hr:
            check_recurrence_canvas(
                hr_size,
                option="data.hr_size",
                videos="the recurrence test group",
                fix="set data.test_recurrence_hr, the group's own frame size",
            )
        if "recurrence" in self.sources:
            check_recurrence_canvas(hr_size, option="data.hr_size", videos="recurrence training videos")
        check_count(
            "val_recurrence",
            val_recurrence,
            0,
            "recurrence videos added to the validation videos, 0 for none",
        )
        if val_recurrence:
            check_recurrence_frames(num_frames=num_frames, clip_len=clip_len, option="data.val_recurrence")
            if self.val_source not in ("procedural", "stills"):
                raise ValueError(
                    f"data.val_recurrence={val_recurrence} adds recurrence videos of data.hr_size to the validation "
                    f"batches, and data.val_source={self.val_source} videos have their own sizes: validate on "
                    "procedural or stills, or set data.val_recurrence=0"
                )
            check_recurrence_canvas(
                hr_size, option="data.hr_size", videos=f"data.val_recurrence={val_recurrence}"
            )
        self.val_recurrence = val_recurrence
        if test_recurrence and test_source is None:
            raise ValueError(
                f"data.test_recurrence={test_recurrence} scores a test group, and data.test_source is null (no test "
                "groups): set data.test_source=stills or procedural"
            )
        self.val_procedural_videos = val_procedural_videos
        self.test_shots = test_shots
        self.test_large_hr = test_large_hr
        self.root = root
        self.val_root = val_root or root
        self.val_root_given = val_root is not None
        self.hr_size = hr_size
        self.num_frames = num_frames
        self.samples_per_epoch = samples_per_epoch
        self.val_videos_per_image = val_videos_per_image
        self.val_videos = val_videos
        self.zoom_range = tuple(zoom_range)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_seed = val_seed
        lr_patch = None if patch_size is None else patch_size // scale
        self.sample = SampleConfig(clip_len=clip_len, context_frames=context_frames, patch_size=lr_patch)
        self.train_set = None
        self.val_set = None
        self.test_sets: dict[str, VideoListDataset] = {}

    @property
    def scale(self) -> int:
        return self.degradation.scale

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    @property
    def world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # ------------------------------------------------------------------ datasets
    def _file_videos(self, source: str, split: str) -> list:
        root = self.root if split == "train" else self.val_root
        if source == "reds":
            return reds_videos(root, split)
        if source == "vimeo90k":
            return vimeo_videos(root, split)
        if source == "vid4":
            return vid4_videos(root)
        return self._held_out_split(folder_videos(root), split, kind="videos")

    def _held_out_split(self, items: list, split: str, *, kind: str) -> list:
        """The training or validation part of data.root's videos or images, split by video (or
        photograph), never by frame: the last data.val_videos (by name) are held out. With a
        data.val_root of its own, each folder is whole."""
        if self.val_root_given:
            return items
        if len(items) <= self.val_videos:
            raise ValueError(
                f"data.root={self.root} holds {len(items)} {kind}; holding out data.val_videos={self.val_videos} "
                f"leaves none to train on: add {kind} or set data.val_root"
            )
        return items[: -self.val_videos] if split == "train" else items[-self.val_videos :]

    def build_train_set(self):
        if self.source in FRESH_SOURCES or self.source == "mix":
            return FreshVideoDataset(
                sources=self.sources,
                image_paths=self._stills_images("train") if "stills" in self.sources else (),
                num_samples=self.samples_per_epoch,
                num_frames=self.num_frames,
                hr_size=self.hr_size,
                sample=self.sample,
                degradation=self.degradation,
                seed=self.seed,
                zoom_range=self.zoom_range,
                procedural=self.procedural,
                photo_augment=self.photo_augment,
                shots=self.shots,
            )
        return VideoListDataset(
            self._file_videos(self.source, "train"),
            sample=self.sample,
            degradation=self.degradation,
            seed=self.seed,
            train=True,
            num_samples=self.samples_per_epoch,
        )

    def _stills_images(self, split: str) -> list[Path]:
        """Built-in photos, or the user's image folder split by image (the last val_videos held out)."""
        if split == "val" and self.val_root_given:
            return list_images(self.val_root)
        if self.root is None:
            return builtin_images(split)
        return self._held_out_split(list_images(self.root), split, kind="images")

    def held_out_stills(self, *, shots: int = 1, hr_size: int | None = None) -> list[StillsVideo]:
        """val_videos_per_image videos of every held-out photograph, seeded by val_seed: the same
        videos whatever the training seed. Photos smaller than hr_size are left out."""
        hr_size = hr_size or self.hr_size
        videos = []
        for path in self._stills_images("val"):
            pyramid = image_pyramid(load_image(path))
            if min(pyramid[0].shape[-2:]) < hr_size:
                continue
            for j in range(self.val_videos_per_image):
                seed = stable_seed(self.val_seed, path.name, j) % (2**31)
                if shots > 1 or hr_size != self.hr_size:  # other groups: other camera paths
                    seed = stable_seed(self.val_seed, path.name, j, shots, hr_size) % (2**31)
                suffix = "" if shots == 1 else f"-shots{shots}"
                suffix += "" if hr_size == self.hr_size else f"-hr{hr_size}"
                videos.append(
                    self._still_video(
                        path, pyramid, seed, hr_size, f"{path.stem}{suffix}-{seed}", shots=shots
                    )
                )
        if not videos:
            raise ValueError(
                f"no held-out photograph is at least {hr_size} pixels on its short side: lower data.test_large_hr"
            )
        return videos

    def _still_video(
        self, path: Path, pyramid: list, seed: int, frame_size: int, video_id: str, *, shots: int = 1
    ) -> StillsVideo:
        """A held-out photograph's video, as long as the data's videos, with their zoom range."""
        return StillsVideo(
            image_path=path,
            seed=seed,
            num_frames=self.num_frames,
            frame_size=frame_size,
            zoom_range=self.zoom_range,
            pyramid=pyramid,
            shots=shots,
            video_id=video_id,
        )

    def _scene(self, seed: int, frame_size: int, video_id: str, *, shots: int = 1):
        """A fixed-seed procedural scene (seed from val_seed), as long as the data's videos."""
        return procedural_video(
            seed % (2**31),
            self.procedural,
            num_frames=self.num_frames,
            frame_size=frame_size,
            zoom_range=self.zoom_range,
            shots=shots,
            video_id=video_id,
        )

    def procedural_videos(self, count: int, *, shots: int = 1) -> list:
        """count fixed-seed procedural scenes (seeded by val_seed, never drawn in training, whose
        seeds come from (seed, index))."""
        return [
            self._scene(
                stable_seed(self.val_seed, "procedural", j), self.hr_size, f"procedural-val-{j}", shots=shots
            )
            for j in range(count)
        ]

    def real_size_videos(self, *, split: str = "test") -> list:
        """The videos of the real-size groups: data.test_real_scenes procedural scenes at every LR
        side of data.test_real_sides, then (test_source=stills) each held-out photograph at the
        largest listed side it allows. `split="val"` draws other scenes from other seeds, to
        study a method on without touching the test videos (and no photographs)."""
        videos = []
        for side in self.test_real_sides:
            for j in range(self.test_real_scenes):
                video_id = f"scene{side}-{j}" if split == "test" else f"scene{side}-{split}{j}"
                videos.append(
                    self._scene(
                        stable_seed(self.val_seed, "real", split, side, j), side * self.scale, video_id
                    )
                )
        if split != "test" or self.test_source != "stills":
            return videos
        for path in self._stills_images("val"):
            pyramid = image_pyramid(load_image(path))
            allowed = [s for s in self.test_real_sides if s * self.scale <= min(pyramid[0].shape[-2:])]
            if allowed:
                side = max(allowed)
                seed = stable_seed(self.val_seed, "real", path.name) % (2**31)
                videos.append(self._still_video(path, pyramid, seed, side * self.scale, f"{path.stem}{side}"))
        return videos

    def recurrence_videos(
        self, *, split: str = "test", count: int | None = None, frame_size: int | None = None
    ) -> list:
        """The videos of the recurrence group (recurrence.py): `count` (data.test_recurrence)
        procedural scenes, then (test_source=stills) RECURRENCE_PHOTO_VIDEOS of every held-out
        photograph large enough for the zoom, all at `frame_size` (data.test_recurrence_hr, or
        data.hr_size). `split="val"` draws other scenes from other seeds (and no photographs): the
        validation videos of data.val_recurrence, and the videos to study a method on without
        touching the test videos."""
        frame_size = frame_size or self.recurrence_hr
        videos = []
        for j in range(self.test_recurrence if count is None else count):
            video_id = f"recurrence-{j}" if split == "test" else f"recurrence-{split}{j}"
            videos.append(
                recurrence_scene(
                    stable_seed(self.val_seed, "recurrence", split, j) % (2**31),
                    self.procedural,
                    num_frames=self.num_frames,
                    frame_size=frame_size,
                    video_id=video_id,
                )
            )
        if split != "test" or self.test_source != "stills":
            return videos
        for path in self._stills_images("val"):
            pyramid = image_pyramid(load_image(path))
            for j in range(RECURRENCE_PHOTO_VIDEOS):
                seed = stable_seed(self.val_seed, "recurrence", path.name, j) % (2**31)
                try:
                    video = recurrence_still(
                        path,
                        pyramid,
                        seed,
                        num_frames=self.num_frames,
                        frame_size=frame_size,
                        video_id=f"recurrence-{path.stem}-{j}",
                    )
                except RecurrenceError:
                    break  # too small for the zoom at this frame size: the scenes stand for it
                videos.append(video)
        return videos

    def recurrence_set(self, *, split: str = "test") -> VideoListDataset:
        return self.evaluation_set(
            self.recurrence_videos(split=split),
            degradation_config(scale=self.scale, degradation=RECURRENCE_DEGRADATION),
        )

    def guard_fit_videos(self, count: int, sides: Sequence[int]) -> list:
        """The videos the learned guard is fitted on (hypernet.fit_guard): seeds of their own,
        procedural scenes (even j) and training photographs (odd j; never the held-out ones) in
        turn, the pair j // 2 at LR side sides[(j // 2) % len(sides)], so each kind meets every
        side; a photograph too small for its side gives way to a scene."""
        photos, pyramids, videos = self._stills_images("train"), {}, []
        for j in range(count):
            side, seed = sides[(j // 2) % len(sides)], stable_seed(self.val_seed, "guard", j) % (2**31)
            if j % 2 and photos:
                path = photos[(j // 2) % len(photos)]
                pyramid = pyramids.setdefault(path, image_pyramid(load_image(path)))
                if side * self.scale <= min(pyramid[0].shape[-2:]):
                    videos.append(
                        self._still_video(path, pyramid, seed, side * self.scale, f"{path.stem}{side}-g{j}")
                    )
                    continue
            videos.append(self._scene(seed, side * self.scale, f"scene{side}-g{j}"))
        return videos

    def evaluation_set(
        self, videos: list, degradation: DegradationConfig | None = None, *, controls: bool = True
    ) -> VideoListDataset:
        """Evaluation clips are whole frames: no patch crop, fixed context. Without `controls`, a
        recurrence video's item holds what a training item holds (no control frames), so that it
        batches with other videos' items."""
        sample = SampleConfig(
            clip_len=self.sample.clip_len,
            context_frames=self.sample.context_frames,
            patch_size=None,
            controls=controls,
        )
        degradation = degradation or self.degradation
        return VideoListDataset(videos, sample=sample, degradation=degradation, seed=self.val_seed)

    def real_size_sets(self, *, split: str = "test") -> dict[str, VideoListDataset]:
        """One evaluation set per degradation of REAL_DEGRADATIONS, all of the same videos."""
        videos = self.real_size_videos(split=split)
        return {
            f"real_{name}": self.evaluation_set(
                videos, degradation_config(scale=self.scale, degradation=options)
            )
            for name, options in REAL_DEGRADATIONS.items()
        }

    def build_val_set(self) -> VideoListDataset:
        if self.val_source == "stills":
            videos = self.held_out_stills()
        elif self.val_source == "procedural":
            videos = self.procedural_videos(self.val_procedural_videos)
        else:
            videos = self._file_videos(self.val_source, "val")
        # recurrence videos as training draws them (half of hyper_memory's): the steps a refine
        # crossscale model takes on their close-ups count in its selection
        videos += self.recurrence_videos(split="val", count=self.val_recurrence, frame_size=self.hr_size)
        return self.evaluation_set(videos, controls=False)

    def build_test_sets(self) -> dict[str, VideoListDataset]:
        """Test groups by name: single (the main test), multishot, large, recurrence, real_*."""
        if self.test_source is None:
            return {}
        if self.test_source == "procedural":
            groups = {"single": self.procedural_videos(self.val_procedural_videos)}
        elif self.test_source == "stills":
            groups = {"single": self.held_out_stills()}
            if self.test_shots:
                groups["multishot"] = self.held_out_stills(shots=self.test_shots)
            if self.test_large_hr:
                groups["large"] = self.held_out_stills(hr_size=self.test_large_hr)
        else:
            groups = {"single": self._file_videos(self.test_source, "val")}
        sets = {name: self.evaluation_set(videos) for name, videos in groups.items()}
        if self.test_recurrence:
            sets["recurrence"] = self.recurrence_set()
        if self.test_real_sides:
            sets |= self.real_size_sets()
        return sets

    def setup(self, stage: str | None = None) -> None:
        _, world_size = self.world
        per_rank_batch_size(self.batch_size, world_size)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self.build_train_set()
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self.build_val_set()
        if not self.test_sets and stage in (None, "test"):
            self.test_sets = self.build_test_sets()

    # ------------------------------------------------------------------ loaders
    def _draw_device(self) -> torch.device | None:
        """Where procedural training scenes are drawn when not in the loader (`draw_device`), for
        the trainer's device."""
        trainer = getattr(self, "trainer", None)
        return draw_device(self.procedural, trainer.strategy.root_device if trainer is not None else None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Draw a training batch's procedural scenes on the device the batch has just reached."""
        if isinstance(batch, dict) and "planned_items" in batch:
            device = self._draw_device() or torch.device("cpu")
            items = self.train_set.draw_planned(batch["planned_items"], device=device)
            collated = default_collate(items)  # its ints (clip starts) become CPU tensors: all to the device
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collated.items()}
        return batch

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self.world
        if isinstance(self.train_set, FreshVideoDataset):
            self.train_set.defer_drawing = self._draw_device() is not None
        return DataLoader(
            self.train_set,
            batch_size=per_rank_batch_size(self.batch_size, world_size),
            sampler=FreshIndexSampler(
                num_samples=len(self.train_set),
                rank=rank,
                world_size=world_size,
                epoch_of=self._current_epoch,
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
            collate_fn=collate_items,
        )

    def val_dataloader(self) -> DataLoader:
        # every rank evaluates every held-out video: the sets are small and metrics need no gather
        return DataLoader(
            self.val_set, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers
        )

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test group, in TEST_GROUPS order (their frame sizes may differ; within a
        real-size group too, so its videos go one at a time)."""
        return [
            DataLoader(
                self.test_sets[name],
                batch_size=1 if name in REAL_GROUPS else self.val_batch_size,
                shuffle=False,
                num_workers=self.num_workers,
            )
            for name in TEST_GROUPS
            if name in self.test_sets
        ]

    @property
    def test_groups(self) -> list[str]:
        return [name for name in TEST_GROUPS if name in self.test_sets]


def build_datamodule(cfg: Any) -> VSRDataModule:
    """The data module of cfg.data; a bad option raises the data layer's own error (naming the
    option) rather than Hydra's wrapper around it."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.data)
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError):
            raise e.__cause__ from None
        raise


def check_data(cfg: Any, *, processes: int = 1, stages: Sequence[str] = ("fit", "test")) -> VSRDataModule:
    """The one home of the data checks, which train and eval call before they write anything:
    every data.* option (VSRDataModule's constructor), the global batch and the epoch against the
    number of processes, and the data folders, read now by building the datasets of `stages`: a
    missing or empty folder, one of junk files, a file where a folder belongs, a video that does
    not open. Each is one error naming the option. The data module keeps those datasets, so its
    setup() reads nothing twice."""
    datamodule = build_datamodule(cfg)
    per_rank_batch_size(datamodule.batch_size, processes, world="trainer.devices x trainer.num_nodes")
    FreshIndexSampler(num_samples=datamodule.samples_per_epoch, world_size=processes)  # splits the epoch
    for stage in stages:
        try:
            datamodule.setup(stage)
        except (ValueError, OSError) as e:
            if "data." in str(e):
                raise
            folders = [f"data.root={datamodule.root}"] if datamodule.root is not None else []
            if datamodule.val_root_given:
                folders.append(f"data.val_root={datamodule.val_root}")
            raise ValueError(f"{' / '.join(folders) or 'data'}: {e}") from e
    if "fit" in stages:
        check_draw_device(datamodule, accelerator=str(cfg.get("trainer", {}).get("accelerator", "cpu")))
    return datamodule


def draw_device(procedural: ProceduralConfig, training: torch.device | None) -> torch.device | None:
    """Where procedural training scenes are drawn when not in the loader's processes (None: there,
    on the CPU): the training device under data.procedural.device=auto when it is a GPU, or the
    device named."""
    if procedural.backend != "torch" or procedural.device == "cpu":
        return None
    if procedural.device == "auto":
        return training if training is not None and training.type == "cuda" else None
    return torch.device(procedural.device)


def check_draw_device(datamodule: VSRDataModule, *, accelerator: str) -> None:
    """Draw one training batch of procedural scenes on the GPU that will draw them (the one named
    by data.procedural.device, or under auto the training GPU), so that a batch too large for its
    memory is one line now rather than an out-of-memory error at the first step."""
    procedural = datamodule.procedural
    if not isinstance(datamodule.train_set, FreshVideoDataset) or "procedural" not in datamodule.sources:
        return
    on_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = draw_device(procedural, torch.device("cuda", torch.cuda.current_device()) if on_gpu else None)
    if device is None:
        return
    dataset = datamodule.train_set
    deferred = dataset.defer_drawing
    dataset.defer_drawing = True
    try:
        items = dataset.__getitems__(range(datamodule.batch_size))
        dataset.draw_planned(items, device=device)
    except torch.cuda.OutOfMemoryError as e:
        raise ValueError(
            f"data.batch_size={datamodule.batch_size}: a batch of procedural scenes does not fit the memory of "
            f"{device} (data.procedural.device={procedural.device}): lower data.batch_size or set "
            f"data.procedural.device=cpu ({str(e).splitlines()[0]})"
        ) from None
    finally:
        dataset.defer_drawing = deferred
        torch.cuda.empty_cache()
