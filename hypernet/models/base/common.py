"""Building blocks shared by the base VSR networks.

No normalisation layers anywhere: a LoRA changes a layer's output distribution, and running
statistics learned without it would then be wrong (docs/design.md, "Base networks").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv-LeakyReLU-conv with an identity skip (EDSR style, no batch norm)."""

    def __init__(self, *, channels: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


class PixelShuffleUpsampler(nn.Module):
    """features (N, c, h, w) -> RGB residual (N, 3, s*h, s*w) by sub-pixel convolution.

    "progressive" (EDSR/BasicVSR): x2 steps of conv + shuffle on features, then a conv at HR;
    "direct" (ESPCN): one conv to 3*s*s channels and a single shuffle, about 10x cheaper,
    for the CPU-sized configs."""

    def __init__(self, *, channels: int, scale: int, out_channels: int = 3, mode: str = "progressive"):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"model.scale must be 2, 3 or 4, got {scale}")
        if mode not in ("progressive", "direct"):
            raise ValueError(f"model.upsampler must be 'progressive' or 'direct', got {mode!r}")
        layers: list[nn.Module] = []
        if mode == "progressive":
            for step in [2, 2] if scale == 4 else [scale]:
                layers += [
                    nn.Conv2d(channels, channels * step * step, 3, padding=1),
                    nn.PixelShuffle(step),
                    nn.LeakyReLU(0.1, inplace=True),
                ]
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        else:
            layers += [
                nn.Conv2d(channels, out_channels * scale * scale, 3, padding=1),
                nn.PixelShuffle(scale),
            ]
        self.body = nn.Sequential(*layers)
        # the residual starts at zero: an untrained network outputs the interpolated frame
        last = [m for m in self.body if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def upsample_skip(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling of the LR frame, added to the network's residual: the network then
    only learns the detail interpolation misses, and starts out as good as bicubic."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def flow_warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp features (N, c, h, w) by a flow field (N, 2, h, w) given in pixels (x, y)."""
    h, w = feat.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, device=feat.device, dtype=feat.dtype),
        torch.arange(w, device=feat.device, dtype=feat.dtype),
        indexing="ij",
    )
    grid_x = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    grid_y = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=True)
