"""Stage 1: train the base VSR network the way the field does (Charbonnier loss, AdamW with
warm-up and cosine decay, gradient clipping, optional EMA), validated per video."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hypernet.metrics import video_metrics
from hypernet.models.base import build_base
from hypernet.sr import bicubic_upscale, charbonnier
from hypernet.systems.common import EMA, EvaluationTables, SRSystem, plain


class BaseSRSystem(SRSystem):
    """Built from configs/stage/base.yaml: `model` (configs/model/, the base network's class
    and arguments) and `optim` (configs/optim/base.yaml) as plain dicts, kept in the checkpoint
    so that it rebuilds the network alone. Checkpoints of earlier layouts are converted once
    (scripts/convert_checkpoint.py), not translated here."""

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        crop_border: int = 0,
        log_images: bool = True,
        nonfinite_loss: str = "raise",
    ):
        super().__init__()
        model, optim = plain(model), plain(optim)
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

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.checked_loss(charbonnier(self.model(batch["lr"]), batch["hr"]), batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def evaluate(self, batch: dict, batch_idx: int, *, split: str, group: str) -> None:
        lr, hr = batch["lr"], batch["hr"]
        with torch.no_grad():
            sr = self.eval_model()(lr).clamp(0, 1)
        bicubic = bicubic_upscale(lr, self.scale)
        ours = video_metrics(sr, hr, crop_border=self.hparams.crop_border)
        ref = video_metrics(bicubic, hr, crop_border=self.hparams.crop_border)
        self.add_rows(
            split,
            group,
            batch["video_id"],
            {
                "psnr_y": ours["psnr_y"],
                "ssim_y": ours["ssim_y"],
                "psnr_rgb": ours["psnr_rgb"],
                "psnr_y_bicubic": ref["psnr_y"],
                "ssim_y_bicubic": ref["ssim_y"],
            },
        )
        self.log_first_images(
            split,
            batch_idx,
            key="val/bicubic_sr_hr",
            images=[bicubic, sr, hr],
            caption=f"{batch['video_id'][0]}: bicubic | SR | HR",
        )

    def log_tables(self, split: str) -> None:
        for group, rows in self.tables.finish(split).items():
            self.log_means(
                split, group, rows, ("psnr_y", "ssim_y", "psnr_rgb", "psnr_y_bicubic", "ssim_y_bicubic")
            )

    def configure_optimizers(self):
        optim = self.optim
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim["lr"],
            weight_decay=optim["weight_decay"],
            betas=tuple(optim["betas"]),
        )
        return self.with_schedule(optimizer)
