"""`python -m hypernet.adapters info FILE` / `diff A B`: what an adapter file holds.

An adapter file (`specialise --save-adapter`, `finetune -o`) is safetensors with its LoRA spec and
a fingerprint of the base it was made for. `info` prints its targets, ranks, parameter count, each
layer's delta norm (the Frobenius norm of scaling * B @ A, the change it makes to the weight), the
fingerprint, and with `--checkpoint` whether it fits that base (and each delta relative to the
base weight it changes). `diff` compares two files layer by layer: delta norms, the norm of their
difference and the cosine between them (1: the same direction of change), and whether both were
made for the same base.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from hypernet.cli_checks import InputError, error_line, signals_end_in_one_line
from hypernet.models.lora import (
    HYPERNET_PREFIX,
    AdapterFileError,
    Adapters,
    LoRASpec,
    base_fingerprint,
    delta_weight,
    load_adapters,
    load_merge_columns,
)


def read(path: str | Path) -> tuple[LoRASpec, Adapters, dict[str, str], dict[str, str]]:
    """Spec, adapters, the fingerprint stored in the file (no base needed) and the other
    metadata (what made the file)."""
    spec, adapters, metadata = load_adapters(path)
    try:
        fingerprint = json.loads(metadata["fingerprint"])
    except (KeyError, ValueError) as err:
        raise AdapterFileError(f"adapter file {str(path)!r} has no readable fingerprint ({err})") from None
    made_by = {k: v for k, v in metadata.items() if k not in ("format", "spec", "fingerprint")}
    return spec, adapters, fingerprint, made_by


def layer_deltas(spec: LoRASpec, adapters: Adapters, video: int = 0) -> dict[str, torch.Tensor]:
    """Each target's weight change scaling * B @ A for one video, in the weight's shape."""
    return {
        t.name: delta_weight(t, adapters[t.name][0][video].double(), adapters[t.name][1][video].double())
        for t in spec.targets
    }


def load_base_of(checkpoint: str | Path) -> nn.Module:
    """The base network held by a stage-2 checkpoint, or a stage-1 checkpoint's (EMA) base. The
    file is read first as any checkpoint (a text file, random bytes, a folder: one line naming
    --checkpoint), then as the stage its hyperparameters say it is."""
    from hypernet.checkpointing import read_checkpoint  # Lightning: slow to import, so only now
    from hypernet.systems.hyper_lora import load_base, load_hypernet

    hparams = read_checkpoint(checkpoint, option="--checkpoint").get("hyper_parameters")
    if isinstance(hparams, dict) and "hypernet" in hparams:
        return load_hypernet(checkpoint, option="--checkpoint").base
    try:
        return load_base(checkpoint)[0]
    except ValueError:
        raise InputError(
            f"--checkpoint {checkpoint}: is neither a stage-2 (hypernet) nor a stage-1 (base) checkpoint of "
            "this project; give the best.ckpt or last.ckpt of a run"
        ) from None


def info(path: str | Path, *, checkpoint: str | Path | None = None) -> str:
    spec, adapters, fingerprint, made_by = read(path)
    num_videos = next(iter(adapters.values()))[0].shape[0]
    ranks = sorted({t.rank for t in spec.targets})
    lines = [
        f"file        {path}",
        f"targets     {len(spec.targets)} layers, rank {'/'.join(map(str, ranks))}, "
        f"{spec.num_params:,} parameters per video, {num_videos} video(s) in the file",
        f"base        {fingerprint.get('class')} with {int(fingerprint.get('num_params', 0)):,} parameters "
        f"(architecture {fingerprint.get('architecture', '?')[:12]}, weights {fingerprint.get('weights', '?')[:12]})",
    ]
    if made_by:  # finetune's method, steps, videos, best step; specialise writes none
        lines.append("made by     " + ", ".join(f"{k} {v}" for k, v in made_by.items()))
    columns = load_merge_columns(path)
    if columns is not None:
        own = [v for k, v in columns.items() if not k.startswith(HYPERNET_PREFIX)]
        theirs = [v for k, v in columns.items() if k.startswith(HYPERNET_PREFIX)]
        lines.append(
            f"merge       learned with the hypernetwork's adapter on top (finetune --merge-steps): "
            f"per-channel weights, this adapter's mean {torch.cat(own).mean():.3f}, "
            f"the hypernetwork's mean {torch.cat(theirs).mean():.3f}"
        )
    base = None
    if checkpoint is not None:
        base = load_base_of(checkpoint)
        given = base_fingerprint(base)
        if given["architecture"] != fingerprint.get("architecture"):
            verdict = "NO: another architecture"
        elif given["weights"] != fingerprint.get("weights"):
            verdict = "NO: same architecture, other weights"
        else:
            verdict = "yes"
        lines.append(f"fits        {checkpoint}: {verdict}")
    modules = dict(base.named_modules()) if base is not None else {}
    header = f"{'layer':<28} {'kind':<6} {'weight shape':<18} {'rank':>4} {'alpha':>6} {'delta norm':>11}"
    lines += ["", header + ("  relative to W" if modules else "")]
    deltas = layer_deltas(spec, adapters)
    for t in spec.targets:
        delta = deltas[t.name]
        row = f"{t.name:<28} {t.kind:<6} {'x'.join(map(str, delta.shape)):<18} {t.rank:>4} {t.alpha:>6g} {delta.norm():>11.4g}"
        layer = modules.get(t.name)
        if layer is not None and tuple(layer.weight.shape) == tuple(delta.shape):
            row += f"  {delta.norm() / layer.weight.double().norm().clamp_min(1e-12):.4g}"
        lines.append(row)
    return "\n".join(lines)


def diff(path_a: str | Path, path_b: str | Path) -> str:
    spec_a, adapters_a, fp_a, _ = read(path_a)
    spec_b, adapters_b, fp_b, _ = read(path_b)
    names_a, names_b = set(spec_a.names), set(spec_b.names)
    same_base = fp_a.get("architecture") == fp_b.get("architecture") and fp_a.get("weights") == fp_b.get(
        "weights"
    )
    lines = [
        f"A           {path_a}",
        f"B           {path_b}",
        f"same base   {'yes' if same_base else 'no'} (A: {fp_a.get('class')} {fp_a.get('weights', '?')[:12]}, "
        f"B: {fp_b.get('class')} {fp_b.get('weights', '?')[:12]})",
    ]
    if names_a != names_b:
        lines.append(f"only in A   {sorted(names_a - names_b)}")
        lines.append(f"only in B   {sorted(names_b - names_a)}")
    deltas_a, deltas_b = layer_deltas(spec_a, adapters_a), layer_deltas(spec_b, adapters_b)
    lines += ["", f"{'layer':<28} {'|dA|':>10} {'|dB|':>10} {'|dA-dB|':>10} {'cosine':>7}"]
    total_a = total_b = total_diff = 0.0
    for name in spec_a.names:
        if name not in deltas_b:
            continue
        da, db = deltas_a[name], deltas_b[name]
        if da.shape != db.shape:
            lines.append(f"{name:<28} shapes differ: {tuple(da.shape)} vs {tuple(db.shape)}")
            continue
        denominator = (da.norm() * db.norm()).item()
        cosine = (da * db).sum().item() / denominator if denominator > 0 else float("nan")
        lines.append(
            f"{name:<28} {da.norm():>10.4g} {db.norm():>10.4g} {(da - db).norm():>10.4g} {cosine:>7.3f}"
        )
        total_a += da.norm().item() ** 2
        total_b += db.norm().item() ** 2
        total_diff += (da - db).norm().item() ** 2
    lines.append(f"{'all layers':<28} {total_a**0.5:>10.4g} {total_b**0.5:>10.4g} {total_diff**0.5:>10.4g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypernet.adapters", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_info = commands.add_parser("info", help="what an adapter file holds")
    p_info.add_argument("file", type=Path)
    p_info.add_argument(
        "--checkpoint", type=Path, help="a stage-1 or stage-2 checkpoint: does the file fit its base?"
    )
    p_diff = commands.add_parser("diff", help="compare two adapter files layer by layer")
    p_diff.add_argument("a", type=Path)
    p_diff.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    try:
        with signals_end_in_one_line():
            if args.command == "info":
                print(info(args.file, checkpoint=args.checkpoint))
            else:
                print(diff(args.a, args.b))
    except (ValueError, OSError) as err:  # AdapterFileError, CheckpointError, InputError among them
        print(error_line(err), file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
