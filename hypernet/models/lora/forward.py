"""The batched per-video forward: while `apply_adapters` is active, every target layer adds its
LoRA branch with each sample's own video's adapter (forward hooks), or runs with each video's
adapter folded into its own copy of the weight (per-video weights). The model is never edited."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from hypernet.models.lora.spec import Adapters, LoRASpec, LoRATarget, _layer_of, _num_videos


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


def _per_video_weight(weight: Tensor, target: LoRATarget, a: Tensor, b: Tensor) -> Tensor:
    """W + scaling * B_v @ A_v for every video v, (V, *W.shape), as ONE fused batched matmul-add
    (baddbmm) over the weight seen as (out, in*kh*kw): the numbers of W + `delta_weight` to float
    rounding at under half its cost, forward and backward, for every layer of every step."""
    num_videos, rank = a.shape[:2]
    folded = torch.baddbmm(
        weight.reshape(weight.shape[0], -1), b, a.reshape(num_videos, rank, -1), alpha=target.scaling
    )
    return folded.view(num_videos, *weight.shape)


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
        weight = _per_video_weight(layer.weight, target, a.to(x.dtype), b.to(x.dtype))  # (V, *W.shape)
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
