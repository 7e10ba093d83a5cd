"""Shared fixtures, and fixtures only: tiny runs trained once per session, an LR video file, a
CPU with two threads, wandb never touching the network. The plain helpers (TINY_BASE,
compose_train, one_line_error, moving_texture, ...) live in tests/helpers.py; import them from
there (`from tests.helpers import ...`), never from this file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)

from hypernet.checkpointing import read_checkpoint  # noqa: E402 (after the environment is set)
from tests.helpers import (  # noqa: E402
    FPS,
    FRAMES,
    HEIGHT,
    TINY_BASE,
    TINY_FIT_GUARD,
    WIDTH,
    compose_train,
    moving_texture,
    train_tiny_hyper,
)


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
    return {"base": base_ckpt, "hyper": train_tiny_hyper(base_ckpt, out / "hyper")}


@pytest.fixture(scope="session")
def gated_checkpoint(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny stage-2 checkpoint with the generator's gates opened: adapters clearly non-zero
    (one short training run leaves them near the identity)."""
    state = read_checkpoint(tiny_checkpoints["hyper"], option="--checkpoint")
    state["state_dict"]["generator.gates"].fill_(0.5)
    path = tmp_path_factory.mktemp("gated") / "gated.ckpt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def stepping_checkpoint(gated_checkpoint, tmp_path_factory) -> Path:
    """The gated checkpoint as a crossscale model: two normalised refine steps on the close-ups
    (the options memory models train with; the blur at its initial sigma of 1)."""
    state = read_checkpoint(gated_checkpoint, option="--checkpoint")
    state["hyper_parameters"]["hypernet"]["refine"].update(
        mode="crossscale", steps=2, lr=1e-3, normalize=True
    )
    state["state_dict"]["refine.log_lr"].fill_(math.log(1e-3))  # the weights hold the step sizes
    state["state_dict"]["refine.log_blur"] = torch.zeros(())
    path = tmp_path_factory.mktemp("stepping") / "stepping.ckpt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def learned_checkpoint(gated_checkpoint, tmp_path_factory) -> Path:
    """The gated checkpoint with a learned guard fitted into it (hypernet.fit_guard on 12 small
    videos), through the entry point's prepare and fit."""
    import shutil

    from hypernet import fit_guard
    from hypernet.config import compose_config

    folder = tmp_path_factory.mktemp("learned")
    path = folder / "learned.ckpt"
    shutil.copy(gated_checkpoint, path)
    overrides = [*TINY_FIT_GUARD, f"checkpoint={path}", f"paths.output_dir={folder / 'fit'}"]
    fit_guard.fit(*fit_guard.prepare(compose_config("fit_guard", overrides)))
    return path


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
