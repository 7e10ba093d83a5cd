"""Base VSR networks: plain `nn.Module`s with `forward(lr (B,T,C,h,w)) -> (B,T,C,s*h,s*w)` and a
`scale` attribute. Chosen by name from `BASE_MODELS`, a plain dict."""

from __future__ import annotations

from typing import Any

from torch import nn

from hypernet.models.base.recurrent import RecurrentVSR
from hypernet.models.base.window import WindowVSR

BASE_MODELS: dict[str, type[nn.Module]] = {
    "window": WindowVSR,
    "recurrent": RecurrentVSR,
}


def build_base(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a base network by registry name; keyword arguments go to its constructor."""
    if name not in BASE_MODELS:
        raise ValueError(
            f"model.name={name!r} is not a known base network; choose one of {sorted(BASE_MODELS)}"
        )
    return BASE_MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
