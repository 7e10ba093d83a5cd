import json
from pathlib import Path

import pytest
import torch

from hypernet.config import CONFIG_DIR
from hypernet.train import run
from tests.helpers import TINY_BASE, compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    assert cfg.model.scale == cfg.data.scale
    assert cfg.task_name == experiment


def test_stage1_run_writes_its_folder(tiny_base_cfg):
    metrics = run(tiny_base_cfg)
    out = Path(tiny_base_cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("val/psnr_y", "val/psnr_y_bicubic", "val/ssim_y", "train/loss"):
        assert key in saved
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and info["git_commit"] and "torch" in info["environment"]
    assert "data:" in (out / "config.yaml").read_text()
    rows = (out / "val_videos.csv").read_text().splitlines()
    assert rows[0].startswith("video_id,group,psnr_y") and len(rows) == 1 + 4  # the procedural selection set
    assert all(row.startswith("procedural-val-") for row in rows[1:])
    tested = (out / "test_videos.csv").read_text().splitlines()
    assert len(tested) == 1 + 5  # one video per held-out photograph, scored once on best.ckpt
    assert {row.split("-")[0] for row in tested[1:]} == {"chelsea", "coins", "gravel", "ihc", "rocket"}
    assert "test/psnr_y" in saved and "test/psnr_y_bicubic" in saved
    assert list((out / "images").glob("*.png"))  # CSV runs keep the SR crops as PNG


def test_resume_continues_identically(tmp_path):
    straight = run(compose_train([*TINY_BASE, "trainer.max_epochs=2"], tmp_path / "straight"))
    first = compose_train([*TINY_BASE, "trainer.max_epochs=1"], tmp_path / "split")
    run(first)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    resumed = run(
        compose_train([*TINY_BASE, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "split")
    )
    for key in ("val/psnr_y", "train/loss"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key
    steps = [
        torch.load(d / "checkpoints" / "last.ckpt")["global_step"]
        for d in (tmp_path / "straight", tmp_path / "split")
    ]
    assert steps[0] == steps[1] == 4  # last.ckpt follows every epoch


def test_unknown_stage_names_the_choices(tmp_path):
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=r"(?s)stage/meta.*options in .stage.:\s+base\s+hyper"):
        compose_train([*TINY_BASE, "stage=meta"], tmp_path / "bad")


def test_wandb_offline_run_keeps_metrics_and_real_images(tmp_path, monkeypatch):
    """The default logger, offline: a local run folder with the metrics and SR crops, no network."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in TINY_BASE if o != "logger=csv"] + ["logger=wandb"]
    run(compose_train(overrides, tmp_path / "run"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    images = list(runs[0].glob("files/media/images/val/*.png"))
    assert images
    pixels = np.asarray(Image.open(images[0]), dtype=np.float64)
    assert pixels.std() > 5  # a picture, not a blank (float arrays were once logged as black)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["logger_run_ids"]["WandbLogger"] in runs[0].name


def test_git_diff_holds_source_changes_only(tmp_path):
    """Results under experiments/ and outputs/ are not code: a run's git.diff leaves them out."""
    import subprocess

    from hypernet.runs import SOURCE_PATHSPEC

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    for name in ("model.py", "experiments/study/metrics.json", "outputs/run/metrics.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    for name in ("model.py", "experiments/study/metrics.json", "outputs/run/metrics.json"):
        (tmp_path / name).write_text("2\n")
    changed = [
        line
        for line in git("diff", "HEAD", "--", *SOURCE_PATHSPEC).splitlines()
        if line.startswith("diff --git")
    ]
    assert changed == ["diff --git a/model.py b/model.py"]
    assert git("status", "--porcelain", "--", *SOURCE_PATHSPEC).split() == ["M", "model.py"]


def test_a_finished_run_is_reachable_as_latest(tmp_path, capsys):
    """outputs/<task>/latest points at the newest run of the task, so the next command can name it."""
    log_dir = tmp_path / "logs"
    first = log_dir / "train" / "runs" / "one"
    cfg = compose_train([*TINY_BASE, f"paths.log_dir={log_dir}"], first)
    run(cfg)
    latest = log_dir / "train" / "latest"
    assert latest.is_symlink() and (latest / "checkpoints" / "best.ckpt").is_file()
    assert latest.resolve() == first.resolve()
    assert "checkpoints: best.ckpt" in capsys.readouterr().out
    second = log_dir / "train" / "runs" / "two"
    run(compose_train([*TINY_BASE, f"paths.log_dir={log_dir}"], second))
    assert latest.resolve() == second.resolve()


def test_threads_set_the_training_process_and_a_bad_count_names_the_option(tmp_path):
    before = torch.get_num_threads()
    try:
        run(compose_train([*TINY_BASE, "threads=1"], tmp_path / "one"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("threads=0", "threads=two"):
        with pytest.raises(ValueError, match="threads="):
            run(compose_train([*TINY_BASE, bad], tmp_path / "bad"))
        assert not (tmp_path / "bad").exists()
