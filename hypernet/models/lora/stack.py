"""Adapters as LoRA users combine them: a strength scales an adapter's delta (0 is the base
exactly), and several adapters stack into one whose delta is their weighted sum, exactly, by
joining A and B along the rank."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hypernet.models.lora.adapter_files import HYPERNET_PREFIX
from hypernet.models.lora.spec import Adapters, LoRASpec, LoRATarget, _describe_target, _num_videos


def check_strength(strength: Any, *, option: str = "strength") -> float:
    """An adapter strength: a number >= 0 (0: the base, 1: as trained, above 1 extrapolates);
    ValueError naming `option` otherwise."""
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not math.isfinite(strength)
        or strength < 0
    ):
        raise ValueError(
            f"{option}={strength!r}: the adapter strength must be a number >= 0 (0: the base, 1: as trained)"
        )
    return float(strength)


def scale_adapters(adapters: Adapters, strength: float, *, option: str = "strength") -> Adapters:
    """The adapters with their weight change scaled by `strength` (B * strength: the delta
    scaling * B @ A is linear in B): 0 is the base exactly, 1 as trained, above 1 extrapolates."""
    check_strength(strength, option=option)
    return {name: (a, b * strength) for name, (a, b) in adapters.items()}


def _same_layer(a: LoRATarget, b: LoRATarget) -> bool:
    """Two targets adapt the same layer the same way (everything but rank and alpha agrees)."""
    skip = {"rank", "alpha"}
    return all(
        getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(LoRATarget) if f.name not in skip
    )


def stack_adapters(
    parts: Sequence[tuple[LoRASpec, Adapters]],
    *,
    weights: Sequence[float | Mapping[str, Tensor]] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[LoRASpec, Adapters]:
    """Several adapters as one whose delta is their weighted sum, exactly: A and B are joined
    along the rank (B_1 A_1 + B_2 A_2 = [B_1 B_2] [A_1; A_2]), each B carrying its own scaling
    alpha / r and weight, so the result has alpha = rank (scaling 1). A weight is a strength
    (float) or, per layer, one factor per output channel (the columns of ZipLoRA's merge);
    a layer a part does not adapt is zero for it. The union keeps the first part's layer order.

    Adapters with one video broadcast against those with V. Two parts that adapt the same layer
    with different geometry (kind, sizes, kernel, stride, padding) cannot be summed: ValueError
    naming both (`names` labels the parts in messages, e.g. their files)."""
    if not parts:
        raise ValueError("stack_adapters: nothing to stack")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(parts) == 1 and isinstance(weights[0], int | float):  # one adapter at a strength: as it is
        spec, adapters = parts[0]
        return spec, adapters if weights[0] == 1 else scale_adapters(adapters, weights[0])
    names = [f"adapters #{i + 1}" for i in range(len(parts))] if names is None else list(names)
    if len(weights) != len(parts) or len(names) != len(parts):
        raise ValueError(f"stack_adapters: {len(parts)} parts but {len(weights)} weights, {len(names)} names")
    counts = [_num_videos(spec, adapters) for spec, adapters in parts]
    num_videos = max(counts)
    if any(c not in (1, num_videos) for c in counts):
        raise ValueError(f"stack_adapters: the parts hold {counts} videos; each must hold 1 or {num_videos}")
    layers: dict[str, list[tuple[int, LoRATarget]]] = {}
    for i, (spec, _) in enumerate(parts):
        for t in spec.targets:
            first = layers.setdefault(t.name, [])
            if first and not _same_layer(first[0][1], t):
                j, other = first[0]
                raise ValueError(
                    f"{names[i]} and {names[j]} cannot be stacked: both adapt layer {t.name!r} but as "
                    f"{_describe_target(t)} and {_describe_target(other)}; they were made for different bases"
                )
            first.append((i, t))
    targets, stacked = [], {}
    for name, owners in layers.items():
        a_parts, b_parts = [], []
        for i, t in owners:
            a, b = parts[i][1][name]
            weight = weights[i]
            factor = weight if isinstance(weight, int | float) else weight[name].to(b)[:, None]
            a_parts.append(a.expand(num_videos, *a.shape[1:]))
            b_parts.append((b * (t.scaling * factor)).expand(num_videos, *b.shape[1:]))
        rank = sum(t.rank for _, t in owners)
        targets.append(dataclasses.replace(owners[0][1], rank=rank, alpha=float(rank)))
        stacked[name] = (torch.cat(a_parts, dim=1), torch.cat(b_parts, dim=2))
    spec = LoRASpec(targets=tuple(targets), base_num_params=parts[0][0].base_num_params)
    return spec, stacked


# ----------------------------------------------------------------------------------------------
# a domain adapter under the hypernetwork's adapter


def merge_columns(spec: LoRASpec, *, hypernet_spec: LoRASpec) -> dict[str, torch.Tensor]:
    """Per-column merge weights of the naive sum: one factor per output channel of every layer,
    for the domain adapter ("<layer>") and the hypernetwork's ("hypernet:<layer>"), all 1."""
    columns = {t.name: torch.ones(t.out_features) for t in spec.targets}
    columns |= {f"{HYPERNET_PREFIX}{t.name}": torch.ones(t.out_features) for t in hypernet_spec.targets}
    return columns


def merge_weight(
    spec: LoRASpec, strength: float, columns: Mapping[str, torch.Tensor] | None = None, *, prefix: str = ""
) -> float | dict[str, torch.Tensor]:
    """The weight of one adapter in a stack (`stack_adapters`): its strength, times its
    learned per-column factors ("<prefix><layer>" in `columns`) when it has them."""
    if columns is None:
        return strength
    return {t.name: columns[prefix + t.name] * strength for t in spec.targets}


def parts_under_hypernet(
    parts: Sequence[tuple[LoRASpec, Adapters]],
    strengths: Sequence[float],
    hypernet: tuple[LoRASpec, Adapters] | None,
    *,
    hypernet_strength: float = 1.0,
    columns: Mapping[str, Tensor] | None = None,
    columns_of: int = 0,
) -> tuple[list[tuple[LoRASpec, Adapters]], list[float | dict[str, Tensor]]]:
    """The parts of a stack and their weights, for `stack_adapters`: `parts` in order, each at its
    strength, then the hypernetwork's adapter (when given) on top at `hypernet_strength`. A
    learned merge, `columns` held by parts[columns_of] ("<layer>" for its own layers,
    "hypernet:<layer>" for the hypernetwork's), weights that part's output channels and the
    hypernetwork's; otherwise the deltas add as they are (the naive sum). The one place a
    domain adapter goes under the hypernetwork's: `specialise` stacks its adapter files here,
    `stack_under_hypernet` (the learned merge's fit, the domain study) its one domain adapter."""
    weights = [
        merge_weight(spec, strength, columns if i == columns_of else None)
        for i, ((spec, _), strength) in enumerate(zip(parts, strengths, strict=True))
    ]
    parts = list(parts)
    if hypernet is not None:
        parts.append(hypernet)
        weights.append(merge_weight(hypernet[0], hypernet_strength, columns, prefix=HYPERNET_PREFIX))
    return parts, weights


def stack_under_hypernet(
    spec: LoRASpec,
    under: Adapters,
    hypernet_spec: LoRASpec,
    hypernet: Adapters,
    *,
    columns: Mapping[str, torch.Tensor] | None = None,
    strength: float = 1.0,
    hypernet_strength: float = 1.0,
) -> tuple[LoRASpec, Adapters]:
    """A domain adapter with the hypernetwork's on top: the naive sum of their deltas, or with
    `columns` (from `adaptation.fit_merge`) each output channel of each weighted by its learned factor."""
    parts, weights = parts_under_hypernet(
        [(spec, under)],
        [strength],
        (hypernet_spec, hypernet),
        hypernet_strength=hypernet_strength,
        columns=columns,
    )
    return stack_adapters(parts, weights=weights, names=["the domain adapter", "the hypernet's"])
