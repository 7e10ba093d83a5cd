"""`make quickstart` twice picks up where it stopped: a step an earlier quickstart finished with
the same command is kept, anything after a step that ran again runs again."""

from __future__ import annotations

import json

import pytest

from hypernet import quickstart


def finished_step(folder, overrides, *, eval_step: bool = False) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test/psnr_y": 25.0}))
    if eval_step:
        (folder / "eval.json").write_text(json.dumps({"overrides": overrides}))
    else:
        attempt = {"status": "finished", "pid": 1, "host": "elsewhere", "overrides": overrides}
        (folder / "run.json").write_text(json.dumps({"seed": 0, "environment": {}, "attempts": [attempt]}))


@pytest.fixture
def commands(monkeypatch):
    """The commands quickstart would run (none is run: each 'writes' its metrics.json)."""
    ran = []

    def run(command):
        ran.append(command)
        folder = next(a.split("=", 1)[1] for a in command if a.startswith("paths.output_dir="))
        (quickstart.Path(folder) / "metrics.json").write_text(json.dumps({"test/psnr_y": 26.0}))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(quickstart.subprocess, "run", run)
    return ran


def test_a_step_finished_with_the_same_command_is_kept(tmp_path, commands):
    folder = tmp_path / "base"
    finished_step(folder, ["experiment=base_content", f"paths.output_dir={folder}"])
    metrics, kept = quickstart.step("train", ["experiment=base_content"], folder)
    assert kept and metrics == {"test/psnr_y": 25.0} and commands == []


@pytest.mark.parametrize("reason", ["other_overrides", "not_finished", "after_a_new_step"])
def test_a_step_runs_again_when_it_is_not_the_same(tmp_path, commands, reason):
    folder = tmp_path / "hyper"
    recorded = [
        "trainer.max_epochs=3" if reason == "other_overrides" else "x=1",
        f"paths.output_dir={folder}",
    ]
    finished_step(folder, recorded)
    if reason == "not_finished":
        (folder / "metrics.json").unlink()
    metrics, kept = quickstart.step("train", ["x=1"], folder, reuse=reason != "after_a_new_step")
    assert not kept and metrics == {"test/psnr_y": 26.0} and len(commands) == 1


def test_an_evaluation_is_kept_by_its_eval_json(tmp_path, commands):
    folder = tmp_path / "eval"
    finished_step(folder, ["checkpoint=c.ckpt", f"paths.output_dir={folder}"], eval_step=True)
    _, kept = quickstart.step("eval", ["checkpoint=c.ckpt"], folder)
    assert kept and commands == []
