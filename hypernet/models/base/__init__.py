"""Base VSR networks: plain `nn.Module`s with `forward(lr (B,T,C,h,w)) -> (B,T,C,s*h,s*w)` and a
`scale` attribute. A config names one by its class (`_target_`, configs/model/*.yaml), as every
other component of a run is named; `build_base` makes it from such a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hypernet.models.base.recurrent import RecurrentVSR
from hypernet.models.base.window import WindowVSR

# The architectures there are, by the short name checkpoints written before configs named their
# class used (`model.name`); `model_config` translates those.
BASE_MODELS: dict[str, type[nn.Module]] = {
    "window": WindowVSR,
    "recurrent": RecurrentVSR,
}


def model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A base's config in today's form, `_target_` and keyword arguments; the `name` of an
    earlier checkpoint becomes its class path."""
    config = dict(config)
    name = config.pop("name", None)
    if "_target_" not in config:
        if name not in BASE_MODELS:
            raise ValueError(
                f"model config {config} names no base network: give model._target_ (e.g. "
                f"hypernet.models.base.WindowVSR) or an earlier checkpoint's name, one of {sorted(BASE_MODELS)}"
            )
        cls = BASE_MODELS[name]
        config = {"_target_": f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}", **config}
    return config


def build_base(config: Mapping[str, Any]) -> nn.Module:
    """A base network from its config (configs/model/*.yaml, or the one a checkpoint holds)."""
    from hydra.utils import instantiate

    return instantiate(model_config(config))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
