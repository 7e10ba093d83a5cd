from pathlib import Path

import numpy as np
import pytest
import torch

from hypernet.data.camera import builtin_images
from hypernet.data.datamodule import VSRDataModule, per_rank_batch_size
from hypernet.data.datasets import (
    DegradationConfig,
    FileVideo,
    FreshIndexSampler,
    FreshVideoDataset,
    SampleConfig,
    VideoListDataset,
    spread_indices,
)
from hypernet.data.video_io import write_mp4, write_png_folder
from tests.helpers import moving_texture


def fresh_dataset(**kw) -> FreshVideoDataset:
    return FreshVideoDataset(
        image_paths=builtin_images("train")[:3],
        num_samples=8,
        num_frames=12,
        hr_size=48,
        sample=kw.pop("sample", SampleConfig(clip_len=3, context_frames=4, patch_size=8)),
        degradation=DegradationConfig(mode="random", scale=4),
        seed=kw.pop("seed", 0),
    )


def png_video(folder: Path, num_frames: int, height: int, width: int, *, seed: int) -> FileVideo:
    """A frame-folder video of a moving texture at `folder`, as the datasets read it."""
    write_png_folder(folder, moving_texture(num_frames, height, width, seed=seed))
    return FileVideo(folder)


def one_video_dataset(
    video: FileVideo, sample: SampleConfig, mode: str = "BI", **options
) -> VideoListDataset:
    """A dataset of the one video, degraded by `mode` (x4), seed 0."""
    return VideoListDataset(
        [video], sample=sample, degradation=DegradationConfig(mode=mode), seed=0, **options
    )


def fit_datamodule(**options) -> VSRDataModule:
    """A datamodule set up for fitting: clips of 3 frames, 2 context frames, batches of 2 and 4
    samples an epoch unless `options` say otherwise."""
    small = {"clip_len": 3, "context_frames": 2, "batch_size": 2, "samples_per_epoch": 4}
    dm = VSRDataModule(**{**small, **options})
    dm.setup("fit")
    return dm


def test_item_layout_and_shapes():
    item = fresh_dataset()[0]
    assert item["context"].shape == (4, 3, 12, 12)  # K full LR frames
    assert item["lr"].shape == (3, 3, 8, 8)  # N consecutive LR frames, patch-cropped
    assert item["hr"].shape == (3, 3, 32, 32)
    assert item["degradation"].ndim == 1 and isinstance(item["video_id"], str)
    for key in ("context", "lr", "hr"):
        assert item[key].min() >= 0 and item[key].max() <= 1


def test_fresh_draws_are_seeded_and_new_every_index():
    a, b = fresh_dataset(), fresh_dataset()
    assert torch.equal(a[5]["lr"], b[5]["lr"]) and a[5]["video_id"] == b[5]["video_id"]
    ids = {a[i]["video_id"] for i in range(8)}
    assert len(ids) == 8  # every index is a different video
    assert not torch.equal(fresh_dataset(seed=1)[5]["lr"], a[5]["lr"])


