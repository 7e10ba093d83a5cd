"""Base VSR networks: plain `nn.Module`s with `forward(lr (B,T,C,h,w)) -> (B,T,C,s*h,s*w)` and a
`scale` attribute. A config names one by its class (`_target_`, configs/model/*.yaml), as every
other component of a run is named; `build_base` makes it from such a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hypernet.models.base.recurrent import RecurrentVSR
from hypernet.models.base.window import WindowVSR

# The architectures there are, by their short name (configs/model/<name>.yaml; the `model.name` of
# checkpoints written before configs named their class, which scripts/convert_checkpoint.py reads)
BASE_MODELS: dict[str, type[nn.Module]] = {
    "window": WindowVSR,
    "recurrent": RecurrentVSR,
}


def build_base(config: Mapping[str, Any]) -> nn.Module:
    """A base network from its config (configs/model/*.yaml, or the one a checkpoint holds): its
    class, `_target_`, and keyword arguments. A config without one (an earlier checkpoint's
    `model.name`) is refused, not translated: scripts/convert_checkpoint.py converts it once."""
    config = dict(config)
    if "_target_" not in config:
        raise ValueError(
            f"model config {config} names no base network: give model._target_ (e.g. "
            "hypernet.models.base.WindowVSR); a checkpoint of an earlier layout (model.name) is converted "
            "once by scripts/convert_checkpoint.py"
        )
    from hydra.utils import instantiate

    return instantiate(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
