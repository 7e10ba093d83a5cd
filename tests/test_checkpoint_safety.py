"""No code runs from a checkpoint: every entry point reads checkpoints with weights_only, so a
pickle carrying a payload is refused with one line naming the file, and the payload never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from hypernet.checkpointing import CheckpointError, read_checkpoint
from tests.helpers import TINY_BASE, TINY_HYPER, compose_train, one_line_error


class Payload:
    """Unpickling this creates the file `marker`: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def hostile(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """A raw pickle with a payload, and real stage-1 / stage-2 checkpoints with one added."""
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "payload_ran"
    (folder / "raw.ckpt").write_bytes(pickle.dumps({"state_dict": {}, "x": Payload(marker)}, protocol=2))
    (folder / "raw4.ckpt").write_bytes(pickle.dumps({"state_dict": {}, "x": Payload(marker)}, protocol=4))
    for stage in ("base", "hyper"):
        checkpoint = torch.load(tiny_checkpoints[stage], map_location="cpu", weights_only=True)
        checkpoint["payload"] = Payload(marker)
        torch.save(checkpoint, folder / f"{stage}.ckpt")
    return {
        "marker": marker,
        "raw": folder / "raw.ckpt",
        "raw4": folder / "raw4.ckpt",
        "base": folder / "base.ckpt",
        "hyper": folder / "hyper.ckpt",
    }


def refused(message: str, path: Path) -> None:
    """Refused naming the file: as code (a checkpoint with an object to call), or as no checkpoint at
    all (a raw pickle of a newer protocol, which the loader stops at before any object is built)."""
    assert str(path) in message and ("run as code" in message or "nothing in it was run" in message), message
    assert "weights_only" not in message and len(message.splitlines()) == 1, message


@pytest.mark.parametrize("kind", ["raw", "raw4", "base", "hyper"])
def test_read_checkpoint_refuses_a_payload_without_running_it(hostile, kind):
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(hostile[kind], option="--checkpoint")
    refused(str(error.value), hostile[kind])
    assert not hostile["marker"].exists()


@pytest.mark.parametrize("option", ["ckpt_path", "test_ckpt"])
@pytest.mark.parametrize("kind", ["raw", "raw4", "base"])
def test_train_refuses_a_payload_before_writing_anything(hostile, option, kind, tmp_path):
    from hypernet.train import run

    cfg = compose_train([*TINY_BASE, f"{option}={hostile[kind]}"], tmp_path / "run")
    with pytest.raises(ValueError) as error:
        run(cfg)
    refused(str(error.value), hostile[kind])
    assert f"{option}={hostile[kind]}" in str(error.value)
    assert not hostile["marker"].exists()
    assert not (tmp_path / "run").exists()


def test_stage2_refuses_a_base_with_a_payload(hostile, tmp_path):
    from hypernet.train import run

    cfg = compose_train([*TINY_BASE, *TINY_HYPER, f"base_ckpt={hostile['base']}"], tmp_path / "run")
    with pytest.raises(ValueError) as error:
        run(cfg)
    refused(str(error.value), hostile["base"])
    assert not hostile["marker"].exists()


def test_resume_reads_only_through_the_check(tiny_checkpoints, tmp_path, monkeypatch):
    """Lightning's own restore goes through AtomicCheckpointIO, which loads weights_only whatever
    Lightning asks for: a file swapped after the check is still not unpickled with code."""
    from hypernet.checkpointing import AtomicCheckpointIO

    calls = []
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or {"state_dict": {}}
    )
    AtomicCheckpointIO().load_checkpoint(tiny_checkpoints["base"], weights_only=False)
    assert calls == [True]


def test_command_line_tools_refuse_a_payload(hostile, video, tmp_path, capsys):
    from hypernet import finetune, specialise

    out = tmp_path / "out"
    for path in (hostile["raw"], hostile["hyper"]):
        with pytest.raises(SystemExit) as code:
            specialise.main([str(video), "-o", str(out / "x.mp4"), "--checkpoint", str(path)])
        assert code.value.code == 2
        refused(one_line_error(capsys, str(path)), path)
        assert (
            finetune.main(["--hr", str(video), "-o", str(out / "a.safetensors"), "--checkpoint", str(path)])
            == 2
        )
        refused(one_line_error(capsys, str(path)), path)
    assert not hostile["marker"].exists()
    assert not out.exists() or not any(out.iterdir())


def test_eval_refuses_a_payload(hostile, tmp_path):
    from hypernet.config import compose_config
    from hypernet.eval import run

    cfg = compose_config("eval", [f"checkpoint={hostile['hyper']}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError) as error:
        run(cfg)
    refused(str(error.value), hostile["hyper"])
    assert not hostile["marker"].exists()
