"""The Hydra entry points as commands: a run never replaces another run's results, run.json tells
how every attempt ended (even one killed outright), a bad option is one line `error: ...` with exit
code 2 and nothing written, SIGTERM exits 143. Process behaviour is tested on real subprocesses of
`python -m hypernet.train` / `hypernet.eval` with the tiny configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch

from hypernet import eval as evaluation
from hypernet import train
from hypernet.config import compose_config
from hypernet.runs import check_run_folder, read_run
from tests.helpers import TINY_BASE, compose_train, start_python

REPO = Path(__file__).resolve().parent.parent
# on the command line as in tests/test_scale_out.py
CLI_TINY = [o for o in TINY_BASE if not o.startswith("~callbacks.lr_monitor")]


def command(module: str, args: list[str], cwd: Path) -> subprocess.Popen:
    return start_python(["-m", f"hypernet.{module}", *args], cwd=cwd)


def refused(module: str, args: list[str], cwd: Path, *names: str) -> str:
    """Run the command, which must refuse: exit code 2 and one line `error: ...` on stderr
    naming every one of `names`, no traceback. Returns that line."""
    process = command(module, args, cwd)
    _, err = process.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# 1. a new run never replaces another run's results


@pytest.fixture
def finished_run(tiny_checkpoints, tmp_path) -> Path:
    """A copy of the session's finished tiny stage-1 run folder."""
    import shutil

    folder = tmp_path / "finished"
    shutil.copytree(tiny_checkpoints["base"].parent.parent, folder)
    return folder


