"""Pieces both LightningModules share: the non-finite loss policy, the LR schedule, validation
bookkeeping, EMA of weights, image logging that works with whichever logger is configured, and
the check that a checkpoint's saved options are in the layout the systems read."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hypernet.checkpointing import CheckpointError
from hypernet.sr import side_by_side


def plain(config: Any) -> dict[str, Any]:
    """A config node (OmegaConf, resolved) or mapping as a plain dict, as checkpoints keep it."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config)


# the parts of stage 2's `hypernet` options, each made from its `_target_` (configs/hypernet/)
HYPERNET_PARTS = ("lora", "encoder", "generator", "refine")
CONVERTER = "scripts/convert_checkpoint.py"


def outdated_layout(hparams: Mapping[str, Any]) -> str | None:
    """What in a checkpoint's saved options predates the layout this code reads, or None when
    they are current. Checkpoints of earlier layouts are converted once, by CONVERTER, rather
    than translated on every load."""
    if not hparams:
        return None  # not a system's checkpoint: whoever loads it says what it lacks
    if "optim" not in hparams:
        return "flat options, before the systems took model/optim/hypernet as groups"
    model = hparams.get("model")
    if isinstance(model, Mapping) and "_target_" not in model:
        return "the base named by model.name, before model._target_"
    hypernet = hparams.get("hypernet", {})
    if "hypernet" in hparams and (not isinstance(hypernet, Mapping) or set(hypernet) != set(HYPERNET_PARTS)):
        return f"one flat hypernet group, before its parts {'/'.join(HYPERNET_PARTS)}"
    return None


def check_layout(checkpoint: Mapping[str, Any], path: str | Path, *, option: str) -> None:
    """Refuse a checkpoint (as read_checkpoint returned it) whose options predate this code's
    layout: one error naming the file and the command that converts it. `option` names where
    the path came from, as for read_checkpoint (`ckpt_path=` or `--checkpoint`)."""
    reason = outdated_layout(checkpoint.get("hyper_parameters") or {})
    if reason is not None:
        where = f"{option}{path}" if option.endswith("=") else f"{option} {path}"
        raise CheckpointError(
            f"{where}: written in an earlier checkpoint layout ({reason}); convert it once with "
            f"`python {CONVERTER} {path} -o NEW.ckpt` and use NEW.ckpt"
        )


def warmup_cosine(*, warmup_steps: int, total_steps: int, min_ratio: float = 0.01):
    """LR multiplier: linear warm-up, then cosine decay to min_ratio at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def check_loss(
    loss: torch.Tensor, *, policy: str, step: int, batch_idx: int, batch: dict
) -> torch.Tensor | None:
    """The loss if finite. Otherwise policy "raise" stops the run with where it happened; "skip"
    returns None, which makes Lightning skip this batch's optimiser step (one process only: under
    DDP the ranks would disagree, so use "raise" there)."""
    if torch.isfinite(loss):
        return loss
    where = f"global step {step}, batch {batch_idx} (videos {list(batch.get('video_id', []))})"
    if policy == "skip":
        import warnings

        warnings.warn(f"skipping a batch whose loss is {loss.item()} at {where}", stacklevel=2)
        return None
    if policy != "raise":
        raise ValueError(f"stage.nonfinite_loss={policy!r}: choose 'raise' or 'skip'")
    raise NonFiniteLossError(
        f"the training loss is {loss.item()} at {where}; lower optim.lr, check the data, or set "
        "stage.nonfinite_loss=skip to skip such batches"
    )


class EMA(nn.Module):
    """Exponential moving average of a model's weights, kept as a frozen copy (saved with the
    checkpoint). decay 0 disables it."""

    def __init__(self, model: nn.Module, *, decay: float):
        super().__init__()
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def log_image_row(
    logger, *, key: str, row: torch.Tensor, caption: str, step: int, fallback_dir: Path | None
) -> None:
    """Log one image (C, H, W) in [0, 1] with wandb, TensorBoard, or as a PNG for CSV runs."""
    if logger is None:
        return
    row = row.detach().clamp(0, 1).cpu()
    name = type(logger).__name__
    if name == "WandbLogger":
        image = (row * 255).round().byte().permute(1, 2, 0).numpy()  # wandb reads float arrays as 0-255
        logger.log_image(key=key, images=[image], caption=[caption], step=step)
    elif name == "TensorBoardLogger":
        logger.experiment.add_image(key, row, global_step=step)
    elif fallback_dir is not None:
        import torchvision

        fallback_dir.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(row, fallback_dir / f"{key.replace('/', '_')}_step{step:07d}.png")


def split_key(split: str, group: str, key: str) -> str:
    """Logged name of a metric: "val/psnr_y"; test groups other than the main one get their own
    prefix ("test/multishot/psnr_y") so they are reported apart."""
    return f"{split}/{key}" if group == "single" else f"{split}/{group}/{key}"


class EvaluationTables:
    """Per-video rows of the validation and test passes, grouped (test: single, multishot, large),
    kept after each pass for the run's CSV tables."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {"val": [], "test": []}
        self.last: dict[str, list[dict]] = {"val": [], "test": []}

    def add(self, split: str, row: dict) -> None:
        self.rows[split].append(row)

    def finish(self, split: str) -> dict[str, list[dict]]:
        """The pass's rows by group (empty when nothing was evaluated, e.g. a sanity check)."""
        rows, self.rows[split] = self.rows[split], []
        if rows:
            self.last[split] = rows
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(row.get("group", "single"), []).append(row)
        return groups


