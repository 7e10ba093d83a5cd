"""Stage 2: train the hypernetwork that turns a whole LR video into LoRA adapters for the frozen
base, by backpropagating the base's SR loss through the generated adapters.

direct  adapters = generator(encoder(context))
refine  then k differentiable inner gradient steps on a self-supervised loss computed from the
        LR video alone (LR frames degraded once more and upscaled back by the adapted base), with
        learned per-layer step sizes; second-order (create_graph=True) unless first_order is set.

The base comes from a stage-1 checkpoint, is frozen (requires_grad False) and always in eval
mode; validation reports base vs base+hypernet per video, plus the collapse controls of
docs/design.md: `val/psnr_y_shuffled` (adapters from another video's context) and
`val/adapter_spread`.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypernet.checkpointing import read_checkpoint
from hypernet.metrics import gain_summary, video_metrics
from hypernet.models.base import build_base, model_config
from hypernet.models.encoder import DegradationEncoder, VideoEncoder, frame_times
from hypernet.models.generator import LoRAGenerator, adapter_spread
from hypernet.models.lora import Adapters, LoRASpec, find_targets
from hypernet.systems.base_sr import BaseSRSystem
from hypernet.systems.common import (
    EvaluationTables,
    SRSystem,
    adapted_sr,
    bicubic_upscale,
    charbonnier,
    legacy_group,
    plain,
    reject_unknown,
    self_supervised_loss,
    split_key,
    warmup_cosine,
)

MODES = ("direct", "refine")


def feature_layer_names(base: nn.Module, spec: LoRASpec, patterns: list[str] | None) -> list[str]:
    """The target layers whose activations the encoder reads: those matching
    hypernet.feature_layers (fnmatch patterns), or by default every target that runs when the
    base sees one frame alone (the encoder feeds it frames one by one; a recurrent base's flow
    layers need two). Fewer, earlier layers make the frozen base's pass over the context cheaper:
    it stops after the last layer read."""
    import fnmatch

    names = list(spec.names)
    if patterns is not None:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not chosen:
            raise ValueError(
                f"hypernet.feature_layers={list(patterns)} matches none of the LoRA targets {names}"
            )
        return chosen
    ran: set[str] = set()
    modules = dict(base.named_modules())
    handles = [modules[n].register_forward_hook(lambda *_, n=n: ran.add(n)) for n in names]
    try:
        with torch.no_grad():
            param = next(base.parameters())
            base(torch.zeros(1, 1, 3, 16, 16, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    return [n for n in names if n in ran]


def load_base(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The stage-1 base network (EMA weights when the run kept them) and its model config."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"base_ckpt={path} does not exist: train stage 1 first (experiment=base_quickstart)"
        )
    read_checkpoint(path, option="base_ckpt=")
    try:
        stage1 = BaseSRSystem.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError, TypeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"base_ckpt={path} is not a stage-1 (BaseSRSystem) checkpoint: {e}") from e
    return stage1.eval_model(), dict(stage1.hparams["model"])


# Parameter names of checkpoints written before the encoder and the generator shared one
# attention block and one feed-forward (models/blocks.py): old pattern -> new name. Fused q/k/v
# projections are split into to_q and to_kv (LEGACY_FUSED).
LEGACY_RENAMES = (
    (r"^encoder\.pooler\.(to_q|to_kv)\.", r"encoder.pooler.attention.\1."),
    (r"^encoder\.pooler\.out\.", "encoder.pooler.attention.to_out."),
    (r"^encoder\.blocks\.(\d+)\.proj\.", r"encoder.blocks.\1.attention.to_out."),
    (r"^(encoder\.pooler|encoder\.blocks\.\d+)\.norm_mlp\.", r"\1.feed_forward.norm."),
    (r"^(encoder\.pooler|encoder\.blocks\.\d+)\.mlp\.(0|2)\.", r"\1.feed_forward.net.\2."),
    (r"^generator\.query\.attention\.out_proj\.", "generator.query.attention.to_out."),
    (r"^generator\.query\.mlp\.0\.", "generator.query.feed_forward.norm."),
    (r"^generator\.query\.mlp\.1\.", "generator.query.feed_forward.net.0."),
    (r"^generator\.query\.mlp\.3\.", "generator.query.feed_forward.net.2."),
)
LEGACY_FUSED = (
    (r"^(encoder\.blocks\.\d+)\.qkv\.(weight|bias)$", r"\1.attention"),
    (r"^(generator\.query\.attention)\.in_proj_(weight|bias)$", r"\1"),
)


def renamed_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stage-2 state dict in today's parameter names (a current one passes unchanged): the
    same weights, the same outputs, so checkpoints of earlier studies still load."""
    renamed = {}
    for key, tensor in state.items():
        for pattern, attention in LEGACY_FUSED:
            match = re.match(pattern, key)
            if match:  # rows: q, then k and v
                prefix, kind = match.expand(attention), match.group(2)
                dim = tensor.shape[0] // 3
                renamed[f"{prefix}.to_q.{kind}"] = tensor[:dim]
                renamed[f"{prefix}.to_kv.{kind}"] = tensor[dim:]
                break
        else:
            for pattern, new in LEGACY_RENAMES:
                key = re.sub(pattern, new, key)
            renamed[key] = tensor
    return renamed