def test_a_new_run_into_a_finished_runs_folder_is_refused(finished_run):
    before = snapshot(finished_run)
    with pytest.raises(ValueError) as error:
        train.run(compose_train(TINY_BASE, finished_run))
    message = str(error.value)
    assert str(finished_run) in message and "already holds a run" in message
    assert f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}" in message
    assert len(message.splitlines()) == 1
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("option", ["hydra.run.dir", "paths.output_dir"])
def test_the_command_leaves_another_runs_folder_untouched(finished_run, tmp_path, option):
    """Neither the run nor Hydra writes there: no .hydra/, no log file, every file as it was."""
    before = snapshot(finished_run)
    line = refused(
        "train", [*CLI_TINY, f"{option}={finished_run}"], tmp_path, str(finished_run), "ckpt_path="
    )
    assert "choose another folder" in line
    assert snapshot(finished_run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finished"]  # not even a default run folder


def test_folders_with_any_result_of_a_run_are_refused(tmp_path):
    """An evaluation's metrics.json, a checkpoint, a finished run: each marks a folder a new run
    would overwrite; an empty folder, or one of other files, does not. Eval writes into none that
    holds any run record."""
    for marker in ("finished", "metrics.json", "checkpoints"):
        folder = tmp_path / marker.replace(".", "_")
        (folder / "checkpoints").mkdir(parents=True)
        if marker == "finished":
            attempt = {"status": "finished", "pid": 1, "host": "elsewhere"}
            (folder / "run.json").write_text(
                json.dumps({"seed": 0, "environment": {}, "attempts": [attempt]})
            )
        elif marker == "metrics.json":
            (folder / marker).write_text("{}")
        else:
            (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
        with pytest.raises(ValueError, match=rf"{folder} .*already holds a run"):
            check_run_folder(folder)
        with pytest.raises(ValueError, match="choose another folder$"):
            check_run_folder(folder, resumable=False)  # eval cannot resume


def test_an_attempt_that_ended_before_any_result_may_start_again(tmp_path):
    """A job killed or requeued before its first checkpoint (SLURM) leaves run.json and an empty
    checkpoints/: training may start again there, and run.json keeps the ended attempt."""
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    attempt = {"status": "killed", "pid": 1, "host": "elsewhere", "started": "then"}
    (folder / "run.json").write_text(json.dumps({"seed": 0, "environment": {}, "attempts": [attempt]}))
    check_run_folder(folder)
    with pytest.raises(ValueError, match="choose another folder$"):
        check_run_folder(folder, resumable=False)
    train.run(compose_train(TINY_BASE, folder))
    record = read_run(folder)
    assert [a["status"] for a in record["attempts"]] == ["killed", "finished"]

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    check_run_folder(tmp_path / "other")
    check_run_folder(tmp_path / "new")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_run_folder(tmp_path / "a_file")


def test_eval_may_not_write_into_a_run_folder(finished_run, tiny_checkpoints, tmp_path):
    before = snapshot(finished_run)
    args = [f"checkpoint={tiny_checkpoints['hyper']}", f"hydra.run.dir={finished_run}"]
    refused("eval", args, tmp_path, str(finished_run), "already holds a run")
    assert snapshot(finished_run) == before


# ----------------------------------------------------------------------------------------------
# 2. run.json: every attempt, and how it ended


@pytest.mark.parametrize(
    ("signum", "line", "cause"),
    [
        (signal.SIGTERM, "error: terminated (SIGTERM)", "SIGTERM"),
        (signal.SIGINT, "error: interrupted (Ctrl-C)", "KeyboardInterrupt"),
    ],
)
def test_a_signal_ends_training_with_its_exit_code_and_the_run_says_terminated(signum, line, cause, tmp_path):
    """SIGTERM (a kill, a time limit) exits 143, Ctrl-C 130, each in one line: the run records
    how it ended and keeps its checkpoint to resume from."""
    out = tmp_path / "run"
    process = command("train", [*CLI_TINY, "trainer.max_epochs=1000", f"hydra.run.dir={out}"], tmp_path)
    try:
        wait_for(out / "checkpoints" / "last.ckpt", process)  # training
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    errors = [e for e in err.splitlines() if e.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(line) and "Traceback" not in err, err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "terminated" and record["error"]["type"] == cause
    assert [a["status"] for a in record["attempts"]] == ["terminated"] and record["ended"]
    assert not (out / "metrics.json").exists() and (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / ".hydra").exists() and not list(out.glob("*.log"))  # Hydra wrote nothing there


def test_a_killed_run_reads_as_killed_and_its_resume_keeps_every_attempt(tmp_path):
    out = tmp_path / "run"
    process = command("train", [*CLI_TINY, "trainer.max_epochs=1000", f"hydra.run.dir={out}"], tmp_path)
    last = out / "checkpoints" / "last.ckpt"
    try:
        wait_for(last, process)
    finally:
        process.kill()  # SIGKILL: no handler runs, run.json is left saying "running"
        process.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    killed = read_run(out)
    assert killed["status"] == "killed" and killed["pid"] == process.pid
    assert killed["host"] == socket.gethostname()

    epoch = torch.load(last, weights_only=True)["epoch"]
    train.run(compose_train([*TINY_BASE, f"trainer.max_epochs={epoch + 2}", f"ckpt_path={last}"], out))
    record = read_run(out)
    assert [a["status"] for a in record["attempts"]] == ["killed", "finished"]
    assert record["status"] == "finished" and record["pid"] == os.getpid()
    first, second = record["attempts"]
    assert first["pid"] == process.pid and second["ckpt_path"] == str(last)
    assert first["started"] <= second["started"] and second["ended"]


def test_a_run_still_running_here_is_not_resumed_in_place(tmp_path):
    """Only a process that is gone reads as killed: a live one holding the recorded id is the
    run itself (refused), unless it started after the attempt did (the id was reused)."""
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    last = folder / "checkpoints" / "last.ckpt"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        now = datetime.now().astimezone()
        attempt = {"status": "running", "pid": sleeper.pid, "host": socket.gethostname()}

        def record(started: datetime) -> None:
            (folder / "run.json").write_text(json.dumps({**attempt, "started": started.isoformat()}))

        record(now + timedelta(seconds=5))
        assert read_run(folder)["status"] == "running"
        with pytest.raises(ValueError, match=rf"still running \(process {sleeper.pid}\)"):
            check_run_folder(folder, ckpt_path=str(last))
        record(now - timedelta(hours=1))  # the live process started after this attempt
        assert read_run(folder)["status"] == "killed"
        check_run_folder(folder, ckpt_path=str(last))
    finally:
        sleeper.kill()
        sleeper.wait()
    record(now + timedelta(seconds=5))
    assert read_run(folder)["status"] == "killed"  # gone
    (folder / "run.json").write_text(json.dumps({**attempt, "host": "elsewhere"}))
    assert read_run(folder)["status"] == "running"  # another host: nothing can be known from here


def test_a_run_json_from_before_attempts_reads_as_one_attempt(tmp_path):
    old = {"status": "finished", "seed": 0, "command": "python -m hypernet.train", "environment": {}}
    (tmp_path / "run.json").write_text(json.dumps(old))
    record = read_run(tmp_path)
    assert record["attempts"] == [{"status": "finished", "command": "python -m hypernet.train"}]
    assert record["seed"] == 0


# ----------------------------------------------------------------------------------------------
# 3. and 4. bad options: one line, exit code 2, nothing written


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("data=nope", ["data=nope", "stills", "folder"]),  # Hydra: no such config
        ("nokey=1", ["nokey", "+nokey=1"]),  # Hydra: an unknown key
        ("trainer.max_epochs=abc", ["trainer.max_epochs='abc'", "an int"]),
        ("model.scale=2", ["model.scale=2", "data.scale=4"]),  # train.check_config
        ("data.hr_size=0", ["data.hr_size=0"]),
        ("data.patch_size=-64", ["data.patch_size=-64"]),
    ],
)
def test_train_refuses_a_bad_option_in_one_line_writing_nothing(override, names, tmp_path):
    """No run folder (by default outputs/train/runs/<time> under the working folder), no .hydra/,
    no log file: the working folder stays empty."""
    refused("train", [*CLI_TINY, override], tmp_path, *names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("data=nope", ["data=nope", "choose one of folder, reds, stills"]),
        ("model=nope", ["model=nope", "window"]),
        ("nokey=1", ["'nokey'", "+nokey=1"]),
        ("data.hr_size=[1", ["'data.hr_size=[1'"]),
        ("data.root", ["'data.root'"]),
    ],
)
def test_hydras_errors_read_as_one_line_naming_the_override(override, names):
    from hydra.errors import HydraException

    from hypernet.runs import one_line

    with pytest.raises(HydraException) as error:
        compose_config("train", [override])
    line = one_line(error.value)
    assert "\n" not in line and "See https" not in line, line
    for name in names:
        assert name in line, (name, line)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        (
            "data.test_real_sides=[128,1024]",
            ["data.test_real_sides", "1024", "larger than the content allows"],
        ),
        ("guard_margin=-1", ["guard_margin=-1"]),
    ],
)
def test_eval_refuses_a_real_size_too_large_or_a_bad_guard_margin(override, names, checkpoint, tmp_path):
    """Issue 20's bad inputs through the command line: one line, exit 2, nothing written."""
    refused("eval", [f"checkpoint={checkpoint}", override], tmp_path, *names)
    assert list(tmp_path.iterdir()) == []