def test_group(trainer, dataloader_idx: int) -> str:
    """Name of the test loader's group (the data module lists them in loader order)."""
    groups = getattr(getattr(trainer, "datamodule", None), "test_groups", None)
    return groups[dataloader_idx] if groups else "single"


def align_logging_step(checkpoint: dict) -> None:
    """Make a resumed run log at the same steps as an uninterrupted one (call in on_load_checkpoint).

    Lightning 2.6 adds one to its logging step (`_batches_that_stepped`) whenever it restarts,
    assuming the checkpoint was written before that counter moved; a checkpoint written at the end
    of an epoch was written after, so every curve after the resume was shifted a step. With one
    optimizer stepping every batch the counter equals the global step: store one less, which
    Lightning's increment then brings to the global step whenever the checkpoint was written."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    if "_batches_that_stepped" in loop and "global_step" in checkpoint:
        loop["_batches_that_stepped"] = max(int(checkpoint["global_step"]) - 1, 0)


class SRSystem(L.LightningModule):
    """What both stages' LightningModules share: the loss step's bookkeeping, validation and test
    through one `evaluate(batch, batch_idx, split=, group=)` of their own, per-video tables logged
    at each epoch's end (`log_tables`, with `add_rows` and `log_means`), the first validation
    batch's image row, the learning-rate schedule (`with_schedule`) and an exact resume.
    Subclasses set `self.tables` and `self.optim` and define `evaluate` and `log_tables`."""

    # the data options the checkpoint's model was trained with (checkpointing.trained_inputs);
    # None for a system not loaded from a checkpoint, or one written before they were kept
    trained_data: dict[str, Any] | None = None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        align_logging_step(checkpoint)
        self.trained_data = checkpoint.get("datamodule_hyper_parameters")

    def checked_loss(self, loss: torch.Tensor, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """Log the training loss and apply the non-finite policy (`stage.nonfinite_loss`)."""
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return check_loss(
            loss, policy=self.hparams.nonfinite_loss, step=self.global_step, batch_idx=batch_idx, batch=batch
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, batch_idx, split="val", group="single")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate(batch, batch_idx, split="test", group=test_group(self.trainer, dataloader_idx))

    def on_validation_epoch_end(self) -> None:
        self.log_tables("val")

    def on_test_epoch_end(self) -> None:
        self.log_tables("test")

    def add_rows(
        self, split: str, group: str, video_ids: list[str], columns: dict[str, torch.Tensor]
    ) -> None:
        """One table row per video of the batch: its id, its group, then each column's value for
        it (`columns`: name -> a (V,) tensor of per-video figures), in the order given."""
        for i, video_id in enumerate(video_ids):
            row = {"video_id": video_id, "group": group}
            self.tables.add(split, row | {key: values[i].item() for key, values in columns.items()})

    def log_means(self, split: str, group: str, rows: list[dict], keys: Sequence[str]) -> None:
        """The mean over `rows` of each of `keys`, logged as split/[group/]key; validation's
        psnr_y on the progress bar."""
        for key in keys:
            value = sum(r[key] for r in rows) / len(rows)
            self.log(split_key(split, group, key), value, prog_bar=split == "val" and key == "psnr_y")

    def with_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What configure_optimizers returns for `optimizer`: its learning rate warmed up over
        optim.warmup_steps, then cosine decay to optim.min_lr_ratio of it at the run's last step
        (`warmup_cosine`), stepped every batch. Both stages schedule this way."""
        schedule = warmup_cosine(
            warmup_steps=self.optim["warmup_steps"],
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_ratio=self.optim["min_lr_ratio"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def log_first_images(self, split: str, batch_idx: int, *, key: str, images: list, caption: str) -> None:
        """The middle frame of the first validation video, side by side (`images`: (V, T, C, H, W)
        each), once per validation and not during the sanity check."""
        if split != "val" or batch_idx != 0 or not self.hparams.log_images or self.trainer.sanity_checking:
            return
        t = images[0].shape[1] // 2
        log_image_row(
            self.logger,
            key=key,
            row=side_by_side(*(x[0, t] for x in images)),
            caption=caption,
            step=self.global_step,
            fallback_dir=Path(self.trainer.default_root_dir) / "images",
        )
