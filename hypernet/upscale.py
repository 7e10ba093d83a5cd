"""A video upscaled as a stream of chunks by a base network with its adapters already merged:
memory is one chunk plus the context around it, whatever the video's length.

Chunks are upscaled with `overlap` frames of context on each side whose outputs are dropped.
A sliding-window base whose window radius is at most `overlap` then gives exactly the frames
it gives on the whole video at once. A recurrent base is approximate at chunk boundaries: its
propagation restarts in every chunk and sees only `overlap` frames beyond it (a larger
`chunk_size` makes the boundaries rarer).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from hypernet.data.video_io import to_tensor, to_uint8


def upscale_frames(
    base: nn.Module,
    chunks: Iterable[np.ndarray],
    *,
    overlap: int = 2,
    device: torch.device | str = "cpu",
) -> Iterator[np.ndarray]:
    """Upscale a video given as uint8 chunks (t, h, w, 3), yielding uint8 chunks (t, s*h, s*w, 3).

    `base` is any VSR network (1, T, 3, h, w) -> (1, T, 3, s*h, s*w), adapters already merged.
    Each call sees the frames of a chunk plus up to `overlap` frames on each side (fewer at the
    video's ends, exactly as the whole video would); their outputs are dropped. Memory holds one
    chunk plus 2 * overlap frames.
    """
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 frames, got {overlap}")
    pending: np.ndarray | None = None  # (left + waiting, h, w, 3): left context, then frames to emit
    left = 0  # leading frames of `pending` already emitted, kept as context only
    with torch.no_grad():
        for chunk in chunks:
            pending = chunk if pending is None else np.concatenate([pending, chunk])
            ready = len(pending) - left - overlap  # frames whose right context has arrived
            if ready <= 0:
                continue
            sr = base(to_tensor(pending, device=device))  # (1, left + ready + overlap, 3, H, W)
            yield to_uint8(sr[:, left : left + ready])
            keep = min(overlap, left + ready)  # the last emitted frames become the next left context
            pending, left = pending[left + ready - keep :], keep
        if pending is not None and len(pending) > left:  # the video's last frames: no right context
            yield to_uint8(base(to_tensor(pending, device=device))[:, left:])
