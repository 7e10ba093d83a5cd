"""Shared fixtures: small configs composed through Hydra's compose API (as the entry point
composes them), a CPU with two threads, wandb never touching the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)

from hypernet.config import compose_config  # noqa: E402 (after the environment is set)

# A stage-1 run that takes seconds: tiny frames, few samples, one epoch.
TINY_BASE = [
    "data.hr_size=32",
    "data.num_frames=8",
    "data.clip_len=3",
    "data.context_frames=0",
    "data.patch_size=null",
    "data.samples_per_epoch=8",
    "data.batch_size=4",
    "data.val_videos_per_image=1",
    "data.val_procedural_videos=4",
    "data.val_batch_size=5",
    "model.channels=8",
    "model.num_blocks=1",
    "trainer.max_epochs=1",
    "logger=csv",
    "~callbacks.rich_progress_bar",
    "~callbacks.lr_monitor",
]


# A stage-2 run on top of it that takes seconds.
TINY_HYPER = [
    "stage=hyper",
    "hypernet.encoder.dim=16",
    "hypernet.encoder.num_latents=4",
    "hypernet.encoder.num_heads=2",
    "hypernet.encoder.num_blocks=1",
    "hypernet.encoder.conv_channels=8",
    "hypernet.lora.rank=2",
    "optim=hyper",
    "data.context_frames=3",
    "data.patch_size=null",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
]


# the LR video of the command-line tests (specialise, finetune, hardening): small, with real motion
FRAMES, HEIGHT, WIDTH, FPS = 12, 16, 20, 12.0


def moving_texture(num_frames: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a random texture drifting one pixel per frame over a colour ramp: real
    motion, not noise, for tests that need a video."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width + num_frames, 3))
    ramp = np.linspace(0, 80, width)[None, :, None]
    frames = [0.6 * texture[:, t : t + width] + ramp for t in range(num_frames)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def compose_train(overrides: list[str], output_dir: Path):
    return compose_config("train", [*overrides, f"paths.output_dir={output_dir}"])


@pytest.fixture
def tiny_base_cfg(tmp_path):
    return compose_train(TINY_BASE, tmp_path / "run")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny stage-1 and stage-2 run, trained once per test session through the real entry point."""
    from hypernet.train import run

    out = tmp_path_factory.mktemp("tiny_runs")
    run(compose_train(TINY_BASE, out / "base"))
    base_ckpt = out / "base" / "checkpoints" / "last.ckpt"
    run(compose_train([*TINY_BASE, *TINY_HYPER, f"base_ckpt={base_ckpt}"], out / "hyper"))
    return {"base": base_ckpt, "hyper": out / "hyper" / "checkpoints" / "last.ckpt"}


@pytest.fixture(scope="session")
def gated_checkpoint(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny stage-2 checkpoint with the generator's gates opened: adapters clearly non-zero
    (one short training run leaves them near the identity)."""
    state = torch.load(tiny_checkpoints["hyper"], map_location="cpu", weights_only=False)
    state["state_dict"]["generator.gates"].fill_(0.5)
    path = tmp_path_factory.mktemp("gated") / "gated.ckpt"
    torch.save(state, path)
    return path


def one_line_error(capsys, *names: str) -> str:
    """stderr of a refused command: one line `error: ...` holding every one of `names`."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoints) -> Path:
    """The tiny stage-2 checkpoint of the test session."""
    return tiny_checkpoints["hyper"]


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Path:
    """An LR video file (FRAMES frames of HEIGHT x WIDTH at FPS) of a drifting texture."""
    from hypernet.data.video_io import write_mp4

    path = tmp_path_factory.mktemp("video") / "lr.mp4"
    write_mp4(path, moving_texture(FRAMES, HEIGHT, WIDTH), fps=FPS, crf=10)
    return path
