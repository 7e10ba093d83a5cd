"""Per-video LoRA fitted by gradient descent: the oracle (on the video's own HR frames), the
self-supervised baseline (on its LR frames alone), and the engine of `python -m hypernet.finetune`.
The base stays frozen; only the adapters move."""

from __future__ import annotations

import torch
from torch import nn

from hypernet.models.lora import Adapters, LoRASpec, init_adapters
from hypernet.systems.common import adapted_sr, charbonnier, self_supervised_loss


def finetune_adapters(
    base: nn.Module,
    spec: LoRASpec,
    lr: torch.Tensor,
    *,
    hr: torch.Tensor | None = None,
    steps: int = 100,
    learning_rate: float = 1e-3,
    init: Adapters | None = None,
    seed: int = 0,
) -> Adapters:
    """Adapters for ONE video fitted with Adam: lr (B, T, C, h, w) holds B clips of that video,
    hr (B, T, C, sh, sw) or None.

    With hr: the SR loss on those frames (the oracle: it sees the answer). Without: the
    self-supervised loss on the LR frames alone. The base stays frozen; only A and B move."""
    if lr.ndim != 5:
        raise ValueError(f"finetune_adapters takes clips (B, T, C, h, w), got {tuple(lr.shape)}")
    generator = torch.Generator().manual_seed(seed)
    start = (
        init if init is not None else init_adapters(spec, num_videos=1, generator=generator, dtype=lr.dtype)
    )
    leaves = {
        k: (a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
        for k, (a, b) in start.items()
    }
    optimizer = torch.optim.Adam([t for pair in leaves.values() for t in pair], lr=learning_rate)
    for _ in range(steps):
        with torch.enable_grad():
            if hr is not None:
                loss = charbonnier(adapted_sr(base, spec, leaves, lr), hr)
            else:
                loss = self_supervised_loss(base, spec, leaves, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
    return {k: (a.detach(), b.detach()) for k, (a, b) in leaves.items()}
