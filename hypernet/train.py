"""`python -m hypernet.train experiment=...`: stage 1 (base) or stage 2 (hypernet) training.

Hydra composes the config; `run(cfg)` does the work and returns the final metrics, so tests
and scripts call it directly through Hydra's compose API. `run` is `prepare` (every check, and
everything built from the config, before anything is written: a bad option, data folder, run
folder or checkpoint raises its error, naming it) then `start` (the run's folder, training, the
test score). `main` is the command: a refused run or a bad override is one line `error: ...` and
exit code 2 with nothing written, SIGTERM exits 143 (`runs.run_command`)."""

from __future__ import annotations

import contextlib
import types
import typing
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from hypernet.checkpointing import AtomicCheckpointIO, read_checkpoint
from hypernet.data.datamodule import check_data
from hypernet.runs import (
    check_run_folder,
    end_attempt,
    launched_as_rank_zero,
    refusals,
    run_command,
    start_attempt,
    write_metrics,
    write_table_csv,
)

# ckpt_path values Lightning resolves itself (not file paths)
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")

# every rank validates every held-out video, so epoch metrics need no cross-rank reduction
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


# Lightning's DDP strategies that refuse a parameter a step leaves unused (each has a
# `<name>_find_unused_parameters_true` twin)
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def world_size(trainer_cfg: DictConfig) -> int:
    """Processes the trainer config will start (devices x nodes); 1 for 'auto' on one machine."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str):
        devices = 1 if devices == "auto" else len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, int):
        devices = len(devices)
    if devices == -1:
        import torch

        devices = max(torch.cuda.device_count(), 1)
    return devices * int(trainer_cfg.get("num_nodes", 1))


def check_config(cfg: DictConfig) -> None:
    """Errors a user can fix in the run's own options, raised before any data is read or any step
    is taken. The data.* options and folders are checked by the data module (`check_data`)."""
    try:
        from hydra.utils import get_class

        get_class(cfg.model._target_)
    except Exception:
        raise ValueError(
            f"model._target_={cfg.model._target_} is not a class that can be imported: name a base network, "
            "e.g. hypernet.models.base.WindowVSR or hypernet.models.base.RecurrentVSR (configs/model/)"
        ) from None
    if cfg.model.scale != cfg.data.scale:
        raise ValueError(
            f"model.scale={cfg.model.scale} differs from data.scale={cfg.data.scale}: the network must upscale "
            "by the factor the data was degraded with; set both to the same value (2, 3 or 4)"
        )
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an int, got {cfg.seed!r}")
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(
            f"threads={threads!r}: the training process's torch threads are an int >= 1, or null"
        )
    if "base_ckpt" in cfg.stage and not cfg.get("base_ckpt"):
        raise ValueError("stage=hyper needs base_ckpt=PATH: the stage-1 checkpoint of the base to specialise")
    refine = cfg.get("hypernet", {}).get("refine", {}).get("mode") if "base_ckpt" in cfg.stage else None
    source = cfg.data.source
    sources = [source] if isinstance(source, str) else [k for k, v in source.items() if v]
    if refine == "crossscale" and "recurrence" not in sources:
        raise ValueError(
            f"hypernet.refine.mode=crossscale takes its steps on the context's close-ups, and data.source={source} "
            "draws none: add recurrence videos, e.g. data.source={procedural: 0.5, recurrence: 0.5}"
        )
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if refine == "crossscale" and strategy in DDP_STRATEGIES and world_size(cfg.trainer) > 1:
        raise ValueError(
            f"hypernet.refine.mode=crossscale takes no step on a batch without close-ups, so its step sizes go "
            f"unused there, which trainer.strategy={strategy} refuses mid-run: set "
            f"trainer.strategy={strategy}_find_unused_parameters_true"
        )


def check_trainer(trainer: DictConfig) -> None:
    """Each trainer.* option against the type Lightning's Trainer declares for it, so that
    trainer.max_epochs=abc or +trainer.max_epoch=3 is refused now, naming the option, instead of
    failing inside fit with a traceback after the run folder is written."""
    hints = typing.get_type_hints(L.Trainer.__init__)
    for key in trainer:
        if key == "_target_":
            continue
        if key not in hints or key == "return":
            raise ValueError(f"trainer.{key} is not an option of Lightning's Trainer: check its spelling")
        if not _fits(trainer[key], hints[key]):
            raise ValueError(f"trainer.{key}={trainer[key]!r} must be {_describe(hints[key])}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type annotation (unions, literals, plain types, lists); a
    class (Accelerator, Strategy, ...) takes a config node that instantiates one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (bool, int, float, str):
        numeric = hint is float and isinstance(value, int)
        return (isinstance(value, hint) or numeric) and (hint is bool or not isinstance(value, bool))
    if origin is list:
        return isinstance(value, ListConfig | list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, DictConfig | dict)
    return isinstance(value, DictConfig)


def _describe(hint: Any) -> str:
    """A type annotation in words, for the message of a value that does not fit it."""
    words = {type(None): "null", bool: "true or false", int: "an int", float: "a number", str: "a string"}
    parts, choices = [], []
    for arg in (
        typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    ):
        if typing.get_origin(arg) is typing.Literal:
            choices += typing.get_args(arg)
        elif arg in words:
            parts.append(words[arg])
        elif typing.get_origin(arg) in (list, dict):
            parts.append(f"a {typing.get_origin(arg).__name__}")
    if choices:
        parts.append("one of " + ", ".join(repr(c) for c in choices))
    return " or ".join(parts)


def check_launch(cfg: DictConfig) -> None:
    """Lightning's `ddp` strategy starts its other processes by re-running this very command; inside
    a Hydra multirun on the basic launcher each child would run the whole sweep again."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed, not launched by Hydra
        return
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    strategy = str(cfg.trainer.get("strategy", "auto"))
    in_process_ddp = strategy.startswith("ddp") and "spawn" not in strategy and world_size(cfg.trainer) > 1
    if hydra_cfg.mode == RunMode.MULTIRUN and "BasicLauncher" in launcher and in_process_ddp:
        raise ValueError(
            f"multirun (-m) with trainer.strategy={strategy} on {world_size(cfg.trainer)} processes and Hydra's basic "
            "launcher: DDP re-launches this command for its other ranks, which would run the whole sweep again in "
            "each of them. Use hydra/launcher=slurm (one process tree per job), or trainer.strategy="
            "ddp_spawn, or launch each run of the sweep separately."
        )


