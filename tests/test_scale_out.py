"""Several processes, sweeps, reproducibility and faults (the real CLI where it matters)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hypernet.checkpointing import AtomicCheckpointIO
from hypernet.systems.common import NonFiniteLossError
from hypernet.train import run
from tests.helpers import TINY_BASE, compose_train

REPO = Path(__file__).resolve().parent.parent
CLI_TINY = [o for o in TINY_BASE if not o.startswith("~callbacks.lr_monitor")]


def cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hypernet.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_ddp_cpu_cli_writes_one_run_folder_and_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    result = cli(["trainer=ddp_cpu", *CLI_TINY, f"hydra.run.dir={out}"], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    info = json.loads((out / "run.json").read_text())
    assert "trainer=ddp_cpu" in info["overrides"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "val/psnr_y" in metrics
    assert [p for p in tmp_path.iterdir()] == [out]  # rank 1 wrote no run folder of its own


def test_in_process_ddp_spawn(tmp_path):
    cfg = compose_train([*TINY_BASE, "trainer.strategy=ddp_spawn", "trainer.devices=2"], tmp_path / "spawn")
    metrics = run(cfg)
    assert "val/psnr_y" in metrics and (tmp_path / "spawn" / "checkpoints" / "last.ckpt").is_file()


def test_batch_size_must_divide_by_the_processes(tmp_path):
    cfg = compose_train([*TINY_BASE, "trainer=ddp_cpu", "data.batch_size=5"], tmp_path / "x")
    with pytest.raises(ValueError, match=r"data.batch_size=5 .* \(2 = trainer.devices"):
        run(cfg)


def test_multirun_with_in_process_ddp_is_refused(tmp_path):
    result = cli(["-m", "trainer=ddp_cpu", "seed=0,1", *CLI_TINY, f"hydra.sweep.dir={tmp_path}"], timeout=300)
    assert result.returncode != 0
    assert "re-launches this command" in result.stderr and "hydra/launcher=slurm" in result.stderr
    assert not list(tmp_path.glob("*/checkpoints"))


def test_same_seed_same_metrics(tmp_path):
    first = run(compose_train([*TINY_BASE, "deterministic=true"], tmp_path / "a"))
    second = run(compose_train([*TINY_BASE, "deterministic=true"], tmp_path / "b"))
    assert first == second
    third = run(compose_train([*TINY_BASE, "deterministic=true", "seed=1"], tmp_path / "c"))
    assert third["train/loss"] != first["train/loss"]


def test_sigkill_mid_training_resumes_to_the_same_metrics(tmp_path):
    longer = [*CLI_TINY, "trainer.max_epochs=4", "data.samples_per_epoch=16"]
    reference = cli([*longer, f"hydra.run.dir={tmp_path / 'whole'}"], timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypernet.train", *longer, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    assert torch.load(last)["epoch"] < 4  # a whole, loadable checkpoint from mid-training

    resumed = cli([*longer, f"hydra.run.dir={out}", f"ckpt_path={last}"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    for key in ("val/psnr_y", "val/ssim_y", "train/loss"):
        assert after[key] == pytest.approx(whole[key], rel=1e-6), key


def test_nan_loss_stops_the_run_naming_step_and_batch(tmp_path, monkeypatch):
    import hypernet.systems.base_sr as base_sr

    real = base_sr.charbonnier
    calls = {"n": 0}

    def poisoned(sr, hr):
        calls["n"] += 1
        loss = real(sr, hr)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(base_sr, "charbonnier", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"nan at global step 1, batch 1 \(videos \["):
        run(compose_train(TINY_BASE, tmp_path / "nan"))

    calls["n"] = 0
    with pytest.warns(UserWarning, match="skipping a batch"):
        metrics = run(compose_train([*TINY_BASE, "stage.nonfinite_loss=skip"], tmp_path / "skip"))
    assert metrics["val/psnr_y"] == metrics["val/psnr_y"]  # finite: the bad batch was skipped


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError, match="killed mid-save"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from hypernet.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "paths.output_dir=x",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_a_real_sweep_is_collected_into_a_table(tmp_path):
    """Hydra multirun (basic launcher, one process per job in turn) -> collect_results table and plot."""
    sweep = tmp_path / "sweep"
    result = cli(
        ["-m", *CLI_TINY, "optim.lr=0.001,0.002", "seed=0,1", f"hydra.sweep.dir={sweep}"], timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sys.path.insert(0, str(REPO / "scripts"))
    from collect_results import main as collect

    rows = collect([str(sweep), "--param", "optim.lr", "--metric", "val/psnr_y", "-o", str(tmp_path / "out")])
    assert [(r["optim.lr"], r["seeds"]) for r in rows] == [(0.001, 2), (0.002, 2)]
    jobs = [json.loads((sweep / str(i) / "metrics.json").read_text())["val/psnr_y"] for i in range(4)]
    # Hydra numbers jobs in the order of the product: (0.001, 0), (0.001, 1), (0.002, 0), (0.002, 1)
    assert rows[0]["val/psnr_y mean"] == pytest.approx((jobs[0] + jobs[1]) / 2)
    assert rows[1]["val/psnr_y std"] == pytest.approx(abs(jobs[2] - jobs[3]) / 2**0.5)
    assert (tmp_path / "out" / "plot.png").stat().st_size > 0
    assert "| optim.lr |" in (tmp_path / "out" / "results.md").read_text()


def test_resume_is_exact_with_patch_crops_and_a_schedule_across_the_resume(tmp_path, monkeypatch):
    """A run stopped after its first epoch and resumed from that epoch's last.ckpt ends with the
    same metrics as an uninterrupted run, and logs the same learning rate at the same steps: the
    resumed epoch draws that epoch's videos, not the next one's. Warm-up (6 steps) and cosine
    decay both cross the resume point (step 4)."""
    import csv

    import hypernet.systems.base_sr as base_sr

    options = [o for o in TINY_BASE if o not in ("~callbacks.lr_monitor", "trainer.max_epochs=1")]
    options += [
        "data.patch_size=16",
        "data.samples_per_epoch=16",
        "optim.warmup_steps=6",
        "trainer.max_epochs=-1",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=1",
        "seed=7",
    ]
    whole = run(compose_train(options, tmp_path / "whole"))

    class KilledError(Exception):
        pass

    def stop_in_second_epoch(self):
        if self.current_epoch == 1:
            raise KilledError

    monkeypatch.setattr(base_sr.BaseSRSystem, "on_train_epoch_start", stop_in_second_epoch, raising=False)
    with pytest.raises(KilledError):
        run(compose_train(options, tmp_path / "cut"))
    monkeypatch.undo()
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    resumed = run(compose_train([*options, f"ckpt_path={last}"], tmp_path / "cut"))
    for key in ("val/psnr_y", "val/ssim_y", "train/loss", "test/psnr_y"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key

    def learning_rates(run_dir):
        rates = {}
        for path in sorted((run_dir / "csv").glob("*/metrics.csv")):
            with path.open() as f:
                rates.update(
                    {int(r["step"]): float(r["lr-AdamW"]) for r in csv.DictReader(f) if r.get("lr-AdamW")}
                )
        return rates

    assert learning_rates(tmp_path / "cut") == pytest.approx(learning_rates(tmp_path / "whole"), rel=1e-9)
    assert sorted(learning_rates(tmp_path / "cut")) == list(range(12))
