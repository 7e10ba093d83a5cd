"""Sliding-window early-fusion VSR (VESPCN / EDVR-lite spirit).

Each output frame sees its 2r+1 neighbours stacked along channels; the convolutions then run
on every window of the clip at once, laid out video-major as "(b t)", which is the layout the
LoRA engine expects for per-video adapters.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from hypernet.models.base.common import PixelShuffleUpsampler, ResidualBlock, upsample_skip


class WindowVSR(nn.Module):
    def __init__(
        self,
        *,
        scale: int = 4,
        num_frames: int = 3,
        channels: int = 32,
        num_blocks: int = 4,
        in_channels: int = 3,
        upsampler: str = "progressive",
    ):
        super().__init__()
        if num_frames < 1 or num_frames % 2 == 0:
            raise ValueError(f"model.num_frames must be odd and >= 1 (a centred window), got {num_frames}")
        self.scale = scale
        self.num_frames = num_frames
        self.conv_first = nn.Conv2d(in_channels * num_frames, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(*[ResidualBlock(channels=channels) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsampler = PixelShuffleUpsampler(
            channels=channels, scale=scale, out_channels=in_channels, mode=upsampler
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        b, t = lr.shape[:2]
        radius = self.num_frames // 2
        # neighbour indices, replicated at the clip's ends: (t, 2r+1)
        offsets = torch.arange(-radius, radius + 1, device=lr.device)
        index = (torch.arange(t, device=lr.device)[:, None] + offsets).clamp(0, t - 1)
        windows = rearrange(lr[:, index], "b t n c h w -> (b t) (n c) h w")
        feat = self.act(self.conv_first(windows))
        feat = feat + self.conv_body(self.body(feat))
        centre = rearrange(lr, "b t c h w -> (b t) c h w")
        sr = self.upsampler(feat) + upsample_skip(centre, self.scale)
        return rearrange(sr, "(b t) c h w -> b t c h w", b=b)
