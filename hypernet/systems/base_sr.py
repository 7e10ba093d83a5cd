"""Stage 1: train the base VSR network the way the field does (Charbonnier loss, AdamW with
warm-up and cosine decay, gradient clipping, optional EMA), validated per video."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hypernet.models.base import build_base, model_config
from hypernet.systems.common import (
    EMA,
    EvaluationTables,
    align_logging_step,
    bicubic_upscale,
    charbonnier,
    check_loss,
    legacy_group,
    log_image_row,
    plain,
    reject_unknown,
    side_by_side,
    split_key,
    test_group,
    video_metrics,
    warmup_cosine,
)

OPTIM_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "ema_decay")


class BaseSRSystem(L.LightningModule):
    """Built from configs/stage/base.yaml: `model` (configs/model/, the base network's class
    and arguments) and `optim` (configs/optim/base.yaml) as plain dicts, kept in the checkpoint
    so that it rebuilds the network alone."""

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        optim: Mapping[str, Any] | None = None,
        crop_border: int = 0,
        log_images: bool = True,
        nonfinite_loss: str = "raise",
        **legacy: Any,
    ):
        super().__init__()
        optim = plain(optim) if optim is not None else legacy_group(legacy, OPTIM_KEYS)
        reject_unknown(legacy, type(self).__name__)
        model = model_config(plain(model))
        self.save_hyperparameters(
            {
                "model": model,
                "optim": optim,
                "crop_border": crop_border,
                "log_images": log_images,
                "nonfinite_loss": nonfinite_loss,
            }
        )
        self.optim = optim
        self.model = build_base(model)
        self.ema = EMA(self.model, decay=optim["ema_decay"]) if optim["ema_decay"] > 0 else None
        self.tables = EvaluationTables()

    @property
    def scale(self) -> int:
        return self.model.scale

    def eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.eval_model()(lr)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        align_logging_step(checkpoint)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sr = self.model(batch["lr"])
        loss = charbonnier(sr, batch["hr"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return check_loss(
            loss, policy=self.hparams.nonfinite_loss, step=self.global_step, batch_idx=batch_idx, batch=batch
        )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, batch_idx, split="val", group="single")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate(batch, batch_idx, split="test", group=test_group(self.trainer, dataloader_idx))

    def evaluate(self, batch: dict, batch_idx: int, *, split: str, group: str) -> None:
        lr, hr = batch["lr"], batch["hr"]
        with torch.no_grad():
            sr = self.eval_model()(lr).clamp(0, 1)
        bicubic = bicubic_upscale(lr, self.scale)
        ours = video_metrics(sr, hr, crop_border=self.hparams.crop_border)
        ref = video_metrics(bicubic, hr, crop_border=self.hparams.crop_border)
        for i, video_id in enumerate(batch["video_id"]):
            self.tables.add(
                split,
                {
                    "video_id": video_id,
                    "group": group,
                    "psnr_y": ours["psnr_y"][i].item(),
                    "ssim_y": ours["ssim_y"][i].item(),
                    "psnr_rgb": ours["psnr_rgb"][i].item(),
                    "psnr_y_bicubic": ref["psnr_y"][i].item(),
                    "ssim_y_bicubic": ref["ssim_y"][i].item(),
                },
            )
        if split == "val" and batch_idx == 0 and self.hparams.log_images and not self.trainer.sanity_checking:
            t = lr.shape[1] // 2
            row = side_by_side(bicubic[0, t], sr[0, t], hr[0, t])
            log_image_row(
                self.logger,
                key="val/bicubic_sr_hr",
                row=row,
                caption=f"{batch['video_id'][0]}: bicubic | SR | HR",
                step=self.global_step,
                fallback_dir=Path(self.trainer.default_root_dir) / "images",
            )

    def on_validation_epoch_end(self) -> None:
        self.log_tables("val")

    def on_test_epoch_end(self) -> None:
        self.log_tables("test")

    def log_tables(self, split: str) -> None:
        for group, rows in self.tables.finish(split).items():
            for key in ("psnr_y", "ssim_y", "psnr_rgb", "psnr_y_bicubic", "ssim_y_bicubic"):
                value = sum(r[key] for r in rows) / len(rows)
                self.log(split_key(split, group, key), value, prog_bar=split == "val" and key == "psnr_y")

    def configure_optimizers(self):
        optim = self.optim
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim["lr"],
            weight_decay=optim["weight_decay"],
            betas=tuple(optim["betas"]),
        )
        schedule = warmup_cosine(
            warmup_steps=optim["warmup_steps"],
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_ratio=optim["min_lr_ratio"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
