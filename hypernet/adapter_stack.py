"""Adapter files and the hypernetwork's per-video adapter as one stack, the way `specialise`
applies them: the files (each checked against the base as it is loaded) merged in order, the
hypernetwork's adapter on top, each at its strength, a domain adapter's learned merge weighting
its channels and the hypernetwork's (`lora.parts_under_hypernet`). Before anything is written,
`check_adapted_output` refuses a stack that would leave no picture (a NaN, or values flattened
to black and white), naming the part that does it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from hypernet.cli_checks import InputError
from hypernet.models.lora import (
    HYPERNET_PREFIX,
    Adapters,
    LoRASpec,
    apply_adapters,
    load_adapters,
    load_merge_columns,
    parts_under_hypernet,
    stack_adapters,
)


class AdapterFile:
    """An --adapter file as loaded: checked against the base, with its strength and the
    learned merge it may hold."""

    def __init__(self, path: Path, strength: float, *, base: nn.Module, device: str):
        self.path, self.strength = path, strength
        self.spec, self.adapters, _ = load_adapters(path, base=base, device=device)
        self.columns = load_merge_columns(path)


Plan = tuple[list[tuple[LoRASpec, Adapters]], list[float | dict[str, torch.Tensor]], list[str]]


def stack_plan(
    files: list[AdapterFile],
    hypernet: tuple[LoRASpec, Adapters] | None,
    *,
    strength: float = 1.0,
    merge: str = "learned",
) -> Plan:
    """The parts of the stack `stack_files` makes, with their weights and names (for
    `stack_adapters`): the adapter files in order, the hypernetwork's adapter on top."""
    learned = [f for f in files if f.columns is not None] if merge == "learned" and hypernet else []
    if len(learned) > 1:
        raise InputError(
            f"--adapter {learned[0].path} and {learned[1].path} both hold a learned merge with the "
            "hypernetwork's adapter; only one can weight it: pass --merge naive"
        )
    columns = learned[0].columns if learned else None
    if columns is not None:
        wanted = {HYPERNET_PREFIX + name for name in hypernet[0].names}
        if {k for k in columns if k.startswith(HYPERNET_PREFIX)} != wanted:
            raise InputError(
                f"--adapter {learned[0].path}: its learned merge was fitted for a hypernetwork that adapts "
                "other layers than this checkpoint's: pass --merge naive, or fit it again with this checkpoint"
            )
    parts, weights = parts_under_hypernet(
        [(f.spec, f.adapters) for f in files],
        [f.strength * strength for f in files],
        hypernet,
        hypernet_strength=strength,
        columns=columns,
        columns_of=files.index(learned[0]) if learned else 0,
    )
    names = [f"--adapter {f.path}" for f in files]
    if hypernet is not None:
        merged_by = f" (weighted by --adapter {learned[0].path}'s learned merge)" if learned else ""
        names.append(f"the hypernetwork's adapter{merged_by}")
    return parts, weights, names


def stack_files(
    files: list[AdapterFile],
    hypernet: tuple[LoRASpec, Adapters] | None,
    *,
    strength: float = 1.0,
    merge: str = "learned",
) -> tuple[LoRASpec, Adapters]:
    """The adapter files in order and the hypernetwork's adapter on top, as one adapter whose
    delta is their sum, each at its strength, all at `strength`. With the hypernetwork on and
    merge="learned", a file holding a learned merge (`finetune --merge-steps`) weights its own
    channels and the hypernetwork's by it; otherwise the deltas add as they are (naive)."""
    return stack_parts(*stack_plan(files, hypernet, strength=strength, merge=merge))


def stack_parts(parts, weights, names) -> tuple[LoRASpec, Adapters]:
    """`stack_adapters` on a plan's parts, weights and names; parts that cannot be summed are an
    InputError naming them."""
    try:
        return stack_adapters(parts, weights=weights, names=names)
    except ValueError as e:
        raise InputError(str(e)) from None


# The saturation test (`check_adapted_output`). A value more than half the range beyond black or
# white comes from no adapter worth applying: clipping flattens it to pure black, white or a
# primary colour. When that happens to more than half of the values the base alone keeps in range
# (the base's own overshoot at edges is a few hundredths), the video would be noise: refused.
FAR_OUTSIDE = 0.5
SATURATED_SHARE = 0.5
SAMPLE_FRAMES = 4  # the first frames of the video the test upscales, twice (cheap next to the video)


def output_damage(reference: torch.Tensor, adapted: torch.Tensor) -> str | None:
    """What the adapters did to the base's output `reference` (1, T, 3, H, W, in [0, 1] give or
    take) that makes `adapted` worthless, in words, or None when they did nothing of the kind:
    a NaN or inf where the base's value is finite (the frame would be black), or more than
    SATURATED_SHARE of the values the base keeps near [0, 1] pushed FAR_OUTSIDE of it."""
    finite = torch.isfinite(reference)
    if not torch.isfinite(adapted)[finite].all():
        return "the output turns NaN or inf (a black video)"
    in_range = finite & (reference >= -FAR_OUTSIDE) & (reference <= 1 + FAR_OUTSIDE)
    far = (adapted < -FAR_OUTSIDE) | (adapted > 1 + FAR_OUTSIDE)
    share = (far & in_range).sum().item() / max(in_range.sum().item(), 1)
    if share > SATURATED_SHARE:
        return (
            f"the output saturates ({share:.0%} of its values pushed more than {FAR_OUTSIDE:g} outside "
            "[0, 1]: a flat black-and-white video)"
        )
    return None


def check_adapted_output(
    base: nn.Module, sample: torch.Tensor, plan: Plan, *, strength: float, input_path: str | os.PathLike
) -> None:
    """Refuse adapters that would make the video worthless (`output_damage`) before anything is
    written: the base's output on `sample` (the video's first frames) against the adapted one.
    Legitimate strengths (0 to a few) pass untouched; an adapter file whose numbers were
    altered, or a strength of 1e9, fails here naming the part(s) that do it alone, or all."""
    parts, weights, names = plan
    with torch.no_grad():
        reference = base(sample)

        def damage(parts_, weights_, names_) -> str | None:
            spec, adapters = stack_parts(parts_, weights_, names_)
            with apply_adapters(base, spec, adapters):
                return output_damage(reference, base(sample))

        found = damage(parts, weights, names)
        if found is None:
            return
        guilty = names
        if len(parts) > 1:
            guilty = [n for p, w, n in zip(parts, weights, names, strict=True) if damage([p], [w], [n])]
    who = ", ".join(guilty) or " and ".join(names) + " together"
    at = f" at --strength {strength:g}" if strength != 1 else ""
    files = " or a file's own (--adapter FILE:0.5)" if any(n.startswith("--adapter") for n in names) else ""
    raise InputError(
        f"{who}{at}: {found} on the first {sample.shape[1]} frame(s) of {input_path}, where the base alone "
        f"does not; lower --strength (0: the base, 1: as trained){files}; an adapter that does this at "
        "strength 1 is broken: make it again"
    )
