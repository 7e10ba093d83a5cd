"""Targets and spec: which layers of a base get adapters, their geometry, rank and alpha
(`find_targets`, `LoRASpec`), fresh adapters for them (`init_adapters`), and the checks every
other part of the engine makes of adapters against a spec and of a spec against a model."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Adapters = dict[str, tuple[Tensor, Tensor]]  # name -> (A (V, *a_shape), B (V, *b_shape))


class AdapterMismatchError(ValueError):
    """Adapters were made for a different base network than the one given."""


# ----------------------------------------------------------------------------------------------
# Targets and spec


@dataclass(frozen=True)
class LoRATarget:
    """One adapted layer: everything needed to build, apply, merge or check its adapter."""

    name: str  # module path in the base, e.g. "body.3.conv1"
    kind: str  # "conv" | "linear"
    in_features: int  # in_channels for conv
    out_features: int  # out_channels for conv
    kernel_size: tuple[int, int]  # (1, 1) for linear
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    rank: int
    alpha: float
    padding_mode: str = "zeros"  # conv only; the down-convolution pads the way the layer does

    def __post_init__(self) -> None:
        """Refuse a target no layer can have: a spec read from an altered file (rank 0 would
        divide by zero in `scaling`, an alpha of NaN would turn every frame black) fails here,
        as a ValueError naming the layer and the field, not later as a traceback."""
        problem = _target_problem(self)
        if problem is not None:
            raise ValueError(f"layer {self.name!r}: {problem}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def a_shape(self) -> tuple[int, ...]:
        """Per-video shape of the down-projection: conv (r, in, kh, kw), linear (r, in)."""
        if self.kind == "conv":
            return (self.rank, self.in_features, *self.kernel_size)
        return (self.rank, self.in_features)

    @property
    def b_shape(self) -> tuple[int, int]:
        """Per-video shape of the up-projection (out, r): a 1 x 1 convolution for conv layers."""
        return (self.out_features, self.rank)

    @property
    def num_params(self) -> int:
        return math.prod(self.a_shape) + math.prod(self.b_shape)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


LINEAR_GEOMETRY = ((1, 1), (1, 1), (0, 0), (1, 1))  # a linear target's kernel, stride, padding, dilation


def _target_problem(t: LoRATarget) -> str | None:
    """What makes `t` impossible (see LoRATarget.__post_init__), or None."""
    if not isinstance(t.name, str) or not t.name:
        return "the layer name must be a non-empty string"
    if t.kind not in ("conv", "linear"):
        return f"kind must be 'conv' or 'linear', got {t.kind!r}"
    for field in ("in_features", "out_features", "rank"):
        value = getattr(t, field)
        if not _is_int(value) or value < 1:
            return f"{field} must be a positive int, got {value!r}"
    if (
        isinstance(t.alpha, bool)
        or not isinstance(t.alpha, int | float)
        or not (math.isfinite(t.alpha) and t.alpha > 0)
    ):
        return f"alpha must be a finite number > 0 (the scaling is alpha / rank), got {t.alpha!r}"
    for field, least in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
        value = getattr(t, field)
        if not (
            isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) and v >= least for v in value)
        ):
            return f"{field} must be two ints >= {least}, got {value!r}"
    if t.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        return f"padding_mode must be zeros, reflect, replicate or circular, got {t.padding_mode!r}"
    if t.kind == "linear" and (t.kernel_size, t.stride, t.padding, t.dilation) != LINEAR_GEOMETRY:
        return "a linear layer has kernel (1, 1), stride (1, 1), padding (0, 0) and dilation (1, 1)"
    return None


@dataclass(frozen=True)
class LoRASpec:
    """Every target of a base, in module order, and the base's size for the budget fraction."""

    targets: tuple[LoRATarget, ...]
    base_num_params: int

    def __post_init__(self) -> None:
        """At least one target, each layer once: an empty spec adapts nothing and a layer named
        twice would be merged twice. ValueError otherwise."""
        if not self.targets:
            raise ValueError("the spec has no target: it adapts no layer")
        names = [t.name for t in self.targets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"the spec names layer(s) {twice} more than once")
        if not _is_int(self.base_num_params) or self.base_num_params < 0:
            raise ValueError(f"base_num_params must be an int >= 0, got {self.base_num_params!r}")

    @property
    def num_params(self) -> int:
        return sum(t.num_params for t in self.targets)

    @property
    def fraction(self) -> float:
        return self.num_params / max(self.base_num_params, 1)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def __getitem__(self, name: str) -> LoRATarget:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_num_params": self.base_num_params,
            "targets": [
                {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(t).items()}
                for t in self.targets
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRASpec:
        """The spec `to_dict` wrote, taken as it is (a rank of 2.5 or "2" is refused, not rounded):
        ValueError, KeyError or TypeError when it is not one."""
        targets = []
        for raw in data["targets"]:
            fields = dict(raw)
            for key in ("kernel_size", "stride", "padding", "dilation"):
                fields[key] = tuple(fields[key]) if isinstance(fields[key], list | tuple) else fields[key]
            if _is_int(fields.get("alpha")):
                fields["alpha"] = float(fields["alpha"])
            targets.append(LoRATarget(**fields))
        return cls(targets=tuple(targets), base_num_params=data["base_num_params"])

    def summary(self) -> str:
        """A plain-text table: one row per target, then the total and its share of the base."""
        header = f"{'layer':<32} {'kind':<6} {'in':>5} {'out':>5} {'kernel':>6} {'stride':>6} {'dil':>4} {'rank':>4} {'alpha':>6} {'params':>9}"
        lines = [header, "-" * len(header)]
        for t in self.targets:
            kernel = "x".join(map(str, t.kernel_size))
            stride = "x".join(map(str, t.stride))
            dil = "x".join(map(str, t.dilation))
            lines.append(
                f"{t.name:<32} {t.kind:<6} {t.in_features:>5} {t.out_features:>5} {kernel:>6} {stride:>6} "
                f"{dil:>4} {t.rank:>4} {t.alpha:>6g} {t.num_params:>9,}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{len(self.targets)} targets, {self.num_params:,} adapter parameters per video = "
            f"{100 * self.fraction:.2f}% of the base's {self.base_num_params:,}"
        )
        return "\n".join(lines)


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _resolve_padding(module: nn.Conv2d, name: str) -> tuple[int, int]:
    """Conv padding as two ints; 'same' is resolved when it is symmetric (odd effective kernel)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0)
        pads = []
        for k, d in zip(module.kernel_size, module.dilation, strict=True):
            total = d * (k - 1)
            if total % 2:
                raise ValueError(
                    f"layer {name!r}: padding='same' with kernel {module.kernel_size} and dilation "
                    f"{module.dilation} pads asymmetrically, which the LoRA engine does not support; "
                    f"exclude the layer (exclude=[{name!r}])"
                )
            pads.append(total // 2)
        return (pads[0], pads[1])
    return (int(module.padding[0]), int(module.padding[1]))


def _make_target(module: nn.Module, name: str, rank: int, alpha: float) -> LoRATarget:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"layer {name!r} is a grouped Conv2d (groups={module.groups}); the LoRA engine adapts only "
                f"groups=1 convolutions: exclude it (exclude=[{name!r}]) or narrow `include`"
            )
        return LoRATarget(
            name=name,
            kind="conv",
            in_features=module.in_channels,
            out_features=module.out_channels,
            kernel_size=(int(module.kernel_size[0]), int(module.kernel_size[1])),
            stride=(int(module.stride[0]), int(module.stride[1])),
            padding=_resolve_padding(module, name),
            dilation=(int(module.dilation[0]), int(module.dilation[1])),
            rank=rank,
            alpha=alpha,
            padding_mode=module.padding_mode,
        )
    return LoRATarget(
        name=name,
        kind="linear",
        in_features=module.in_features,
        out_features=module.out_features,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        rank=rank,
        alpha=alpha,
    )


def find_targets(
    model: nn.Module,
    *,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    rank: int = 4,
    alpha: float | None = None,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> LoRASpec:
    """Pick the layers to adapt by fnmatch patterns on their dotted module names.

    A wildcard pattern sweeps past containers and activations silently, but a grouped conv it
    matches is an error (silently skipping it would leave a layer unadapted without anyone
    knowing); a pattern without wildcards must name a Conv2d or Linear. `overrides` maps a
    pattern to {"rank": r, "alpha": a}; the first matching pattern wins; alpha None means
    alpha = rank (scaling 1). The global `rank` is capped per layer at the layer's largest
    possible rank, min(in * kh * kw, out), keeping alpha / rank; a rank set by `overrides` larger
    than that is an error.
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise ValueError(
            "find_targets: `include` and `exclude` are sequences of patterns, e.g. include=['body.*']"
        )
    overrides = dict(overrides or {})
    for pattern, values in overrides.items():
        unknown = set(values) - {"rank", "alpha"}
        if unknown:
            raise ValueError(
                f"overrides[{pattern!r}] has unknown keys {sorted(unknown)}; allowed: 'rank', 'alpha'"
            )
    all_names = [name for name, _ in model.named_modules() if name]
    include_hits = dict.fromkeys(include, 0)
    override_hits = dict.fromkeys(overrides, 0)
    targets: list[LoRATarget] = []
    for name, module in model.named_modules():
        if not name:
            continue  # the root itself has no name to hook or save under
        matching = [p for p in include if fnmatch.fnmatchcase(name, p)]
        if not matching or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        supported = isinstance(module, nn.Conv2d | nn.Linear)
        if not supported:
            exact = [p for p in matching if not _has_wildcard(p)]
            if exact:
                raise ValueError(
                    f"include pattern {exact[0]!r} names layer {name!r}, a {type(module).__name__}; "
                    "the LoRA engine adapts only nn.Conv2d (groups=1) and nn.Linear"
                )
            continue
        for p in matching:
            include_hits[p] += 1
        layer_rank, layer_alpha, source = rank, alpha, "rank"
        for pattern in overrides:
            override_hits[pattern] += fnmatch.fnmatchcase(name, pattern)
        for pattern, values in overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                if "rank" in values:
                    layer_rank, source = values["rank"], f"overrides[{pattern!r}]['rank']"
                if "alpha" in values:
                    layer_alpha = values["alpha"]
                break
        if not isinstance(layer_rank, int) or isinstance(layer_rank, bool) or layer_rank < 1:
            raise ValueError(f"{source} must be a positive int, got {layer_rank!r} (layer {name!r})")
        layer_alpha = float(layer_rank if layer_alpha is None else layer_alpha)
        if not (math.isfinite(layer_alpha) and layer_alpha > 0):
            raise ValueError(f"alpha for layer {name!r} must be a finite number > 0, got {layer_alpha}")
        target = _make_target(module, name, layer_rank, layer_alpha)
        max_rank = min(target.in_features * math.prod(target.kernel_size), target.out_features)
        if layer_rank > max_rank and source == "rank":
            # the global rank is a budget, not a promise: a layer too small for it (an RGB output
            # conv, a flow head) gets its full rank, which is already a complete update of it
            capped_alpha = float(max_rank if alpha is None else layer_alpha * max_rank / layer_rank)
            target = _make_target(module, name, max_rank, capped_alpha)
        elif layer_rank > max_rank:
            raise ValueError(
                f"{source}={layer_rank} is too large for layer {name!r} ({target.kind}, in={target.in_features}, "
                f"out={target.out_features}, kernel={target.kernel_size}): the maximum allowed is {max_rank}; "
                f"lower it with overrides={{{name!r}: {{'rank': {max_rank}}}}} or exclude the layer"
            )
        targets.append(target)

    if not targets:
        some = ", ".join(all_names[:12]) + (", ..." if len(all_names) > 12 else "")
        raise ValueError(
            f"no Conv2d/Linear layer of {type(model).__name__} matches include={list(include)} "
            f"exclude={list(exclude)}; modules that exist: {some or '(none)'}"
        )
    unmatched = [p for p, n in include_hits.items() if n == 0]
    if unmatched:
        raise ValueError(
            f"include pattern(s) {unmatched} match no Conv2d/Linear layer of {type(model).__name__} "
            f"(after exclude); targeted layers are e.g. {[t.name for t in targets[:6]]}"
        )
    unused = [p for p, n in override_hits.items() if n == 0]
    if unused:
        raise ValueError(
            f"overrides pattern(s) {unused} match no targeted layer; targeted: {[t.name for t in targets]}"
        )
    base_num_params = sum(p.numel() for p in model.parameters())
    return LoRASpec(targets=tuple(targets), base_num_params=base_num_params)


def init_adapters(
    spec: LoRASpec,
    *,
    num_videos: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Adapters:
    """Fresh adapters that leave the base's output unchanged: A kaiming-uniform(a=sqrt(5)) as in
    PEFT (uniform in +-1/sqrt(fan_in)), B zeros, so training starts exactly at the base."""
    if num_videos < 1:
        raise ValueError(f"init_adapters: num_videos must be >= 1, got {num_videos}")
    adapters: Adapters = {}
    for t in spec.targets:
        bound = 1.0 / math.sqrt(t.in_features * math.prod(t.kernel_size))
        a = torch.empty(num_videos, *t.a_shape, device=device, dtype=dtype).uniform_(
            -bound, bound, generator=generator
        )
        b = torch.zeros(num_videos, *t.b_shape, device=device, dtype=dtype)
        adapters[t.name] = (a, b)
    return adapters


# ----------------------------------------------------------------------------------------------
# Checks shared by apply / merge / save


def _layer_of(model: nn.Module, target: LoRATarget) -> nn.Module:
    """The model's layer for a target, checked to be the layer the spec describes."""
    try:
        module = model.get_submodule(target.name)
    except AttributeError:
        raise AdapterMismatchError(
            f"the spec targets layer {target.name!r}, which {type(model).__name__} does not have"
        ) from None
    found = _describe_layer(module)
    if found != _describe_target(target):
        raise AdapterMismatchError(
            f"layer {target.name!r}: the spec expects {_describe_target(target)}, {type(model).__name__} has {found}"
        )
    return module


def _describe_target(t: LoRATarget) -> str:
    if t.kind == "conv":
        return f"Conv2d {t.in_features}->{t.out_features} kernel {t.kernel_size} stride {t.stride} dilation {t.dilation}"
    return f"Linear {t.in_features}->{t.out_features}"


def _describe_layer(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return (
            f"Conv2d {module.in_channels}->{module.out_channels} kernel {tuple(module.kernel_size)} "
            f"stride {tuple(module.stride)} dilation {tuple(module.dilation)}"
        )
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    return type(module).__name__


def _num_videos(spec: LoRASpec, adapters: Adapters) -> int:
    """Check adapters against the spec (names and shapes) and return their common V."""
    missing = [n for n in spec.names if n not in adapters]
    extra = [n for n in adapters if n not in set(spec.names)]
    if missing or extra:
        raise ValueError(f"adapters do not match the spec: missing {missing}, not in the spec {extra}")
    num_videos = None
    for t in spec.targets:
        a, b = adapters[t.name]
        if a.dim() != len(t.a_shape) + 1 or tuple(a.shape[1:]) != t.a_shape:
            raise ValueError(
                f"adapter {t.name!r}: A has shape {tuple(a.shape)}, expected (V, {', '.join(map(str, t.a_shape))})"
            )
        if b.dim() != len(t.b_shape) + 1 or tuple(b.shape[1:]) != t.b_shape:
            raise ValueError(
                f"adapter {t.name!r}: B has shape {tuple(b.shape)}, expected (V, {', '.join(map(str, t.b_shape))})"
            )
        if a.shape[0] != b.shape[0] or (num_videos is not None and a.shape[0] != num_videos):
            raise ValueError(
                f"adapter {t.name!r}: A and B have {a.shape[0]} and {b.shape[0]} videos, other layers {num_videos}; "
                "every tensor needs the same leading video dimension V"
            )
        num_videos = a.shape[0]
    if num_videos is None:  # no target: LoRASpec refuses one, and so does this guard
        raise ValueError("the spec has no target: it adapts no layer")
    return num_videos
