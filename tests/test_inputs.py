"""A model is fed as it was trained: its checkpoint records the data options (context frames,
scale, sizes, degradation) beside the hypernet's own (context tile), eval and specialise read
them, and an explicit option that differs is used with one warning naming both values."""

from __future__ import annotations

import warnings

import pytest

from hypernet import eval as evaluation
from hypernet.checkpointing import InputMismatchWarning, read_checkpoint
from hypernet.config import compose_config
from hypernet.models import encoder as encoder_module
from hypernet.systems.hyper_lora import Refine
from tests.helpers import FRAMES, train_tiny_hyper

# eval on five 8-frame videos of 64x64 HR (16x16 LR), the base and the hypernet only
EVAL = ["data.hr_size=64", "data.num_frames=8", "data.val_videos_per_image=1", "methods=[base,hypernet]"]


@pytest.fixture(scope="module")
def tiled(tiny_checkpoints, tmp_path_factory):
    """A tiny stage-2 run whose encoder reads 3 context frames as 8x8 tiles."""
    out = tmp_path_factory.mktemp("tiled")
    return train_tiny_hyper(tiny_checkpoints["base"], out, "hypernet.encoder.context_tile=8")


@pytest.fixture
def encoder_reads(monkeypatch):
    """(frames in, frames out) of every call of the encoder's tiling: what it received."""
    calls = []
    original = encoder_module.tile_frames

    def recording(frames, times, tile):
        tiles, tile_times = original(frames, times, tile)
        calls.append((tuple(frames.shape), tile, tuple(tiles.shape)))
        return tiles, tile_times

    monkeypatch.setattr(encoder_module, "tile_frames", recording)
    return calls


def test_checkpoint_records_the_data_options(tiled):
    saved = read_checkpoint(tiled, option="--checkpoint")["datamodule_hyper_parameters"]
    assert saved["context_frames"] == 3 and saved["scale"] == 4 and saved["hr_size"] == 32
    assert saved["degradation"]["mode"] == "random"


def eval_cfg(checkpoint, tmp_path, *overrides):
    return compose_config(
        "eval", [*EVAL, *overrides, f"checkpoint={checkpoint}", f"paths.output_dir={tmp_path}"]
    )


def test_eval_with_no_option_reads_as_training_did(tiled, tmp_path, encoder_reads):
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputMismatchWarning)
        evaluation.run(eval_cfg(tiled, tmp_path))
    assert len(encoder_reads) == 5  # one per video
    for frames, tile, tiles in encoder_reads:
        assert frames == (1, 3, 3, 16, 16)  # the 3 context frames of training, whole LR frames
        assert tile == 8 and tiles == (1, 3 * 4, 3, 8, 8)  # read as 8x8 tiles, as in training


def test_eval_option_that_differs_is_used_with_one_warning(tiled, tmp_path, encoder_reads):
    with pytest.warns(InputMismatchWarning) as caught:
        evaluation.run(eval_cfg(tiled, tmp_path, "data.context_frames=2", "context_tile=0"))
    messages = [str(w.message) for w in caught if w.category is InputMismatchWarning]
    assert len(messages) == 2, messages
    assert "data.context_frames=2" in messages[0] and "3" in messages[0] and str(tiled) in messages[0]
    assert "context_tile=0" in messages[1] and "8" in messages[1]
    assert {call[0][1] for call in encoder_reads} == {2} and {call[1] for call in encoder_reads} == {None}


def test_eval_refuses_another_scale(tiled, tmp_path):
    with pytest.raises(ValueError, match=r"data.scale=2.*x4"):
        evaluation.run(eval_cfg(tiled, tmp_path, "data.scale=2"))


@pytest.fixture(scope="module")
def refine_checkpoint(tiny_checkpoints, tmp_path_factory):
    """A tiny stage-2 run in refine mode."""
    out = tmp_path_factory.mktemp("refine")
    return train_tiny_hyper(tiny_checkpoints["base"], out, "hypernet.refine.mode=refine")


@pytest.mark.parametrize(("given", "expected"), [(None, 3), (5, 5)])
def test_specialise_refine_steps_read_the_checkpoints_count(
    refine_checkpoint, video, tmp_path, monkeypatch, capsys, given, expected
):
    from hypernet import specialise

    seen = []
    original = Refine.forward

    def recording(self, base, adapters, context, closeups=None):
        seen.append(context.shape[1])
        return original(self, base, adapters, context, closeups)

    monkeypatch.setattr(Refine, "forward", recording)
    option = [] if given is None else ["--context-frames", str(given)]
    specialise.main(
        [
            str(video),
            "-o",
            str(tmp_path / "x.mp4"),
            "--checkpoint",
            str(refine_checkpoint),
            "--no-progress",
            *option,
        ]
    )
    assert seen == [expected] and expected <= FRAMES
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    if given is None:
        assert warned == []
    else:  # one line naming both values
        assert len(warned) == 1 and "--context-frames=5" in warned[0] and "3" in warned[0]


def test_specialise_reads_the_checkpoints_count_as_its_tiles(tiled, video, tmp_path, encoder_reads, capsys):
    """Direct mode too: the encoder gets the 3 frames spread over the video that training gave it,
    cut into the checkpoint's 8x8 tiles, and nothing warns."""
    from hypernet import specialise

    specialise.main([str(video), "-o", str(tmp_path / "x.mp4"), "--checkpoint", str(tiled), "--no-progress"])
    assert [(frames[1], tile) for frames, tile, _ in encoder_reads] == [(3, 8)]
    assert encoder_reads[0][2][-2:] == (8, 8)
    assert "warning" not in capsys.readouterr().err