def load_hypernet(
    checkpoint: str | Path, *, map_location: str = "cpu", option: str = "--checkpoint"
) -> HyperLoRASystem:
    """A trained stage-2 system (eval mode) from its checkpoint alone: the frozen base's weights
    travel inside it, so the stage-1 checkpoint need not exist any more."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train stage 2 first (make quickstart)")
    read_checkpoint(path, option=option)
    try:
        system = HyperLoRASystem.load_from_checkpoint(
            path, map_location=map_location, base_ckpt=None, weights_only=True
        )
    except (KeyError, RuntimeError, TypeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(
            f"checkpoint {path} is not a readable stage-2 (HyperLoRASystem) checkpoint: {e}"
        ) from e
    check_finite(system, path)
    return system.eval()


def check_finite(module: nn.Module, path: Path) -> None:
    """Refuse weights holding NaN or inf (a diverged run saved them): they would make every
    frame black, silently. Names the file and the first bad tensor."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"checkpoint {path}: tensor {name!r} holds {bad} NaN or inf values (of {tensor.numel()}); "
                "the run that saved it diverged: use an earlier checkpoint or retrain"
            )


OPTIM_KEYS = ("lr", "weight_decay", "warmup_steps", "min_lr_ratio")
# hypernet options that checkpoints written before the systems took their options grouped may
# lack, because the option came later: the value that reproduces how such a checkpoint ran
LEGACY_HYPERNET_DEFAULTS = {"overrides": None, "feature_layers": None, "context_tile": None}


