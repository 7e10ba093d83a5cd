"""Plain helpers the tests share (no fixtures: those live in conftest.py): the tiny Hydra
overrides of a run that takes seconds, a small moving video, composing a training config, training
a tiny stage-2 run, a stage-2 batch at those tiny shapes, the check of a refused command's one-line
error, specialise's exit code, and a signal sent to specialise mid-encode. New test files import
them with

    from tests.helpers import TINY_BASE, compose_train, one_line_error
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from hypernet.config import compose_config

REPO = Path(__file__).resolve().parent.parent

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


# a learned guard fitted quickly: the tiny data (as tests/test_eval.py's), 12 videos at LR 8 and 12
TINY_FIT_GUARD = [
    "data.hr_size=32",
    "data.num_frames=8",
    "data.clip_len=3",
    "data.context_frames=3",
    "data.val_videos_per_image=1",
    "videos=12",
    "sides=[8,12]",
]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The training config of `overrides`, its run folder at output_dir (as the entry point composes it)."""
    return compose_config("train", [*overrides, f"paths.output_dir={output_dir}"])


def train_tiny_hyper(base_ckpt: Path, output_dir: Path, *overrides: str) -> Path:
    """Train a tiny stage-2 run (TINY_BASE, TINY_HYPER and `overrides`) on base_ckpt through the real
    entry point, into output_dir; returns its last checkpoint."""
    from hypernet.train import run  # imported when a test trains, not when a test file is collected

    run(compose_train([*TINY_BASE, *TINY_HYPER, f"base_ckpt={base_ckpt}", *overrides], output_dir))
    return output_dir / "checkpoints" / "last.ckpt"


def tiny_batch(v: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A stage-2 batch of v videos at TINY_BASE and TINY_HYPER's shapes (CPU tensors): 3 frames of
    8x8 LR (x4: 32x32 HR), 3 context frames with their times, each video's degradation."""
    g = torch.Generator().manual_seed(seed)
    return {
        "context": torch.rand(v, 3, 3, 8, 8, generator=g),
        "context_times": torch.tensor([[0.1, 0.5, 0.9]] * v),
        "lr": torch.rand(v, 3, 3, 8, 8, generator=g),
        "hr": torch.rand(v, 3, 3, 32, 32, generator=g),
        # scale, blur sigma, noise sigma, crf (-1: none): what the degradation-ceiling control reads
        "degradation": torch.stack([torch.tensor([4.0, 0.5 + i, 0.01 * i, -1.0]) for i in range(v)]),
    }


def one_line_error(capsys, *names: str) -> str:
    """stderr of a refused command: one line `error: ...` holding every one of `names`."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def specialise_exit(argv: list[str]) -> int:
    """The exit code of `specialise argv`, which ends in SystemExit where main() returns figures."""
    from hypernet.specialise import main  # imported when a test runs the command

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# `specialise` whose upscale never ends: a signal comes mid-encode, with a temporary output on disk
ENDLESS_UPSCALE = """
import sys, time
import numpy as np
import hypernet.specialise as sp

def endless(base, chunks, **kwargs):
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    while True:
        yield frame
        time.sleep(0.01)

sp.upscale_frames = endless
sp.main(sys.argv[1:])
"""


def default_signals() -> None:
    """preexec_fn of a child process that is sent Ctrl-C: SIGINT back to its default. A shell starts
    background jobs (`make test &`, nohup) with SIGINT ignored, children inherit that, and Python
    then leaves it ignored, so the test would wait on a process that cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_python(args: list[str], *, cwd: Path) -> subprocess.Popen:
    """`python ARGS` as a process of its own, for tests of process behaviour (signals, exit codes,
    what is left on disk): this checkout's code, one thread, wandb off, SIGINT at its default,
    stdout and stderr captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        preexec_fn=default_signals,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_mid_encode(argv: list[str], out_dir: Path, signum: int) -> tuple[int, str]:
    """Run `specialise argv` in a real process whose upscale never ends, send it `signum` once its
    encode has begun (a temporary in out_dir), and return its exit code and stderr: how a signal
    ends a command is process behaviour, not something a call in this process can show."""
    process = start_python(["-c", ENDLESS_UPSCALE, *argv], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (out_dir.is_dir() and list(out_dir.glob(".*.tmp*"))):  # the encode has begun
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the encode never started"
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err
