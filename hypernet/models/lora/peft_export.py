"""PEFT export: one video's adapters in PEFT's layout, so `PeftModel.from_pretrained` reproduces
them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import safetensors
import safetensors.torch
from einops import rearrange

from hypernet.files import atomic_write_bytes
from hypernet.models.lora.spec import Adapters, LoRASpec, _num_videos

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"


def _peft_pattern_key(name: str) -> str:
    # PEFT matches rank/alpha patterns with re.match(rf"(.*\.)?({key})$", module_name); the "^"
    # forbids the optional prefix, so the key selects exactly this module
    return "^" + re.escape(name)


def export_peft(path_dir: str | os.PathLike, spec: LoRASpec, adapters: Adapters, *, video: int = 0) -> None:
    """Write one video's adapters in PEFT's layout (adapter_model.safetensors + adapter_config.json)
    so `PeftModel.from_pretrained(base, path_dir)` reproduces them. PEFT's conv LoRA drops the
    layer's dilation and padding_mode, so adapters on such layers are refused, not exported wrong."""
    num_videos = _num_videos(spec, adapters)
    if not 0 <= video < num_videos:
        raise ValueError(f"export_peft: video={video} is out of range: the adapters hold {num_videos} videos")
    for t in spec.targets:
        if t.kind == "conv" and (t.dilation != (1, 1) or t.padding_mode != "zeros"):
            raise ValueError(
                f"export_peft: layer {t.name!r} has dilation {t.dilation} and padding_mode {t.padding_mode!r}; "
                "PEFT's conv LoRA builds its down-convolution without dilation and with zero padding, so it "
                "cannot represent this adapter. Exclude the layer from the spec, or merge the adapters "
                "into the base (merge_adapters) and save the merged weights instead"
            )
    # the most common (rank, alpha) becomes the default; the others go to rank/alpha patterns
    counts: dict[tuple[int, float], int] = {}
    for t in spec.targets:
        counts[(t.rank, t.alpha)] = counts.get((t.rank, t.alpha), 0) + 1
    r, alpha = max(counts, key=lambda k: counts[k])
    rank_pattern = {_peft_pattern_key(t.name): t.rank for t in spec.targets if t.rank != r}
    alpha_pattern = {_peft_pattern_key(t.name): t.alpha for t in spec.targets if t.alpha != alpha}
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        # a regex is full-matched against each module name: exactly our targets, nothing else
        "target_modules": "|".join(re.escape(t.name) for t in spec.targets),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    tensors = {}
    for t in spec.targets:
        a, b = adapters[t.name]
        a, b = a[video].detach().cpu().clone().contiguous(), b[video].detach().cpu().clone()
        if t.kind == "conv":
            b = rearrange(b, "o r -> o r 1 1")
        tensors[f"base_model.model.{t.name}.lora_A.weight"] = a
        tensors[f"base_model.model.{t.name}.lora_B.weight"] = b.contiguous()
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / PEFT_WEIGHTS_NAME, safetensors.torch.save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out / PEFT_CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
