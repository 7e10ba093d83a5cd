"""Merge: one video's adapters folded into the base's weights (W += scaling * B @ A) so inference
costs what the base costs, and taken out again exactly."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hypernet.models.lora.spec import Adapters, LoRASpec, LoRATarget, _layer_of, _num_videos


def delta_weight(target: LoRATarget, a: Tensor, b: Tensor) -> Tensor:
    """scaling * B @ A in the layer's weight shape (conv: contracted over the rank); any leading
    dimensions (videos) are kept."""
    if target.kind == "conv":
        return torch.einsum("...or,...rikl->...oikl", b, a) * target.scaling
    return (b @ a) * target.scaling


def _merge(model: nn.Module, spec: LoRASpec, adapters: Adapters, video: int, sign: float) -> None:
    num_videos = _num_videos(spec, adapters)
    if not 0 <= video < num_videos:
        raise ValueError(f"video={video} is out of range: the adapters hold {num_videos} videos")
    layers = [(t, _layer_of(model, t)) for t in spec.targets]  # check every layer before touching any
    merged = []
    with torch.no_grad():
        for t, layer in layers:
            weight = layer.weight
            work = torch.promote_types(weight.dtype, torch.float32)  # half weights merge in float32
            a, b = (x[video].to(weight.device, work) for x in adapters[t.name])
            new = (weight.to(work) + sign * delta_weight(t, a, b)).to(weight.dtype)
            if not torch.isfinite(new).all():  # before any layer changes: the model stays as it was
                bad = int((~torch.isfinite(new)).sum())
                raise ValueError(
                    f"merging the adapters would put {bad} NaN or inf values into layer {t.name!r}'s weight "
                    f"(of {new.numel()}), which would turn every frame black: the adapters are far too "
                    "strong for this base (lower their strength) or broken (make them again)"
                )
            merged.append((weight, new))
        for weight, new in merged:
            weight.copy_(new)


def merge_adapters(model: nn.Module, spec: LoRASpec, adapters: Adapters, *, video: int = 0) -> None:
    """Fold one video's adapters into the weights, W += scaling * B @ A, so inference costs
    exactly what the base costs. Undo with `unmerge_adapters` (same arguments)."""
    _merge(model, spec, adapters, video, 1.0)


def unmerge_adapters(model: nn.Module, spec: LoRASpec, adapters: Adapters, *, video: int = 0) -> None:
    """The inverse of `merge_adapters`, exact to float rounding."""
    _merge(model, spec, adapters, video, -1.0)