def test_a_data_folder_without_videos_is_refused_before_anything_is_written(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a video")
    (junk / "clip.mp4").write_bytes(b"not a video either")
    work = tmp_path / "work"
    work.mkdir()
    refused("train", [*CLI_TINY, "data=folder", f"data.root={junk}"], work, "data.root=", "clip.mp4")
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # the data's sizes
        (["data.clip_len=-5"], r"data.clip_len=-5 must be a positive int"),
        (["data.clip_len=9"], r"data.clip_len=9 is longer than the videos \(data.num_frames=8\)"),
        (["data.hr_size=34"], r"data.hr_size=34 must be divisible by data.scale=4"),
        (["data.patch_size=64"], r"data.patch_size=64 is larger than .*data.hr_size=32"),
        (["data.patch_size=30"], r"data.patch_size=30 .* divisible by data.scale=4"),
        # where the data is
        (["data=folder", "data.root=EMPTY"], r"data.root=\S*empty holds no video files"),
        (["data=folder", "data.root=FILE"], r"data.root=\S*a_file is not a folder"),
        (["data.root=EMPTY"], r"data.root=\S*empty: .*holds no images"),  # the stills of a folder
        # how much of it, in batches of what size, on how many devices
        (["data.samples_per_epoch=2"], r"data.samples_per_epoch=2 is fewer than data.batch_size=4"),
        (["data.batch_size=0"], r"data.batch_size=0 must be a positive int"),
        (["data.batch_size=-2"], r"data.batch_size=-2 must be a positive int"),
        (["data.val_batch_size=0"], r"data.val_batch_size=0 must be a positive int"),
        (["trainer.devices=3"], r"data.batch_size=4 .* \(3 = trainer.devices x trainer.num_nodes\)"),
        # the trainer, the model and the stage
        (["+trainer.max_epoch=3"], r"trainer.max_epoch is not an option of Lightning's Trainer"),
        (["+trainer.precision=17"], r"trainer.precision=17 must be null or one of 64, 32, 16"),
        (["model._target_=hypernet.models.base.EDVR"], r"model._target_=hypernet.models.base.EDVR"),
        (["model.scale=2"], r"model.scale=2 differs from data.scale=4"),
        (["stage=hyper"], r"stage=hyper needs base_ckpt"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_is_written(overrides, message, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    overrides = [
        o.replace("EMPTY", str(tmp_path / "empty")).replace("FILE", str(tmp_path / "a_file"))
        for o in overrides
    ]
    with pytest.raises((ValueError, OSError), match=message) as error:  # OSError: a folder that is not one
        train.run(compose_train([*TINY_BASE, *overrides], tmp_path / "run"))
    assert len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_train_and_eval_share_the_data_checks(tiny_checkpoints, tmp_path):
    """One home for the data checks: the same bad data option is the same error in both."""
    for override in ("data.clip_len=-5", "data.hr_size=0", "data.val_batch_size=0"):
        with pytest.raises(ValueError) as trained:
            train.run(compose_train([*TINY_BASE, override], tmp_path / "train"))
        eval_cfg = compose_config(
            "eval",
            [override, f"checkpoint={tiny_checkpoints['hyper']}", f"paths.output_dir={tmp_path / 'eval'}"],
        )
        with pytest.raises(ValueError) as evaluated:
            evaluation.run(eval_cfg)
        assert str(trained.value) == str(evaluated.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("data=nope", ["data=nope", "stills"]),
        ("data.hr_size=0", ["data.hr_size=0"]),
        ("methods=[base,magic]", ["magic"]),
    ],
)
def test_eval_refuses_a_bad_option_in_one_line_writing_nothing(override, names, tiny_checkpoints, tmp_path):
    refused("eval", [override, f"checkpoint={tiny_checkpoints['hyper']}"], tmp_path, *names)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 5. library functions are not named like tests


def test_no_library_function_is_named_like_a_test():
    """pytest would collect a `test_*` function imported into a test module as a test."""
    for module in (train, evaluation):
        assert not [name for name in vars(module) if name.startswith("test_")], module.__name__
    assert callable(train.score_test_videos)
