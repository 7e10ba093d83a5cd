"""Everything a run leaves in its output folder so it can be understood and rerun months later:
the resolved config, the command line, the git commit and diff, the seed, the environment's
versions, the logger's run id, and at the end `metrics.json` (a flat dict, keys as logged)."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hypernet.files import atomic_write_bytes, atomic_write_text, default_file_mode  # noqa: F401 (re-exported)

# The stage-2 checkpoint `make quickstart` writes (chosen on the validation scenes), relative to the
# repository root where the README's commands run: what specialise and finetune use by default.
DEFAULT_CHECKPOINT = Path("outputs/quickstart/hyper/checkpoints/best.ckpt")


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB.

    On Linux ``ru_maxrss`` is not clean in a subprocess: exec keeps the high-water mark of the
    parent's address space at fork time, so every child would report at least the parent's size.
    ``VmHWM`` belongs to the new address space alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


# What a run's code is: the tree without results and run outputs. A diff of the whole tree would
# carry earlier runs' committed results (and their own diffs) into every new run folder.
SOURCE_PATHSPEC = (".", ":(exclude)experiments", ":(exclude)outputs")


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout


def environment_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in (
        "torch",
        "torchvision",
        "lightning",
        "hydra-core",
        "omegaconf",
        "numpy",
        "av",
        "wandb",
        "einops",
    ):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        import torch

        versions["cuda"] = str(torch.version.cuda)
        versions["cuda_available"] = str(torch.cuda.is_available())
    except ImportError:
        pass
    return versions


def write_run_metadata(output_dir: str | Path, cfg: DictConfig, *, logger_ids: Mapping[str, str]) -> None:
    """Called on rank 0 before training."""
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    overrides = []
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without @hydra.main (tests, notebooks)
        pass
    run_info = {
        "status": "running",  # rewritten by mark_run: "finished", or "failed" with the error
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "overrides": overrides,
        "seed": int(cfg.seed),
        "git_commit": _git("rev-parse", "HEAD").strip() or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--", *SOURCE_PATHSPEC).strip()),
        "logger_run_ids": dict(logger_ids),
        "environment": environment_versions(),
    }
    atomic_write_text(output_dir / "run.json", json.dumps(run_info, indent=2))
    atomic_write_text(output_dir / "git.diff", _git("diff", "HEAD", "--", *SOURCE_PATHSPEC))


def mark_run(output_dir: str | Path, status: str, *, error: BaseException | None = None) -> None:
    """Record how the run ended in its `run.json`: "finished", or "failed" with the error's type
    and message, so that a folder left by a crash does not pass for a real run."""
    path = Path(output_dir) / "run.json"
    try:
        run_info = json.loads(path.read_text())
    except (OSError, ValueError):  # never written (not rank 0) or unreadable: nothing to mark
        return
    run_info["status"] = status
    if error is not None:
        run_info["error"] = {"type": type(error).__name__, "message": str(error)}
    atomic_write_text(path, json.dumps(run_info, indent=2))


def write_metrics(output_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    flat = {k: float(v) for k, v in metrics.items()}
    atomic_write_text(Path(output_dir) / "metrics.json", json.dumps(flat, indent=2, sort_keys=True))


def write_table_csv(path: str | Path, rows: list[Mapping[str, Any]]) -> None:
    """Rows of dicts (same keys) as CSV, numbers with 4 decimals."""
    if not rows:
        return
    keys = list(rows[0])
    lines = [",".join(keys)]
    for row in rows:
        lines.append(",".join(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    atomic_write_text(path, "\n".join(lines) + "\n")
