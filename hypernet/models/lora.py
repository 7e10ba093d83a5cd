"""The LoRA engine: per-video low-rank adapters on any `nn.Module`, without editing its code.

The hypernetwork outputs one LoRA per video for every target layer of a frozen base network.
Training it needs three things an ordinary LoRA library does not give:

- several videos in one batch, each frame using *its own video's* adapter, computed batched
  (one grouped convolution and one batched matmul per layer, never a Python loop over videos);
- adapters that are plain tensors supplied per forward call (they are the hypernetwork's
  output), so the gradient of the SR loss flows into them and on into the hypernetwork;
- nothing injected into the base: forward hooks live only inside `apply_adapters`.

Layout rule: adapters carry a leading video dimension V, and a target layer's input batch N is
video-major, sample n belonging to video n // (N // V). A sliding-window base that runs its
convolutions on rearrange(x, "b t c h w -> (b t) c h w") has N = V*T; a recurrent base that
runs them one time step at a time on (b, c, h, w) has N = V. Both work unchanged.

Conv LoRA follows the literature (and PEFT): a k x k down-convolution to rank r with the layer's
stride, padding and dilation, then a 1 x 1 up-convolution, scaled by alpha / r. Because both are
linear and the up-projection is 1 x 1, the pair folds exactly into the layer's weight
(W + scaling * B @ A over the rank), which is what `merge_adapters` does for inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from hypernet.files import atomic_write_bytes

FORMAT = "hypernet-lora/1"
MERGE_PREFIX = "merge."  # tensors of a learned merge stored in an adapter file
HYPERNET_PREFIX = "hypernet:"  # merge weights of the hypernetwork's adapter, beside the file's own
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"

Adapters = dict[str, tuple[Tensor, Tensor]]  # name -> (A (V, *a_shape), B (V, *b_shape))


class AdapterMismatchError(ValueError):
    """Adapters were made for a different base network than the one given."""


class AdapterFileError(ValueError):
    """An adapter file is missing, truncated, corrupt or not a hypernet adapter file."""


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


# ----------------------------------------------------------------------------------------------
# Batched per-video forward


def _add_lora(output: Tensor, x: Tensor, target: LoRATarget, a: Tensor, b: Tensor) -> Tensor:
    """output + scaling * up(down(x)) for a video-major batch x (V*n, ...), A (V, ...), B (V, out, r).

    The conv down-projection is ONE grouped convolution: the batch (V*n, c, h, w) is viewed,
    without a copy, as a single sample (1, (V*n)*c, h, w), and each of the V*n groups gets its
    own video's A (weights expanded n times, a small copy). The up-projection and the add are
    one fused batched matmul per sample (baddbmm), so no activation is transposed or copied.
    """
    num_videos = a.shape[0]
    n_total = x.shape[0] if x.dim() > 1 else 1
    if n_total % num_videos:
        raise ValueError(
            f"layer {target.name!r}: its input batch of {n_total} samples is not a multiple of the "
            f"{num_videos} videos the adapters hold; the batch must be video-major, V*n samples"
        )
    n = n_total // num_videos
    a = a.to(dtype=x.dtype)
    b = b.to(dtype=x.dtype) * target.scaling
    if target.kind == "linear":
        # every sample of video v (with any inner dims) is a row of a (V, m, in) matrix
        xv = x.reshape(num_videos, -1, target.in_features)
        down = torch.bmm(xv, a.transpose(1, 2))  # (V, m, r)
        out = torch.baddbmm(output.reshape(num_videos, -1, target.out_features), down, b.transpose(1, 2))
        return out.view(output.shape)

    padding = target.padding
    if target.padding_mode != "zeros":
        ph, pw = target.padding
        x = F.pad(x, (pw, pw, ph, ph), mode=target.padding_mode)
        padding = (0, 0)
    if num_videos == 1:
        down = F.conv2d(
            x, a[0], stride=target.stride, padding=padding, dilation=target.dilation
        )  # (N, r, h', w')
    else:
        per_sample_a = rearrange(a[:, None].expand(-1, n, *a.shape[1:]), "v n r c kh kw -> (v n r) c kh kw")
        down = F.conv2d(
            rearrange(x, "N c h w -> 1 (N c) h w"),
            per_sample_a,
            stride=target.stride,
            padding=padding,
            dilation=target.dilation,
            groups=n_total,
        )
        down = rearrange(down, "1 (N r) h w -> N r h w", N=n_total)
    per_sample_b = rearrange(b[:, None].expand(-1, n, -1, -1), "v n o r -> (v n) o r")
    out = torch.baddbmm(
        rearrange(output, "N o h w -> N o (h w)"), per_sample_b, rearrange(down, "N r h w -> N r (h w)")
    )
    return out.view(output.shape)


def _lora_hook(target: LoRATarget, a: Tensor, b: Tensor):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
        x = args[0] if args else kwargs["input"]  # Conv2d/Linear.forward(input)
        return _add_lora(output, x, target, a, b)

    return hook


def _per_video_forward(layer: nn.Module, target: LoRATarget, a: Tensor, b: Tensor):
    """A forward for `layer` with each video's adapter folded into its own copy of the weight,
    W_v = W + scaling * B_v @ A_v, run as ONE grouped convolution (groups = V) or one batched
    matmul. Same result as base output + LoRA branch, at about the base layer's cost: the
    LoRA branch's extra convolution and its backward disappear, and the gradient reaches A and
    B through W_v. The weights are tiny next to the activations, so building W_v costs nothing."""

    def forward(x: Tensor) -> Tensor:
        num_videos = a.shape[0]
        if x.shape[0] % num_videos:
            raise ValueError(
                f"layer {target.name!r}: its input batch of {x.shape[0]} samples is not a multiple of the "
                f"{num_videos} videos the adapters hold; the batch must be video-major, V*n samples"
            )
        weight = layer.weight + delta_weight(target, a.to(x.dtype), b.to(x.dtype))  # (V, *W.shape)
        bias = layer.bias
        if target.kind == "linear":
            out = torch.bmm(x.reshape(num_videos, -1, target.in_features), weight.transpose(1, 2))
            out = out if bias is None else out + bias
            return out.reshape(*x.shape[:-1], target.out_features)
        padding = target.padding
        if target.padding_mode != "zeros":
            ph, pw = target.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=target.padding_mode)
            padding = (0, 0)
        out = F.conv2d(
            rearrange(x, "(v n) c h w -> n (v c) h w", v=num_videos),
            rearrange(weight, "v o i kh kw -> (v o) i kh kw"),
            None if bias is None else bias.repeat(num_videos),
            stride=target.stride,
            padding=padding,
            dilation=target.dilation,
            groups=num_videos,
        )
        return rearrange(out, "n (v o) h w -> (v n) o h w", v=num_videos)

    return forward


@contextlib.contextmanager
def apply_adapters(
    model: nn.Module, spec: LoRASpec, adapters: Adapters, *, per_video_weights: bool = False
) -> Iterator[None]:
    """While active, every target layer's output gets + scaling * up(down(x)), each sample with its
    own video's adapter, and gradients flow into the adapter tensors. The model is never edited.

    per_video_weights=False: forward hooks add the LoRA branch (the PEFT way; removed on exit,
    also on an exception). True: each target layer's forward is swapped, for the duration, for
    one that folds every video's adapter into a per-video weight (`_per_video_forward`); equal to
    float rounding and cheaper to train through (scripts/bench_lora.py)."""
    _num_videos(spec, adapters)
    layers = [(t, _layer_of(model, t)) for t in spec.targets]
    handles = []
    swapped: list[nn.Module] = []
    try:
        for target, layer in layers:
            if per_video_weights:
                layer.forward = _per_video_forward(layer, target, *adapters[target.name])
                swapped.append(layer)
            else:
                hook = _lora_hook(target, *adapters[target.name])
                handles.append(layer.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in swapped:
            del layer.forward  # the class's forward again


# ----------------------------------------------------------------------------------------------
# Merge


def delta_weight(target: LoRATarget, a: Tensor, b: Tensor) -> Tensor:
    """scaling * B @ A in the layer's weight shape (conv: contracted over the rank); any leading
    dimensions (videos) are kept."""
    if target.kind == "conv":
        return torch.einsum("...or,...rikl->...oikl", b, a) * target.scaling
    return (b @ a) * target.scaling


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


# ----------------------------------------------------------------------------------------------
# Fingerprint, save, load


def base_fingerprint(model: nn.Module) -> dict[str, str]:
    """What adapters depend on: the architecture (class + ordered parameter names, shapes and
    dtypes) and the exact weights (a hash of every parameter and buffer)."""
    params = list(model.named_parameters())
    signature = type(model).__name__ + "\n" + "\n".join(f"{n} {tuple(p.shape)} {p.dtype}" for n, p in params)
    weights = hashlib.sha256()
    for name, tensor in [*params, *model.named_buffers()]:
        weights.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        weights.update(data.view(torch.uint8).numpy().tobytes())
    return {
        "architecture": hashlib.sha256(signature.encode()).hexdigest(),
        "weights": weights.hexdigest(),
        "class": type(model).__name__,
        "num_params": str(sum(p.numel() for _, p in params)),
    }


def save_adapters(
    path: str | os.PathLike,
    spec: LoRASpec,
    adapters: Adapters,
    *,
    base: nn.Module,
    video: int | None = None,
    extra_metadata: Mapping[str, str] | None = None,
    merge_columns: Mapping[str, Tensor] | None = None,
) -> None:
    """Write adapters as safetensors (keys "<layer>.lora_A" / "<layer>.lora_B", leading video dim
    kept) with the spec and the base's fingerprint as metadata, atomically. video=None saves all.
    `merge_columns` (a domain adapter's learned merge with the hypernetwork's adapter, from
    `per_video.fit_merge`) are stored beside them as "merge.<key>"."""
    path = Path(path)
    num_videos = _num_videos(spec, adapters)
    if video is not None and not 0 <= video < num_videos:
        raise ValueError(
            f"save_adapters: video={video} is out of range: the adapters hold {num_videos} videos"
        )
    for t in spec.targets:
        _layer_of(base, t)
    metadata = {
        "format": FORMAT,
        "spec": json.dumps(spec.to_dict()),
        "fingerprint": json.dumps(base_fingerprint(base)),
    }
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"save_adapters: extra_metadata key {key!r} is reserved; choose another name")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"save_adapters: extra_metadata must map str to str, got {key!r}: {type(value).__name__}"
            )
        metadata[key] = value
    tensors = {}
    for t in spec.targets:
        a, b = adapters[t.name]
        if video is not None:
            a, b = a[video : video + 1], b[video : video + 1]
        tensors[f"{t.name}.lora_A"] = a.detach().cpu().clone().contiguous()
        tensors[f"{t.name}.lora_B"] = b.detach().cpu().clone().contiguous()
    for key, column in (merge_columns or {}).items():
        tensors[f"{MERGE_PREFIX}{key}"] = column.detach().cpu().float().clone().contiguous()
    if not path.parent.exists():
        raise ValueError(f"save_adapters: folder {str(path.parent)!r} does not exist (writing {str(path)!r})")
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def _check_fingerprint(path: Path, spec: LoRASpec, saved: Mapping[str, str], base: nn.Module) -> None:
    given = base_fingerprint(base)
    if saved.get("architecture") != given["architecture"]:
        detail = ""
        for t in spec.targets:
            try:
                _layer_of(base, t)
            except AdapterMismatchError as err:
                detail = f"; first difference: {err}"
                break
        raise AdapterMismatchError(
            f"{str(path)!r} was made for a different base architecture: the file's base is "
            f"{saved.get('class')} with {saved.get('num_params', '?')} parameters, the given base is "
            f"{given['class']} with {given['num_params']} parameters (architecture hashes differ){detail}"
        )
    if saved.get("weights") != given["weights"]:
        raise AdapterMismatchError(
            f"{str(path)!r} was made for the same architecture ({given['class']}) but different weights: "
            "load the base checkpoint the adapters were trained on (and make sure no adapters are "
            "merged into it), or pass base=None to skip the check"
        )


def load_adapters(
    path: str | os.PathLike, *, base: nn.Module | None = None, device: torch.device | str | None = None
) -> tuple[LoRASpec, Adapters, dict[str, str]]:
    """Read a file written by `save_adapters`; returns (spec, adapters, metadata as stored).
    Everything is checked before it is used, each failure an AdapterFileError naming the file:
    the spec's numbers (LoRATarget), its tensors' shapes and values (finite), and a learned
    merge's weights (one per output channel of a layer it adapts). With `base`, also the
    fingerprint (AdapterMismatchError saying what differs) and every target layer."""
    path = Path(path)
    name = f"adapter file {str(path)!r}"
    if path.is_dir():
        raise AdapterFileError(f"{name} is a folder, not an adapter file; give the .safetensors file")
    if not path.is_file():
        raise AdapterFileError(f"{name} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:
        raise AdapterFileError(f"{name} is truncated, corrupt or not a safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        hint = " (it looks like a PEFT export; load it with PEFT)" if path.name == PEFT_WEIGHTS_NAME else ""
        raise AdapterFileError(
            f"{str(path)!r} is not a hypernet adapter file: metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT!r}{hint}"
        )
    try:
        fingerprint = json.loads(metadata["fingerprint"])
        raw_spec = json.loads(metadata["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterFileError(f"{name} has unreadable 'spec'/'fingerprint' metadata ({err})") from None
    try:
        spec = LoRASpec.from_dict(raw_spec)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise AdapterFileError(
            f"{name}: its stored spec is not valid ({type(err).__name__}: {err}); the file was altered or "
            "not written by this project: make the adapter again"
        ) from None
    adapters: Adapters = {}
    for t in spec.targets:
        try:
            a, b = tensors[f"{t.name}.lora_A"], tensors[f"{t.name}.lora_B"]
        except KeyError as err:
            raise AdapterFileError(f"{name} lacks tensor {err} named in its spec") from None
        for key, tensor in ((f"{t.name}.lora_A", a), (f"{t.name}.lora_B", b)):
            if not tensor.is_floating_point():
                raise AdapterFileError(f"{name}: tensor {key!r} holds {tensor.dtype} values, not floats")
            if not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise AdapterFileError(
                    f"{name}: tensor {key!r} holds {bad} NaN or inf values "
                    f"(of {tensor.numel()}); it would turn the video black: fit or predict the adapters again"
                )
        adapters[t.name] = (
            a.to(device) if device is not None else a,
            b.to(device) if device is not None else b,
        )
    try:
        _num_videos(spec, adapters)
    except ValueError as err:
        raise AdapterFileError(f"{name} does not match its own spec: {err}") from None
    columns = {k[len(MERGE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MERGE_PREFIX)}
    _check_merge(name, spec, columns)
    if base is not None:
        _check_fingerprint(path, spec, fingerprint, base)
        for t in spec.targets:  # a fingerprint can match while the spec was edited
            try:
                _layer_of(base, t)
            except AdapterMismatchError as err:
                raise AdapterMismatchError(f"{name} does not fit this base: {err}") from None
        for key, column in columns.items():
            if key.startswith(HYPERNET_PREFIX):
                out_features = _out_features(base, key[len(HYPERNET_PREFIX) :], name)
                _check_column(name, key, column, out_features)
    return spec, adapters, metadata


def _check_merge(name: str, spec: LoRASpec, columns: Mapping[str, Tensor]) -> None:
    """A learned merge stored in a file (keys "<layer>" for its own layers, "hypernet:<layer>"
    for the hypernetwork's): none at all, or one weight per output channel of every layer the
    file adapts plus some of the hypernetwork's, every weight finite. Without this check a
    merge of the wrong length fails deep in the stacking, as a traceback."""
    if not columns:
        return
    own = {k: v for k, v in columns.items() if not k.startswith(HYPERNET_PREFIX)}
    if set(own) != set(spec.names) or len(own) == len(columns):
        raise AdapterFileError(
            f"{name}: its learned merge must weight each of its own layers and some of the hypernetwork's; "
            f"it weights {sorted(columns)[:8]} for the layers {list(spec.names)[:8]}: fit the merge again "
            "(finetune --merge-steps)"
        )
    for key, column in columns.items():  # the hypernetwork's layers: their sizes need the base
        _check_column(name, key, column, spec[key].out_features if key in own else column.numel())


def _check_column(name: str, key: str, column: Tensor, out_features: int) -> None:
    if tuple(column.shape) != (out_features,) or not column.is_floating_point():
        raise AdapterFileError(
            f"{name}: merge weights {MERGE_PREFIX + key!r} have shape {tuple(column.shape)} ({column.dtype}), "
            f"but the layer has {out_features} output channels, one float weight each: fit the merge again"
        )
    if not torch.isfinite(column).all():
        raise AdapterFileError(f"{name}: merge weights {MERGE_PREFIX + key!r} hold NaN or inf values")


def _out_features(base: nn.Module, layer_name: str, name: str) -> int:
    """Output channels of a layer of `base` that a file's learned merge weights."""
    try:
        layer = base.get_submodule(layer_name)
    except AttributeError:
        layer = None
    if not isinstance(layer, nn.Conv2d | nn.Linear):
        raise AdapterMismatchError(
            f"{name} does not fit this base: its learned merge weights the hypernetwork's adapter on layer "
            f"{layer_name!r}, which {type(base).__name__} has no Conv2d or Linear of"
        )
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def load_merge_columns(path: str | os.PathLike) -> dict[str, Tensor] | None:
    """The learned merge stored in an adapter file (see `save_adapters`), or None when it holds
    none. Read after `load_adapters`, which has checked the file."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
        keys = [k for k in f.keys() if k.startswith(MERGE_PREFIX)]  # noqa: SIM118
        columns = {k[len(MERGE_PREFIX) :]: f.get_tensor(k) for k in keys}
    return columns or None


# ----------------------------------------------------------------------------------------------
# PEFT export


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