def test_sampler_gives_new_indices_every_epoch_and_splits_ranks():
    sampler = FreshIndexSampler(num_samples=8)
    first = list(sampler)
    sampler.set_epoch(1)
    assert first == list(range(8)) and list(sampler) == list(range(8, 16))
    ranks = [list(FreshIndexSampler(num_samples=8, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(8)) and not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="samples_per_epoch"):
        FreshIndexSampler(num_samples=7, world_size=2)


def test_context_covers_the_whole_video():
    idx = spread_indices(100, 4, None)
    assert idx == [12, 37, 62, 87]
    rng = np.random.default_rng(0)
    jittered = spread_indices(100, 4, rng)
    assert [i // 25 for i in jittered] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="data.context_frames=5.*4 frames"):
        spread_indices(4, 5, None)


def test_file_video_degradation_is_fixed_per_video(tmp_path):
    video = png_video(tmp_path / "clip", 10, 32, 40, seed=0)
    assert video.num_frames == 10 and video.hr_size == (32, 40)
    sample = SampleConfig(clip_len=3, context_frames=2, patch_size=4)
    ds = one_video_dataset(video, sample, mode="random", train=True, num_samples=6)
    items = [ds[i] for i in range(6)]
    assert all(torch.equal(it["degradation"], items[0]["degradation"]) for it in items)
    assert len({(it["start"], it["lr"].sum().item()) for it in items}) > 1  # different clips and crops


def test_bi_mode_matches_plain_bicubic(tmp_path):
    from hypernet.data.degrade import bicubic_downsample

    video = png_video(tmp_path / "clip", 6, 32, 32, seed=1)
    item = one_video_dataset(video, SampleConfig(clip_len=2, context_frames=0))[0]
    expected = (bicubic_downsample(item["hr"], 4).clamp(0, 1) * 255).round() / 255
    assert torch.allclose(item["lr"], expected, atol=1e-6)


def test_too_short_or_too_small_videos_name_the_video(tmp_path):
    video = png_video(tmp_path / "short", 3, 32, 32, seed=2)
    with pytest.raises(ValueError, match="short has 3 frames.*clip_len=5"):
        one_video_dataset(video, SampleConfig(clip_len=5, context_frames=0))[0]
    with pytest.raises(ValueError, match="short: LR frames are 8x8.*patch_size=16"):
        one_video_dataset(video, SampleConfig(clip_len=2, context_frames=0, patch_size=16))[0]


def _make_reds(root, clips):
    for name in clips:
        write_png_folder(root / "train_sharp" / name, moving_texture(8, 32, 32, seed=int(name)))


def test_reds_layout_splits_by_clip(tmp_path):
    _make_reds(tmp_path, ["000", "001", "011", "002"])
    dm = fit_datamodule(source="reds", root=str(tmp_path), patch_size=16, degradation={"mode": "BI"})
    train_ids = {v.video_id for v in dm.train_set.videos}
    val_ids = {v.video_id for v in dm.val_set.videos}
    assert train_ids == {"reds-001", "reds-002"} and val_ids == {"reds-000", "reds-011"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (2, 3, 3, 4, 4) and batch["hr"].shape == (2, 3, 3, 16, 16)
    assert batch["context"].shape == (2, 2, 3, 8, 8)


def test_vimeo_and_vid4_layouts(tmp_path):
    vimeo = tmp_path / "vimeo"
    for name in ("00001/0001", "00001/0002", "00002/0001"):
        folder = vimeo / "sequences" / name
        frames = moving_texture(7, 32, 48, seed=len(name))
        folder.mkdir(parents=True)
        from PIL import Image

        for i, frame in enumerate(frames, start=1):
            Image.fromarray(frame).save(folder / f"im{i}.png")
    (vimeo / "sep_trainlist.txt").write_text("00001/0001\n00002/0001\n")
    (vimeo / "sep_testlist.txt").write_text("00001/0002\n")
    dm = fit_datamodule(
        source="vimeo90k",
        root=str(vimeo),
        clip_len=7,
        context_frames=7,
        samples_per_epoch=2,
        degradation={"mode": "BI"},
    )
    assert len(dm.train_set.videos) == 2 and [v.video_id for v in dm.val_set.videos] == ["vimeo-00001-0002"]
    item = dm.val_set[0]
    assert item["lr"].shape == (7, 3, 8, 12) and item["hr"].shape == (7, 3, 32, 48)

    vid4 = tmp_path / "vid4"
    for name in ("calendar", "city"):
        write_png_folder(vid4 / "GT" / name, moving_texture(6, 32, 32, seed=3))
    dm = fit_datamodule(
        source="stills", val_source="vid4", val_root=str(vid4), hr_size=32, num_frames=8, samples_per_epoch=2
    )
    assert [v.video_id for v in dm.val_set.videos] == ["vid4-calendar", "vid4-city"]


def test_folder_of_videos_holds_out_whole_videos(tmp_path):
    for i in range(3):
        write_mp4(tmp_path / f"v{i}.mp4", moving_texture(8, 32, 32, seed=i), crf=10)
    write_png_folder(tmp_path / "v3_frames", moving_texture(8, 32, 32, seed=9))
    dm = fit_datamodule(source="folder", root=str(tmp_path), patch_size=16, val_videos=1, val_batch_size=1)
    assert [v.video_id for v in dm.train_set.videos] == ["v0", "v1", "v2"]
    assert [v.video_id for v in dm.val_set.videos] == ["v3_frames"]
    assert next(iter(dm.val_dataloader()))["hr"].shape == (1, 3, 3, 32, 32)


def test_datamodule_bad_options():
    with pytest.raises(ValueError, match="data.source='youtube'"):
        VSRDataModule(source="youtube")
    with pytest.raises(ValueError, match="needs data.root"):
        VSRDataModule(source="reds")
    with pytest.raises(ValueError, match="patch_size=30.*scale=4"):
        VSRDataModule(patch_size=30)
    assert per_rank_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match=r"data.batch_size=6 .* \(4\)"):
        per_rank_batch_size(6, 4)


def test_builtin_datamodule_batches():
    dm = fit_datamodule(
        hr_size=32, num_frames=8, context_frames=4, patch_size=16, val_videos_per_image=1, val_batch_size=5
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (2, 3, 3, 4, 4) and batch["context"].shape == (2, 4, 3, 8, 8)
    val = next(iter(dm.val_dataloader()))
    assert val["lr"].shape == (5, 3, 3, 8, 8) and len(val["video_id"]) == 5
    # held-out photos only
    train_photos = {p.stem for p in builtin_images("train")}
    assert not {vid.rsplit("-", 1)[0] for vid in val["video_id"]} & train_photos
