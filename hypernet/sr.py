"""The super-resolution every stage computes and compares: the base's SR with per-video adapters
(`adapted_sr`), the losses that train it (Charbonnier against HR; self-supervised from the LR
video alone), the bicubic baseline, and crops of outputs side by side for a person to look at.
Used by both LightningModules (systems/), per-video fitting (adaptation.py), eval and the
scripts."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from hypernet.data.degrade import imresize
from hypernet.models.lora import Adapters, LoRASpec, apply_adapters


def charbonnier(sr: torch.Tensor, hr: torch.Tensor, *, eps: float = 1e-3) -> torch.Tensor:
    """The robust L1 of BasicVSR / EDVR: sqrt((sr - hr)^2 + eps^2), averaged."""
    return torch.sqrt((sr - hr) ** 2 + eps * eps).mean()


def adapted_sr(
    base: nn.Module,
    spec: LoRASpec,
    adapters: Adapters | None,
    lr: torch.Tensor,
    *,
    per_video_weights: bool = False,
) -> torch.Tensor:
    """The base's SR of lr (V, T, C, h, w), each video with its own adapters (None: the base
    alone). per_video_weights: fold each adapter into a per-video weight, the cheaper way to
    train through (equal to float rounding); otherwise LoRA branches by hooks, so that a zero
    adapter leaves the base's output bit-identical."""
    if adapters is None:
        return base(lr)
    with apply_adapters(base, spec, adapters, per_video_weights=per_video_weights):
        return base(lr)


def self_supervised_loss(
    base: nn.Module, spec: LoRASpec, adapters: Adapters, lr: torch.Tensor
) -> torch.Tensor:
    """ZSSR-style loss from the LR video alone: its frames degraded once more (bicubic down by the
    scale) and upscaled back by the adapted base should give the LR frames again."""
    scale = base.scale
    lower = imresize(lr, scale=1 / scale).clamp(0, 1)
    height, width = lower.shape[-2] * scale, lower.shape[-1] * scale
    return charbonnier(adapted_sr(base, spec, adapters, lower), lr[..., :height, :width])


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, *, radius: int = 4) -> torch.Tensor:
    """(..., H, W) blurred by a Gaussian whose sigma is a tensor (so it can be learned), two 1-D
    passes, reflect padding; H and W must exceed the radius."""
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(taps**2) / (2 * sigma.to(x.dtype) ** 2))
    g = g / g.sum()
    flat = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (radius,) * 4, mode="reflect")
    flat = F.conv2d(F.conv2d(flat, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return flat.view(x.shape)


# Immerkaer's operator: a difference of two Laplacians that cancels smooth image structure and
# keeps white noise (Immerkaer 1996, "Fast noise variance estimation")
IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_level(frames: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each of V videos' noise sigma (V,), estimated from its LR frames (V, K, C, h, w) by
    Immerkaer's method per channel, the frames averaged with `weights` (V, K). Texture adds to it
    (a clean detailed frame reads about 0.005), so its users scale it by a learned gain."""
    v, k, c, h, w = frames.shape
    kernel = IMMERKAER.to(frames)[None, None].expand(c, 1, 3, 3)
    response = F.conv2d(frames.reshape(v * k, c, h, w), kernel, groups=c)
    sigma = (math.sqrt(math.pi / 2) / 6) * response.abs().mean(dim=(1, 2, 3)).reshape(v, k)
    weights = torch.ones_like(sigma) if weights is None else weights.to(sigma.dtype)
    return (sigma * weights).sum(1) / weights.sum(1).clamp_min(1)


@functools.lru_cache(maxsize=8)
def noise_pattern(shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The inner loss's fixed noise (seed 0), drawn on the CPU so that it is the same on every
    device, and kept: an inner step would otherwise draw and copy it again."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def inner_inputs(
    frames: torch.Tensor,
    *,
    scale: int,
    blur_sigma: torch.Tensor | None = None,
    noise_sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """The inputs of the refine steps' pairs: V videos' LR frames (V, K, C, h, w) degraded once
    more (blurred by blur_sigma when given, MATLAB bicubic down by the scale, with noise of each
    video's noise_sigma (V,) when given), (V, K, C, h/s, w/s); their targets are the frames
    themselves (ZSSR's pairs; from a close-up, the detail a wider view of it lacks). Downscaling
    averages a frame's noise away, so without noise_sigma the pairs teach a noisy video's adapters
    to upscale clean input, not the noisy frames they will meet. The noise is one fixed pattern
    (seed 0) for every video, so that a video's steps are the same in any batch and on any run.
    The adapters do not change them: made once, before the steps."""
    source = frames if blur_sigma is None else gaussian_blur(frames, blur_sigma)
    lower = imresize(source, scale=1 / scale)
    if noise_sigma is not None:
        pattern = noise_pattern(lower.shape[1:], lower.device, lower.dtype)
        lower = lower + noise_sigma.to(lower.dtype).reshape(-1, 1, 1, 1, 1) * pattern
    return lower.clamp(0, 1)


def inner_loss(
    base: nn.Module,
    spec: LoRASpec,
    adapters: Adapters,
    frames: torch.Tensor,
    inputs: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The refine steps' loss: the pairs' `inputs` (inner_inputs of `frames`, V videos' LR frames
    (V, K, C, h, w)) upscaled by the adapted base should give the frames again. A video's frames
    are averaged, weighted by `weights` (V, K) (its close-ups alone, say; none: every frame), and
    the videos summed, so a video's steps do not depend on which other videos share its batch."""
    height, width = inputs.shape[-2] * base.scale, inputs.shape[-1] * base.scale
    upscaled = adapted_sr(base, spec, adapters, inputs)
    error = torch.sqrt((upscaled - frames[..., :height, :width]) ** 2 + 1e-6).mean(dim=(-3, -2, -1))  # (V, K)
    weights = torch.ones_like(error) if weights is None else weights.to(error.dtype)
    return ((error * weights).sum(1) / weights.sum(1).clamp_min(1)).sum()


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: MATLAB-style bicubic of (B, T, C, h, w)."""
    return imresize(lr, scale=scale).clamp(0, 1)


def side_by_side(*images: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Centre crops of equal-size images (C, H, W) joined left to right with a 2-pixel gap."""
    crops = []
    for image in images:
        h, w = image.shape[-2:]
        s = min(size, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crops.append(image[:, top : top + s, left : left + s])
        crops.append(torch.ones(image.shape[0], s, 2))
    return torch.cat(crops[:-1], dim=-1)