def build_system(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule of cfg.stage (configs/stage/), made from its _target_ as every other
    part is; a bad option raises the system's own error rather than Hydra's wrapper around it."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(cfg.stage)
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError | TypeError | FileNotFoundError):
            raise e.__cause__ from None
        raise


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """A config group holding several `_target_` entries (loggers, callbacks) -> objects."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def score_test_videos(
    cfg: DictConfig, trainer: L.Trainer, system: L.LightningModule, datamodule: L.LightningDataModule
) -> dict[str, float]:
    """Score the test videos once, on the checkpoint validation chose (`test_ckpt`: best | last |
    a path): they choose nothing. A fresh one-process Trainer without loggers runs it, on rank 0
    only, so it works alike after ddp, ddp_spawn or one process; the figures go to metrics.json."""
    datamodule.setup("test")
    if not datamodule.test_sets:
        return {}
    choice = cfg.get("test_ckpt", "best")
    path = None if choice == "last" else choice
    if choice == "best":
        path = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
    if path is not None:
        system.load_state_dict(read_checkpoint(path, option="test_ckpt=")["state_dict"])
    tester = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        logger=False,
        callbacks=[],
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,  # refine mode takes gradient steps
    )
    metrics = {}
    for results in tester.test(system, datamodule=datamodule, verbose=False):
        metrics.update({k.split("/dataloader_idx_")[0]: float(v) for k, v in results.items()})
    return metrics


def check_system_checkpoint(path: str | Path, system: L.LightningModule, *, option: str) -> None:
    """ckpt_path (resume) and test_ckpt=PATH load into THIS run's system: the file must load as a
    Lightning checkpoint without running code (read_checkpoint) and hold the same system (same
    state_dict keys and shapes). Checked before anything is written or trained, so a wrong file is
    one error naming it."""
    checkpoint = read_checkpoint(path, option=f"{option}=")
    from hypernet.systems.common import check_layout
    from hypernet.systems.hyper_lora import HyperLoRASystem

    check_layout(checkpoint, path, option=f"{option}=")  # earlier layouts are converted once, not here
    state = checkpoint["state_dict"]
    stage = "hyper" if isinstance(system, HyperLoRASystem) else "base"
    expected = system.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        other = "hyper" if any(k.startswith(("generator.", "encoder.")) for k in state) else "base"
        hint = f" (it looks like a stage={other} checkpoint)" if other != stage else ""
        raise ValueError(
            f"{option}={path} is a checkpoint of another system{hint}, not of this stage={stage} run: "
            f"{len(missing)} weights missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}); resume with a checkpoint of a run with the same stage and model"
        )
    shapes = [
        k
        for k in expected
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        k = shapes[0]
        raise ValueError(
            f"{option}={path} was saved with another model size: {k} is {tuple(state[k].shape)} there "
            f"and {tuple(expected[k].shape)} here ({len(shapes)} weights differ); resume with the config "
            "it was trained with"
        )


def point_latest(cfg: DictConfig, output_dir: Path) -> Path | None:
    """Point `<log_dir>/<task_name>/latest` at this run's folder, so the next stage and
    `specialise` can name a checkpoint before knowing the run's time stamp, e.g.
    base_ckpt=outputs/base_content/latest/checkpoints/best.ckpt. Only for runs inside that task's
    folder (the default layout); the link is replaced atomically."""
    import os

    task = Path(cfg.paths.log_dir) / str(cfg.task_name)
    try:
        relative = output_dir.resolve().relative_to(task.resolve())
    except ValueError:
        return None
    link = task / "latest"
    tmp = task / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(relative, target_is_directory=True)
    os.replace(tmp, link)
    return link


def build_trainer(cfg: DictConfig, loggers: list[Any], callbacks: list[Any]) -> L.Trainer:
    """The Trainer of cfg.trainer; an option Lightning refuses raises its own error rather than
    Hydra's wrapper around it."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(
            cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
        )
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError | TypeError | MisconfigurationException):
            raise ValueError(f"trainer: {e.__cause__}") from None
        raise


