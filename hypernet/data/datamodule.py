"""The LightningDataModule that Hydra configures (`configs/data/*.yaml`).

`batch_size` is the GLOBAL batch: each of the world's ranks loads batch_size / world_size,
with an error when it does not divide. Training draws fresh videos every epoch
(`FreshIndexSampler`); validation is a fixed list of held-out videos whose content (photos or
clips) never appears in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hypernet.data.camera import StillsVideo, builtin_images, image_pyramid, list_images, load_image
from hypernet.data.datasets import (
    DegradationConfig,
    FreshIndexSampler,
    FreshStillsDataset,
    SampleConfig,
    VideoListDataset,
    folder_videos,
    reds_videos,
    stable_seed,
    vid4_videos,
    vimeo_videos,
)
from hypernet.data.degrade import DegradationRanges

SOURCES = ("stills", "folder", "reds", "vimeo90k", "vid4")


def per_rank_batch_size(batch_size: int, world_size: int, *, option: str = "data.batch_size") -> int:
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"{option}={batch_size} is the global batch and must divide by the number of processes "
            f"({world_size}); choose a multiple of {world_size}"
        )
    return batch_size // world_size


def degradation_config(*, scale: int, degradation: dict[str, Any] | None) -> DegradationConfig:
    options = dict(degradation or {})
    mode = options.pop("mode", "random")
    ranges = DegradationRanges(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    return DegradationConfig(mode=mode, scale=scale, ranges=ranges)


class VSRDataModule(L.LightningDataModule):
    def __init__(
        self,
        *,
        source: str = "stills",
        val_source: str | None = None,
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
        zoom_range: tuple[float, float] = (0.15, 0.85),
        batch_size: int = 8,
        val_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        val_seed: int = 1234,
        degradation: dict[str, Any] | None = None,
    ):
        super().__init__()
        for option, value in (("data.source", source), ("data.val_source", val_source or source)):
            if value not in SOURCES:
                raise ValueError(f"{option}={value!r} is not a known source; choose one of {list(SOURCES)}")
        if source == "vid4":
            raise ValueError(
                "data.source=vid4: Vid4 is a test set; train on another source and set data.val_source=vid4"
            )
        if source != "stills" and root is None:
            raise ValueError(f"data.source={source} needs data.root (the dataset folder)")
        self.source = source
        self.val_source = val_source or source
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
        if patch_size is not None and patch_size % scale:
            raise ValueError(
                f"data.patch_size={patch_size} (HR pixels) must be divisible by data.scale={scale}"
            )
        self.degradation = degradation_config(scale=scale, degradation=degradation)
        lr_patch = None if patch_size is None else patch_size // scale
        self.sample = SampleConfig(clip_len=clip_len, context_frames=context_frames, patch_size=lr_patch)
        self.train_set = None
        self.val_set = None

    @property
    def scale(self) -> int:
        return self.degradation.scale

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
        videos = folder_videos(root)
        if self.val_root_given:  # separate folders: each one whole
            return videos
        if len(videos) <= self.val_videos:
            raise ValueError(
                f"data.root={root} holds {len(videos)} videos; holding out data.val_videos={self.val_videos} "
                "leaves none to train on: add videos or set data.val_root"
            )
        # split by video, never by frame: the last val_videos (by name) are held out
        return videos[: -self.val_videos] if split == "train" else videos[-self.val_videos :]

    def build_train_set(self):
        if self.source == "stills":
            return FreshStillsDataset(
                image_paths=self._stills_images("train"),
                num_samples=self.samples_per_epoch,
                num_frames=self.num_frames,
                hr_size=self.hr_size,
                sample=self.sample,
                degradation=self.degradation,
                seed=self.seed,
                zoom_range=self.zoom_range,
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
        images = list_images(self.root)
        if self.val_root_given:
            return images
        if len(images) <= self.val_videos:
            raise ValueError(
                f"data.root={self.root} holds {len(images)} images; holding out data.val_videos={self.val_videos} "
                "leaves none to train on: add images or set data.val_root"
            )
        return images[: -self.val_videos] if split == "train" else images[-self.val_videos :]

    def build_val_set(self) -> VideoListDataset:
        if self.val_source == "stills":
            videos = []
            for path in self._stills_images("val"):
                pyramid = image_pyramid(load_image(path))
                for j in range(self.val_videos_per_image):
                    videos.append(
                        StillsVideo(
                            image_path=path,
                            seed=stable_seed(self.val_seed, path.name, j) % (2**31),
                            num_frames=self.num_frames,
                            frame_size=self.hr_size,
                            zoom_range=self.zoom_range,
                            pyramid=pyramid,
                        )
                    )
        else:
            videos = self._file_videos(self.val_source, "val")
        # validation clips are whole frames: no patch crop, fixed context
        sample = SampleConfig(
            clip_len=self.sample.clip_len, context_frames=self.sample.context_frames, patch_size=None
        )
        return VideoListDataset(videos, sample=sample, degradation=self.degradation, seed=self.val_seed)

    def setup(self, stage: str | None = None) -> None:
        _, world_size = self.world
        per_rank_batch_size(self.batch_size, world_size)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self.build_train_set()
        if self.val_set is None:
            self.val_set = self.build_val_set()

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        rank, world_size = self.world
        return DataLoader(
            self.train_set,
            batch_size=per_rank_batch_size(self.batch_size, world_size),
            sampler=FreshIndexSampler(num_samples=len(self.train_set), rank=rank, world_size=world_size),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        # every rank evaluates every held-out video: the sets are small and metrics need no gather
        return DataLoader(
            self.val_set, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