class HyperLoRASystem(SRSystem):
    """Built from configs/stage/hyper.yaml: the frozen base (`base_ckpt`, checked against
    `model`), `hypernet` (configs/hypernet/default.yaml: which layers get LoRA, the encoder, the
    generator, the refine mode) and `optim` (configs/optim/hyper.yaml), as plain dicts kept in
    the checkpoint so that it rebuilds the system alone."""

    def __init__(
        self,
        *,
        base_ckpt: str | None,
        model: Mapping[str, Any] | None = None,
        hypernet: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        crop_border: int = 0,
        log_images: bool = True,
        nonfinite_loss: str = "raise",
        **legacy: Any,
    ):
        super().__init__()
        optim = plain(optim) if optim is not None else legacy_group(legacy, OPTIM_KEYS)
        if hypernet is None:
            options = LEGACY_HYPERNET_DEFAULTS | legacy_group(legacy, None)
        else:
            options = plain(hypernet)
        reject_unknown(legacy, type(self).__name__)
        model = None if model is None else model_config(plain(model))
        self.save_hyperparameters(
            {
                "base_ckpt": base_ckpt,
                "model": model,
                "hypernet": options,
                "optim": optim,
                "crop_border": crop_border,
                "log_images": log_images,
                "nonfinite_loss": nonfinite_loss,
            }
        )
        self.optim = optim
        options = dict(options)
        self.mode, self.source = options.pop("mode"), options["source"]
        self.inner_steps, self.first_order = options.pop("inner_steps"), options.pop("first_order")
        inner_lr, static = options.pop("inner_lr"), options.pop("static")
        if self.mode not in MODES:
            raise ValueError(f"hypernet.mode={self.mode!r} is not known; choose one of {list(MODES)}")
        if base_ckpt is None:  # restoring a stage-2 checkpoint: the base's weights come with its state_dict
            if model is None:
                raise ValueError(
                    "stage=hyper needs base_ckpt=PATH, the stage-1 checkpoint of the base to specialise "
                    "(or, restoring a stage-2 checkpoint, the base's model config)"
                )
            base, base_model_cfg = build_base(model), model
        else:
            base, base_model_cfg = load_base(base_ckpt)
        if model is not None and model != base_model_cfg:
            raise ValueError(
                f"base_ckpt={base_ckpt} holds a base built with {base_model_cfg}, but the config's model is "
                f"{model}: use the model config of the stage-1 run (or drop the model override)"
            )
        self.base = base.requires_grad_(False).eval()
        targets = {k: options.pop(k) for k in ("targets", "exclude", "rank", "alpha", "overrides")}
        self.spec: LoRASpec = find_targets(
            self.base,
            include=list(targets["targets"]),
            exclude=list(targets["exclude"]),
            rank=targets["rank"],
            alpha=targets["alpha"],
            overrides={k: dict(v) for k, v in (targets["overrides"] or {}).items()},
        )
        # what is left are the encoder's options (models/encoder.py)
        self.encoder: nn.Module
        feature_layers = options.pop("feature_layers")
        if self.source == "degradation":  # the ceiling control: true degradation parameters, no frames
            self.encoder = DegradationEncoder(
                **{k: options[k] for k in ("dim", "num_latents", "num_heads", "num_blocks")}
            )
        else:
            layer_names = (
                feature_layer_names(self.base, self.spec, feature_layers) if self.source == "base" else ()
            )
            self.encoder = VideoEncoder(**options, base=self.base, layer_names=layer_names)
        self.generator = LoRAGenerator(
            spec=self.spec, dim=options["dim"], num_heads=options["num_heads"], static=static
        )
        # refine mode: one learned step size per layer, log-parametrised (positive)
        self.log_inner_lr = nn.Parameter(torch.full((len(self.spec.targets),), math.log(inner_lr)))
        self.tables = EvaluationTables()
        self._spreads: dict[str, list[torch.Tensor]] = {}

    # -------------------------------------------------------------- frozen base
    def train(self, mode: bool = True) -> HyperLoRASystem:
        super().train(mode)
        self.base.eval()  # never in training mode, whatever Lightning asks
        return self

    @property
    def scale(self) -> int:
        return self.base.scale

    def sr(self, lr: torch.Tensor, adapters: Adapters | None) -> torch.Tensor:
        """Training folds the adapters into per-video weights (cheaper backward); evaluation adds
        LoRA branches, exact for a zero adapter."""
        return adapted_sr(self.base, self.spec, adapters, lr, per_video_weights=self.training)

    # -------------------------------------------------------------- adapters
    def adapters_for(
        self,
        context: torch.Tensor,
        times: torch.Tensor | None = None,
        degradation: torch.Tensor | None = None,
    ) -> Adapters:
        """Adapters for V videos from their context frames (V, K, C, h, w) and times (V, K);
        the degradation-ceiling control reads `degradation` (V, P) instead."""
        if self.source == "degradation":
            if degradation is None:
                raise ValueError("hypernet.source=degradation needs each video's true degradation parameters")
            latents = self.encoder(degradation)
        else:
            latents = self.encoder(context, times)
        adapters = self.generator(latents)
        if self.mode == "refine":
            adapters = self.refine(adapters, context)
        return adapters

    @torch.no_grad()
    def adapters_from_stream(
        self, chunks: Iterable[torch.Tensor], *, num_frames: int, refine_context: torch.Tensor | None = None
    ) -> Adapters:
        """Adapters for one whole video given as LR chunks (1, n, C, h, w) in order: the encoder
        folds chunk after chunk (memory independent of the length). Refine mode takes its inner
        steps on `refine_context` (1, K, C, h, w), a few frames spread over the video."""
        if self.source == "degradation":
            raise ValueError(
                "this checkpoint is the degradation-ceiling control (hypernet.source=degradation): it reads a "
                "video's true degradation parameters, which a real video does not come with; use a blind one"
            )

        def timed(chunks: Iterable[torch.Tensor]):  # each chunk with its frames' times in the video
            start = 0
            for chunk in chunks:
                yield chunk, frame_times(num_frames, start=start, count=chunk.shape[1]).to(chunk)[None]
                start += chunk.shape[1]

        adapters = self.generator(self.encoder.encode_stream(timed(chunks)))
        if self.mode == "refine":
            if refine_context is None:
                raise ValueError("hypernet.mode=refine needs refine_context: a few LR frames of the video")
            adapters = self.refine(adapters, refine_context)
        return {k: (a.detach(), b.detach()) for k, (a, b) in adapters.items()}

    def refine(self, adapters: Adapters, context: torch.Tensor) -> Adapters:
        """k inner gradient steps on the self-supervised loss, each layer with its learned step size.
        Training differentiates through the steps (second order) unless first_order is set."""
        names = list(self.spec.names)
        step_sizes = self.log_inner_lr.exp()
        second_order = self.training and not self.first_order
        current = adapters
        for _ in range(self.inner_steps):
            with torch.enable_grad():
                # tensors outside any graph (validation) become leaves the inner loss can differentiate
                current = {
                    n: tuple(t if t.requires_grad else t.detach().requires_grad_(True) for t in current[n])
                    for n in names
                }
                flat = [t for n in names for t in current[n]]
                grads = torch.autograd.grad(
                    self_supervised_loss(self.base, self.spec, current, context),
                    flat,
                    create_graph=second_order,
                )
            if not second_order:
                grads = [g.detach() for g in grads]
            current = {
                n: (
                    current[n][0] - step_sizes[i] * grads[2 * i],
                    current[n][1] - step_sizes[i] * grads[2 * i + 1],
                )
                for i, n in enumerate(names)
            }
        return current

    # -------------------------------------------------------------- steps
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"] = renamed_legacy_keys(checkpoint["state_dict"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        adapters = self.adapters_for(batch["context"], batch["context_times"], batch["degradation"])
        return self.checked_loss(charbonnier(self.sr(batch["lr"], adapters), batch["hr"]), batch, batch_idx)

    def evaluate(self, batch: dict, batch_idx: int, *, split: str, group: str) -> None:
        lr, hr = batch["lr"], batch["hr"]
        adapters = self.adapters_for(batch["context"], batch["context_times"], batch["degradation"])
        adapters = {k: (a.detach(), b.detach()) for k, (a, b) in adapters.items()}
        with torch.no_grad():
            sr = self.sr(lr, adapters).clamp(0, 1)
            base_sr = self.sr(lr, None).clamp(0, 1)
            # each video with the adapters of another video's context: equal to `sr` = not per-video
            shuffled = {k: (a.roll(1, 0), b.roll(1, 0)) for k, (a, b) in adapters.items()}
            shuffled_sr = self.sr(lr, shuffled).clamp(0, 1)
        bicubic = bicubic_upscale(lr, self.scale)
        border = self.hparams.crop_border
        ours, base, shuf, bic = (
            video_metrics(x, hr, crop_border=border) for x in (sr, base_sr, shuffled_sr, bicubic)
        )
        if lr.shape[0] > 1:
            self._spreads.setdefault(f"{split}/{group}", []).append(adapter_spread(self.spec, adapters))
        for i, video_id in enumerate(batch["video_id"]):
            self.tables.add(
                split,
                {
                    "video_id": video_id,
                    "group": group,
                    "psnr_y": ours["psnr_y"][i].item(),
                    "psnr_y_base": base["psnr_y"][i].item(),
                    "gain_y": (ours["psnr_y"][i] - base["psnr_y"][i]).item(),
                    "psnr_y_shuffled": shuf["psnr_y"][i].item(),
                    "psnr_y_bicubic": bic["psnr_y"][i].item(),
                    "ssim_y": ours["ssim_y"][i].item(),
                    "ssim_y_base": base["ssim_y"][i].item(),
                },
            )
        self.log_first_images(
            split,
            batch_idx,
            key="val/bicubic_base_hyper_hr",
            images=[bicubic, base_sr, sr, hr],
            caption=f"{batch['video_id'][0]}: bicubic | base | base+hypernet | HR",
        )

    def log_tables(self, split: str) -> None:
        spreads = {k: v for k, v in self._spreads.items() if k.startswith(f"{split}/")}
        for key in spreads:
            del self._spreads[key]
        for group, rows in self.tables.finish(split).items():
            n = len(rows)
            for key in (
                "psnr_y",
                "psnr_y_base",
                "psnr_y_shuffled",
                "psnr_y_bicubic",
                "ssim_y",
                "ssim_y_base",
            ):
                value = sum(r[key] for r in rows) / n
                self.log(split_key(split, group, key), value, prog_bar=split == "val" and key == "psnr_y")
            for key, value in gain_summary([r["gain_y"] for r in rows]).items():
                self.log(split_key(split, group, key), value)
            own_over_shuffled = sum(r["psnr_y"] - r["psnr_y_shuffled"] for r in rows) / n
            self.log(split_key(split, group, "own_over_shuffled_y"), own_over_shuffled)
            if spreads.get(f"{split}/{group}"):
                spread = torch.stack(spreads[f"{split}/{group}"]).mean().item()
                self.log(split_key(split, group, "adapter_spread"), spread)

    def configure_optimizers(self):
        trainable = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("base.")]
        if self.mode == "direct":
            trainable = [p for p in trainable if p is not self.log_inner_lr]
        optimizer = torch.optim.Adam(trainable, lr=self.optim["lr"], weight_decay=self.optim["weight_decay"])
        schedule = warmup_cosine(
            warmup_steps=self.optim["warmup_steps"],
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_ratio=self.optim["min_lr_ratio"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