class Prepared(NamedTuple):
    """What `prepare` built for a run, which `start` trains."""

    datamodule: L.LightningDataModule
    system: L.LightningModule
    trainer: L.Trainer
    loggers: list[Any]


def prepare(cfg: DictConfig) -> Prepared:
    """Everything that can refuse the run, before anything is written: its options, Lightning's
    trainer options, the run folder (not another run's, on the run's first process), the data
    options and folders (the data module's `check_data`, which reads them now), the checkpoints
    it names (read without running code, and of this system), then the loggers and the Trainer."""
    check_config(cfg)
    check_trainer(cfg.trainer)
    check_launch(cfg)
    if launched_as_rank_zero():  # the others find the folder the first one has begun to fill
        check_run_folder(cfg.paths.output_dir, ckpt_path=cfg.get("ckpt_path"))
    datamodule = check_data(cfg, processes=world_size(cfg.trainer))
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True)
    system = build_system(cfg)
    if cfg.get("ckpt_path") and str(cfg.ckpt_path) not in LIGHTNING_CKPT_NAMES:
        check_system_checkpoint(cfg.ckpt_path, system, option="ckpt_path")
    if str(cfg.get("test_ckpt", "best")) not in ("best", "last"):
        check_system_checkpoint(cfg.test_ckpt, system, option="test_ckpt")
    loggers = instantiate_group(cfg.get("logger"))
    trainer = build_trainer(cfg, loggers, instantiate_group(cfg.get("callbacks")))
    return Prepared(datamodule, system, trainer, loggers)


def start(cfg: DictConfig, prepared: Prepared) -> dict[str, float]:
    """Write the run's record (a new attempt in run.json), train, score the test videos, and
    record how the attempt ended: finished, failed with its error, or terminated (SIGTERM,
    Ctrl-C), so that the folder of a crash does not pass for a real run."""
    datamodule, system, trainer, loggers = prepared
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        for logger in loggers:
            logger.experiment  # noqa: B018 - starts the run, so that its id exists to be recorded
        ids = {type(lg).__name__: str(lg.version) for lg in loggers}
        start_attempt(output_dir, cfg, logger_ids=ids)

    try:
        metrics = fit_and_test(cfg, trainer, system, datamodule, output_dir)
    except BaseException as e:  # also Ctrl-C and SIGTERM: the folder must not look like a real run
        if trainer.is_global_zero:
            with contextlib.suppress(Exception):  # never hide the run's own error behind this one
                end_attempt(output_dir, e)
        raise
    if trainer.is_global_zero:
        end_attempt(output_dir)
        link = point_latest(cfg, output_dir)
        where = f" (also {link}/)" if link else ""
        print(f"run folder: {output_dir}{where}; checkpoints: best.ckpt (chosen on val), last.ckpt")
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    """Train the run of cfg and return its final metrics; a bad option, folder or checkpoint
    raises its error (naming it) before anything is written."""
    return start(cfg, prepare(cfg))


def fit_and_test(
    cfg: DictConfig,
    trainer: L.Trainer,
    system: L.LightningModule,
    datamodule: L.LightningDataModule,
    output_dir: Path,
) -> dict[str, float]:
    """Train, then score the test videos and write the run's results (rank 0)."""
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    if trainer.is_global_zero:
        metrics.update(score_test_videos(cfg, trainer, system, datamodule))
        write_metrics(output_dir, metrics)
        write_table_csv(output_dir / "val_videos.csv", system.tables.last["val"])
        if system.tables.last["test"]:
            write_table_csv(output_dir / "test_videos.csv", system.tables.last["test"])
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The task Hydra runs: a refusal in `prepare` ends the command with one line (RunRefused)
    before the run writes anything; the value is what a Hydra sweeper optimises."""
    with refusals():
        prepared = prepare(cfg)
    return start(cfg, prepared).get(cfg.get("optimized_metric", "val/psnr_y"))


def main() -> None:
    """`python -m hypernet.train ...` and the hypernet-train script (runs.run_command)."""
    run_command(hydra_main)


if __name__ == "__main__":
    main()
