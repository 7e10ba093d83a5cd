"""Convert a checkpoint of an earlier layout to the one this code reads, once.

    python scripts/convert_checkpoint.py old.ckpt -o new.ckpt [--config RUN/config.yaml]
    python scripts/convert_checkpoint.py --check some.ckpt     # exit 0: current, nothing to do

The systems read one layout only (docs/design.md, "Config to objects, one way"); a checkpoint
written before it is refused on load with the command above. Converted here, stage 1 and stage 2
alike, each step only where the checkpoint needs it:

- flat options (before the systems took `model`, `optim` and `hypernet` as groups): the optimiser's
  and the hypernetwork's options are gathered into their groups; options the hypernetwork gained
  later get the value it ran with then (FLAT_HYPERNET_DEFAULTS);
- the base named by `model.name` (before `model._target_`);
- stage-2 parameter names from before the encoder and the generator shared one attention block
  and one feed-forward (models/blocks.py): fused q/k/v projections are split, `mlp`/`proj` renamed;
- one flat `hypernet` group (the layout up to commit 48f93e6): split into its parts lora, encoder,
  generator and refine, each with its `_target_`; `log_inner_lr` becomes `refine.log_lr`, and
  a refine-mode run's optimiser state follows it, so the converted checkpoint also resumes.

- no record of how the model was fed (checkpoints before the data module's options were kept,
  `datamodule_hyper_parameters`): `--config` takes them from the run's own config.yaml, so that
  eval and specialise feed the model as it was trained (checkpointing.trained_input).

The weights are the same tensors, so the converted checkpoint gives the same outputs and
adapters. Nothing is written unless the result loads as this code's system; OUT is written
atomically and may not be IN. Bad input: one line `error: ...`, exit code 2.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hypernet.checkpointing import read_checkpoint
from hypernet.cli_checks import same_file
from hypernet.files import atomic_write_bytes
from hypernet.systems.common import HYPERNET_PARTS, outdated_layout


class ConversionError(ValueError):
    """A checkpoint this script cannot convert; the message says which and why."""


# the options each system kept flat, beside its own, before `optim` was a group
FLAT_OPTIM = {
    "base": ("lr", "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "ema_decay"),
    "hyper": ("lr", "weight_decay", "warmup_steps", "min_lr_ratio"),
}
SYSTEM_OPTIONS = ("crop_border", "log_images", "nonfinite_loss")  # the system's own, never grouped
# hypernetwork options that flat checkpoints may lack, because the option came later: the value
# that reproduces how such a checkpoint ran
FLAT_HYPERNET_DEFAULTS = {
    "overrides": None,
    "feature_layers": None,
    "context_tile": None,
    "grid": 0,
    "blur": 1.0,
    "normalize": False,
    "noise": False,
    "direct_weight": 0.0,
    "split": False,
    "detach_kept": False,
}
# one flat hypernet option -> (part, option in that part)
HYPERNET_OPTIONS = {
    "targets": ("lora", "include"),
    "exclude": ("lora", "exclude"),
    "rank": ("lora", "rank"),
    "alpha": ("lora", "alpha"),
    "overrides": ("lora", "overrides"),
    "source": ("encoder", "source"),
    "feature_layers": ("encoder", "feature_layers"),
    "context_tile": ("encoder", "context_tile"),
    "dim": ("encoder", "dim"),
    "num_latents": ("encoder", "num_latents"),
    "num_heads": ("encoder", "num_heads"),
    "num_blocks": ("encoder", "num_blocks"),
    "conv_channels": ("encoder", "conv_channels"),
    "lr_stats": ("encoder", "lr_stats"),
    "grid": ("encoder", "grid"),
    "static": ("generator", "static"),
    "mode": ("refine", "mode"),
    "inner_steps": ("refine", "steps"),
    "inner_lr": ("refine", "lr"),
    "first_order": ("refine", "first_order"),
    "blur": ("refine", "blur"),
    "normalize": ("refine", "normalize"),
    "noise": ("refine", "noise"),
    "direct_weight": ("refine", "direct_weight"),
    "split": ("refine", "split"),
    "detach_kept": ("refine", "detach_kept"),
}
TARGETS = {
    "lora": "hypernet.models.lora.find_targets",
    "encoder": "hypernet.models.encoder.build_encoder",
    "generator": "hypernet.models.generator.LoRAGenerator",
    "refine": "hypernet.systems.hyper_lora.Refine",
}

# Parameter names of checkpoints written before the encoder and the generator shared one
# attention block and one feed-forward (models/blocks.py): old pattern -> new name. Fused q/k/v
# projections are split into to_q and to_kv (FUSED_QKV).
BLOCK_RENAMES = (
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
FUSED_QKV = (
    (r"^(encoder\.blocks\.\d+)\.qkv\.(weight|bias)$", r"\1.attention"),
    (r"^(generator\.query\.attention)\.in_proj_(weight|bias)$", r"\1"),
)
# the refine step sizes, a parameter of the system itself up to commit 48f93e6
OLD_STEP_SIZES, STEP_SIZES = "log_inner_lr", "refine.log_lr"


def stage_of(checkpoint: Mapping[str, Any]) -> str:
    """ "hyper" for a stage-2 checkpoint (it holds a hypernetwork), else "base"."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if "hypernet" in hparams or "base_ckpt" in hparams:
        return "hyper"
    return (
        "hyper" if any(k.startswith(("encoder.", "generator.")) for k in checkpoint["state_dict"]) else "base"
    )


