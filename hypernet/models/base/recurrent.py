"""Bidirectional recurrent VSR in the BasicVSR family.

Features are propagated backward then forward through the clip. BasicVSR aligns with a
pretrained SPyNet; nothing can be downloaded here, so alignment is a small flow estimator
trained from scratch, its last layer zero-initialised so training starts from "no motion".
The convolutions run one time step at a time on (b, c, h, w): video-major with one sample
per video, which the LoRA engine handles like any other batch.
"""

from __future__ import annotations

import torch
from torch import nn

from hypernet.models.base.common import PixelShuffleUpsampler, ResidualBlock, flow_warp, upsample_skip


class FlowEstimator(nn.Module):
    """(frame, neighbour) -> flow (b, 2, h, w) in pixels that warps the neighbour onto the frame."""

    def __init__(self, *, channels: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * in_channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_flow = nn.Conv2d(channels, 2, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        nn.init.zeros_(self.conv_flow.weight)
        nn.init.zeros_(self.conv_flow.bias)

    def forward(self, frame: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(torch.cat([frame, neighbour], dim=1)))
        return self.conv_flow(self.act(self.conv2(x)))


class PropagationBranch(nn.Module):
    """One direction of propagation: (frame, aligned hidden state) -> new hidden state."""

    def __init__(self, *, channels: int, num_blocks: int, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels + channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(*[ResidualBlock(channels=channels) for _ in range(num_blocks)])

    def forward(self, frame: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(self.conv_in(torch.cat([frame, hidden], dim=1))))


class RecurrentVSR(nn.Module):
    def __init__(
        self,
        *,
        scale: int = 4,
        channels: int = 24,
        num_blocks: int = 3,
        flow_channels: int = 16,
        in_channels: int = 3,
        upsampler: str = "progressive",
    ):
        super().__init__()
        self.scale = scale
        self.channels = channels
        self.flow = FlowEstimator(channels=flow_channels, in_channels=in_channels)
        self.backward_branch = PropagationBranch(
            channels=channels, num_blocks=num_blocks, in_channels=in_channels
        )
        self.forward_branch = PropagationBranch(
            channels=channels, num_blocks=num_blocks, in_channels=in_channels
        )
        self.fusion = nn.Conv2d(2 * channels, channels, 1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.upsampler = PixelShuffleUpsampler(
            channels=channels, scale=scale, out_channels=in_channels, mode=upsampler
        )

    def _propagate(self, lr: torch.Tensor, branch: PropagationBranch, order: list[int]) -> list[torch.Tensor]:
        b, t, _, h, w = lr.shape
        hidden = lr.new_zeros(b, self.channels, h, w)
        states: list[torch.Tensor | None] = [None] * t
        previous = None
        for i in order:
            if previous is not None:
                hidden = flow_warp(hidden, self.flow(lr[:, i], lr[:, previous]))
            hidden = branch(lr[:, i], hidden)
            states[i] = hidden
            previous = i
        return states  # type: ignore[return-value]

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        t = lr.shape[1]
        backward = self._propagate(lr, self.backward_branch, list(range(t - 1, -1, -1)))
        forward = self._propagate(lr, self.forward_branch, list(range(t)))
        frames = []
        for i in range(t):
            feat = self.act(self.fusion(torch.cat([forward[i], backward[i]], dim=1)))
            frames.append(self.upsampler(feat) + upsample_skip(lr[:, i], self.scale))
        return torch.stack(frames, dim=1)
