"""Frames <-> tensors: uint8 (t, H, W, 3) frames and one video of floats in [0, 1], (1, t, 3, H, W)."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange


def to_tensor(chunk: np.ndarray, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames (t, H, W, 3) -> one video of floats in [0, 1], (1, t, 3, H, W)."""
    frames = torch.from_numpy(np.ascontiguousarray(chunk)).to(device).float().div_(255)
    return rearrange(frames, "t h w c -> 1 t c h w")


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """One video of floats (1, t, 3, H, W), clamped to [0, 1] -> uint8 frames (t, H, W, 3)."""
    frames = rearrange(video.clamp(0, 1).mul(255).round(), "1 t c h w -> t h w c")
    return frames.to(torch.uint8).cpu().numpy()
