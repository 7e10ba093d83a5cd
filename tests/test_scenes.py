"""The torch backend of the procedural scenes (data.procedural.backend=torch): a video is the same
whatever batch, process or path draws it; its statistics are the PIL painter's; its options fail
with one line naming them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hypernet.data.datamodule import VSRDataModule
from hypernet.data.datasets import (
    DegradationConfig,
    FreshVideoDataset,
    SampleConfig,
    collate_items,
)
from hypernet.data.procedural import (
    FILLS,
    SHAPES,
    ProceduralConfig,
    ProceduralConfigError,
    _Painter,
    dead_leaves,
    procedural_video,
)
from hypernet.data.scenes import KINDS, RECTANGLE, SceneBatch, plan_scene
from hypernet.train import run
from tests.helpers import TINY_BASE, compose_train
from tests.test_procedural import radial_power_slope

CUDA = torch.cuda.is_available()


def procedural_set(**procedural) -> FreshVideoDataset:
    return FreshVideoDataset(
        sources={"procedural": 1.0},
        num_samples=64,
        num_frames=12,
        hr_size=48,
        sample=SampleConfig(clip_len=3, context_frames=2, patch_size=8),
        degradation=DegradationConfig(),
        seed=3,
        procedural=ProceduralConfig(**procedural),
    )


def assert_same_items(a: dict, b: dict) -> None:
    assert a["video_id"] == b["video_id"]
    for key in ("lr", "hr", "context", "context_times", "degradation"):
        assert torch.equal(a[key], b[key]), key


def test_a_video_is_the_same_whatever_batch_draws_it():
    dataset = procedural_set()
    batch = dataset.__getitems__([0, 1, 2, 3, 4, 5])
    alone = dataset[3]
    other = dataset.__getitems__([9, 3, 7])
    assert_same_items(batch[3], alone)
    assert_same_items(other[1], alone)
    assert batch[3]["lr"].shape == (3, 3, 8, 8) and batch[3]["hr"].shape == (3, 3, 32, 32)
    assert batch[3]["context"].shape == (2, 3, 12, 12)
    assert len({item["video_id"] for item in batch}) == 6
    assert (batch[0]["hr"] - batch[1]["hr"]).abs().mean() > 0.02  # other scenes, not copies


def test_a_video_is_the_same_whatever_process_draws_it():
    dataset = procedural_set()
    here = collate_items(dataset.__getitems__([4, 5, 6, 7]))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_items)
    batches = list(loader)  # items 0,1 in one worker, 2,3 in the other, ...
    there = batches[2:4]
    for key in ("lr", "hr", "context"):
        assert torch.equal(torch.cat([b[key] for b in there]), here[key]), key


def mixed_datamodule(**procedural) -> VSRDataModule:
    """Batches of 6, half photographs and half procedural scenes, its training set built."""
    datamodule = VSRDataModule(
        source={"stills": 0.5, "procedural": 0.5},
        val_source="procedural",
        hr_size=48,
        num_frames=12,
        clip_len=3,
        context_frames=2,
        patch_size=32,
        batch_size=6,
        samples_per_epoch=12,
        procedural=procedural,
    )
    datamodule.setup("fit")
    return datamodule


def test_drawing_on_the_training_device_gives_the_loaders_batch():
    """With the drawing deferred (what a GPU run does), the loader hands out plans and the data
    module's on_after_batch_transfer draws them: the same batch as drawn in the loader. Mixed with
    photographs, the items keep their places."""
    datamodule = mixed_datamodule()
    dataset = datamodule.train_set
    drawn = collate_items(dataset.__getitems__(range(6)))
    dataset.defer_drawing = True
    planned = collate_items(dataset.__getitems__(range(6)))
    assert set(planned) == {"planned_items"}
    assert 0 < sum(type(i).__name__ == "PlannedScene" for i in planned["planned_items"]) < 6
    batch = datamodule.on_after_batch_transfer(planned, 0)
    assert batch["video_id"] == drawn["video_id"]
    for key in ("lr", "hr", "context"):
        assert torch.equal(batch[key], drawn[key]), key


@pytest.mark.skipif(
    not CUDA, reason="no CUDA GPU here: the scenes are drawn on a GPU only on a machine with one"
)
def test_a_mixed_batch_drawn_on_cuda_is_the_loaders_batch_there():
    """The GPU run's path: plans from the loader, photographs' items moved to the GPU as Lightning
    moves a batch, the scenes drawn there (data.procedural.device=cuda), one batch on the GPU."""
    datamodule = mixed_datamodule(device="cuda")
    dataset = datamodule.train_set
    on_cpu = collate_items(dataset.__getitems__(range(6)))
    dataset.defer_drawing = True
    planned = collate_items(dataset.__getitems__(range(6)))["planned_items"]
    moved = [
        item
        if not isinstance(item, dict)
        else {k: v.cuda() if torch.is_tensor(v) else v for k, v in item.items()}
        for item in planned
    ]
    batch = datamodule.on_after_batch_transfer({"planned_items": moved}, 0)
    assert batch["video_id"] == on_cpu["video_id"]
    for key in ("lr", "hr", "context", "context_times", "degradation"):
        assert batch[key].device.type == "cuda", key
        assert (batch[key].cpu() - on_cpu[key]).abs().mean() < 2e-3, key


@pytest.mark.skipif(
    not CUDA, reason="no CUDA GPU here: the scenes are drawn on a GPU only on a machine with one"
)
def test_scenes_drawn_on_cuda_match_the_cpu():
    plans = [plan_scene(seed, ProceduralConfig(), num_frames=12, frame_size=48) for seed in range(4)]
    cfg = ProceduralConfig()
    requests = [(b, [0, 5, 11]) for b in range(4)]
    cpu = torch.cat(SceneBatch(plans, cfg, device="cpu").frames(requests))
    gpu = torch.cat(SceneBatch(plans, cfg, device="cuda").frames(requests)).cpu()
    assert gpu.shape == cpu.shape
    # a pixel exactly on a shape's edge may round to the other side: the mean, not every pixel
    assert (gpu - cpu).abs().mean() < 2e-3


def pil_census(seeds: range, frame: int) -> list[tuple[str, str, float]]:
    census = []
    for seed in seeds:
        painter = _Painter(np.random.default_rng(seed), ProceduralConfig(), frame=2 * frame)
        dead_leaves(painter, side=2 * frame, shapes=200)
        census += painter.census
    return census


def torch_census(seeds: range, frame: int) -> list[tuple[str, str, float]]:
    census = []
    for seed in seeds:
        shapes = plan_scene(seed, ProceduralConfig(), num_frames=2, frame_size=frame).shapes
        radius = shapes.extent[:, 0] / np.where(shapes.kind == RECTANGLE, 0.7, 1.0)
        census += [
            (KINDS[k], FILLS[f], r / frame)
            for k, f, r in zip(shapes.kind[1:], shapes.fill[1:], radius[1:], strict=True)
        ]
    return census


def shares(census: list, field: int, names: tuple[str, ...]) -> np.ndarray:
    counts = Counter(entry[field] for entry in census)
    return np.array([counts[name] for name in names]) / len(census)


def test_the_torch_and_pil_backends_draw_the_same_statistics():
    """Shape and fill shares within 0.03 (about 3 standard errors over 2,000 leaves), the size
    law's quartiles within 10%, and the power-spectrum slope of the frames within 0.3."""
    old, new = pil_census(range(10), 96), torch_census(range(10), 96)
    assert len(old) == len(new) == 2000
    assert np.abs(shares(old, 0, SHAPES) - shares(new, 0, SHAPES)).max() < 0.03
    assert np.abs(shares(old, 1, FILLS) - shares(new, 1, FILLS)).max() < 0.03
    quartiles = [np.percentile([e[2] for e in c], [25, 50, 75]) for c in (old, new)]
    assert np.allclose(quartiles[0], quartiles[1], rtol=0.1), quartiles

    slopes = {}
    for backend in ("pil", "torch"):
        cfg = ProceduralConfig(backend=backend)
        frames = [procedural_video(s, cfg, num_frames=2, frame_size=128).hr_frames([0])[0] for s in range(8)]
        slopes[backend] = float(np.mean([radial_power_slope(f.mean(0).numpy()) for f in frames]))
    assert abs(slopes["pil"] - slopes["torch"]) < 0.3, slopes