def grouped_options(hparams: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """Flat options (optimiser and hypernetwork among the system's own) -> `optim` and
    `hypernet` groups; options already grouped pass unchanged."""
    hparams = dict(hparams)
    if "optim" in hparams:
        return hparams
    keys = FLAT_OPTIM[stage]
    missing = [k for k in keys if k not in hparams]
    if missing:
        raise ConversionError(f"its flat options lack the optimiser's {missing}")
    grouped = {k: hparams.pop(k) for k in (*SYSTEM_OPTIONS, "model", "base_ckpt") if k in hparams}
    grouped["optim"] = {k: hparams.pop(k) for k in keys}
    if stage == "hyper":
        grouped["hypernet"] = hparams  # what is left: the hypernetwork's, checked when split
    elif hparams:
        raise ConversionError(f"its flat options hold {sorted(hparams)}, which no stage-1 system took")
    return grouped


def model_with_target(model: Any) -> Any:
    """A base named by `model.name` -> by its class path, `model._target_`."""
    if not isinstance(model, Mapping) or "_target_" in model:
        return model
    from hypernet.models.base import BASE_MODELS

    model = dict(model)
    name = model.pop("name", None)
    if name not in BASE_MODELS:
        raise ConversionError(f"model.name={name!r} is none of the known bases {sorted(BASE_MODELS)}")
    cls = BASE_MODELS[name]
    return {"_target_": f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}", **model}


def split_hypernet(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One flat `hypernet` group -> its parts, each with its `_target_`. The generator's
    attention heads were the encoder's; its width is the encoder's, given when it is made."""
    options = FLAT_HYPERNET_DEFAULTS | dict(flat)
    unknown = sorted(set(options) - set(HYPERNET_OPTIONS))
    missing = sorted(set(HYPERNET_OPTIONS) - set(options))
    if unknown or missing:
        raise ConversionError(
            f"its hypernet options are not a layout this script knows (unknown {unknown}, missing {missing})"
        )
    parts: dict[str, dict[str, Any]] = {part: {"_target_": TARGETS[part]} for part in HYPERNET_PARTS}
    parts["generator"]["num_heads"] = options["num_heads"]
    for option, (part, name) in HYPERNET_OPTIONS.items():
        parts[part][name] = options[option]
    parts["lora"]["include"] = list(parts["lora"]["include"])
    return parts


def split_fused(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage-2 parameters of the names before models/blocks.py -> today's (others unchanged)."""
    renamed = {}
    for key, tensor in state.items():
        for pattern, attention in FUSED_QKV:
            match = re.match(pattern, key)
            if match:  # rows: q, then k and v
                prefix, kind = match.expand(attention), match.group(2)
                dim = tensor.shape[0] // 3
                renamed[f"{prefix}.to_q.{kind}"] = tensor[:dim]
                renamed[f"{prefix}.to_kv.{kind}"] = tensor[dim:]
                break
        else:
            for pattern, new in BLOCK_RENAMES:
                key = re.sub(pattern, new, key)
            renamed[key] = tensor
    return renamed


def moved_step_sizes(optimizer: Mapping[str, Any], step_sizes: torch.Tensor) -> dict[str, Any]:
    """A refine-mode run's optimiser listed the step sizes first (then a parameter of the system
    itself); they are now the refine part's, listed last. An optimiser state is matched to the
    parameters by position in its group's list, so the list is rotated; the state is unchanged."""
    (group, *others) = optimizer["param_groups"]
    if others or not group["params"]:
        raise ConversionError("its optimiser state is not the one parameter group stage 2 trains")
    first, *rest = group["params"]
    moment = optimizer["state"].get(first, {}).get("exp_avg")
    if moment is not None and moment.shape != step_sizes.shape:
        raise ConversionError("its optimiser state does not start with the refine step sizes")
    return {**optimizer, "param_groups": [{**group, "params": [*rest, first]}]}


DATA_KEY = "datamodule_hyper_parameters"  # where Lightning keeps the data module's options


def run_data_options(config: Path) -> dict[str, Any]:
    """The data module's options of a run, from its config.yaml (resolved, as train.py wrote it):
    what the checkpoint would hold had it been written by this code."""
    import inspect

    from omegaconf import OmegaConf

    from hypernet.data.datamodule import VSRDataModule

    if not config.is_file():
        raise ConversionError(f"--config {config}: not a file; give the config.yaml of the run that wrote it")
    try:
        data = OmegaConf.to_container(OmegaConf.load(config).data, resolve=True)
    except Exception as e:
        raise ConversionError(
            f"--config {config}: holds no readable `data` group ({type(e).__name__})"
        ) from None
    accepted = inspect.signature(VSRDataModule.__init__).parameters
    return {k: v for k, v in data.items() if k in accepted}


def needs_conversion(checkpoint: Mapping[str, Any]) -> str | None:
    """Why the checkpoint needs converting (an old layout, or no record of its inputs), or None."""
    reason = outdated_layout(checkpoint.get("hyper_parameters") or {})
    if reason is None and DATA_KEY not in checkpoint:
        return "no record of its data options"
    return reason


def convert(checkpoint: Mapping[str, Any], *, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint (as read_checkpoint returned it) in today's layout, with `data` (a run's data
    options) recorded where it recorded none: a new dict, the same tensors. Raises
    ConversionError for one already current or of no layout known here."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or not hparams:
        raise ConversionError(
            "it holds no saved options (hyper_parameters): not a checkpoint of a training run"
        )
    if outdated_layout(hparams) is None:
        if DATA_KEY in checkpoint or data is None:
            raise ConversionError("it is already in the current layout: nothing to convert, use it as it is")
        return {**checkpoint, DATA_KEY: dict(data)}
    stage = stage_of(checkpoint)
    hparams = grouped_options(hparams, stage)
    hparams["model"] = model_with_target(hparams.get("model"))
    state = dict(checkpoint["state_dict"])
    converted = dict(checkpoint)
    if stage == "hyper":
        if not isinstance(hparams["model"], Mapping):
            raise ConversionError(
                "it holds no model config, which a stage-2 checkpoint needs to rebuild its base"
            )
        if set(hparams["hypernet"]) != set(HYPERNET_PARTS):
            hparams["hypernet"] = split_hypernet(hparams["hypernet"])
        state = split_fused(state)
        if OLD_STEP_SIZES in state:
            state[STEP_SIZES] = state.pop(OLD_STEP_SIZES)
            if hparams["hypernet"]["refine"]["mode"] == "refine" and checkpoint.get("optimizer_states"):
                converted["optimizer_states"] = [
                    moved_step_sizes(o, state[STEP_SIZES]) for o in checkpoint["optimizer_states"]
                ]
    converted["hyper_parameters"] = hparams
    converted["state_dict"] = state
    if data is not None and DATA_KEY not in converted:
        converted[DATA_KEY] = dict(data)
    return converted


def check_loads(checkpoint: Mapping[str, Any]) -> None:
    """The converted checkpoint builds this code's system and fills it exactly (every weight,
    no other), as loading it will."""
    from hypernet.systems.base_sr import BaseSRSystem
    from hypernet.systems.hyper_lora import HyperLoRASystem

    hparams = dict(checkpoint["hyper_parameters"])
    if stage_of(checkpoint) == "hyper":
        system: torch.nn.Module = HyperLoRASystem(**{**hparams, "base_ckpt": None})
    else:
        system = BaseSRSystem(**hparams)
    missing, unexpected = system.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ConversionError(
            f"converted, it does not fill this code's system: {len(missing)} weights missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def convert_file(source: Path, output: Path, *, config: Path | None = None) -> str:
    """Convert `source` into `output` (atomically; nothing written on any error). Returns what
    was converted, for the user."""
    if same_file(source, output):
        raise ConversionError(f"-o {output} is the input itself; write the converted checkpoint elsewhere")
    if output.is_dir():
        raise ConversionError(f"-o {output}: is a folder; give a file name")
    checkpoint = read_checkpoint(source, option="checkpoint")
    reason = needs_conversion(checkpoint)
    try:
        data = None if config is None else run_data_options(config)
        converted = convert(checkpoint, data=data)
        check_loads(converted)
    except ConversionError as e:
        raise ConversionError(f"checkpoint {source}: cannot be converted: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConversionError(
            f"checkpoint {source}: cannot be converted: the result does not load ({e})"
        ) from e
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    atomic_write_bytes(output, buffer.getvalue())
    return f"{source} ({reason}) -> {output} (stage {stage_of(converted)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/convert_checkpoint.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("input", type=Path, help="a checkpoint of an earlier layout")
    parser.add_argument("-o", "--output", type=Path, help="where the converted checkpoint goes")
    parser.add_argument(
        "--config", type=Path, help="the run's config.yaml: records its data options in the checkpoint"
    )
    parser.add_argument(
        "--check", action="store_true", help="only say whether it needs converting (exit 1) or not (exit 0)"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            reason = needs_conversion(read_checkpoint(args.input, option="checkpoint"))
            print(f"{args.input}: {reason or 'current'}")
            return 0 if reason is None else 1
        if args.output is None:
            raise ConversionError("-o/--output is needed: where the converted checkpoint goes")
        print(convert_file(args.input, args.output, config=args.config))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