def test_bad_backend_and_device_name_the_option(tmp_path):
    with pytest.raises(ProceduralConfigError, match=r"data.procedural.backend='paint': choose one of"):
        ProceduralConfig(backend="paint")
    with pytest.raises(ProceduralConfigError, match=r"data.procedural.device='tpu'"):
        ProceduralConfig(device="tpu")
    with pytest.raises(ProceduralConfigError, match=r"data.procedural.device=cuda:7.*(no CUDA|device\(s\))"):
        ProceduralConfig(device="cuda:7")
    out = tmp_path / "run"
    for override in ("data.procedural.backend=paint", "data.procedural.device=cuda:7"):
        with pytest.raises(ValueError, match="data.procedural"):
            run(compose_train([*TINY_BASE, "data.source=procedural", override], out))
        assert not out.exists()


def test_a_batch_too_large_for_the_drawing_gpu_is_one_line_before_training(monkeypatch, tmp_path):
    """Simulated where there is no GPU: the check draws one batch on the drawing device and turns
    an out-of-memory error into an error naming data.batch_size and data.procedural.device."""
    from hypernet.data import datamodule as dm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def out_of_memory(self, items, *, device):
        assert device == torch.device("cuda", 0)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(FreshVideoDataset, "draw_planned", out_of_memory)
    cfg = compose_train([*TINY_BASE, "data.source=procedural", "trainer.accelerator=gpu"], tmp_path / "run")
    with pytest.raises(
        ValueError, match=r"data.batch_size=\d+: a batch of procedural scenes does not fit .*cuda:0"
    ):
        dm.check_data(cfg)
