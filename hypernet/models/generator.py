"""Latents -> LoRA adapters for every target layer of the base.

Each target layer has a learned embedding that queries the video's latents (cross-attention);
the answer goes through output heads that produce that layer's A (down) and B (up). Layers of
the same shape share their heads (the embedding tells them apart), which keeps the generator
small however deep the base is. B is multiplied by a per-layer gate that starts at zero, so at
initialisation every adapter is the identity and the base's output is unchanged; the gate is
the learned output scale (docs/design.md: "a linear output with a zero-initialised scale").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hypernet.models.blocks import Attention, FeedForward
from hypernet.models.lora import Adapters, LoRASpec, delta_weight


class LayerQuery(nn.Module):
    """One query per target layer attends over the latents: (V, M, d) -> (V, L, d)."""

    def __init__(self, *, num_layers: int, dim: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(num_layers, dim) * 0.02)
        self.norm_latents = nn.LayerNorm(dim)
        self.attention = Attention(dim=dim, num_heads=num_heads, init="xavier")
        self.feed_forward = FeedForward(dim=dim, hidden=2 * dim, activation="leaky_relu")

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        queries = self.embedding.expand(latents.shape[0], -1, -1)
        hidden = queries + self.attention(queries, self.norm_latents(latents))
        return hidden + self.feed_forward(hidden)


class LoRAGenerator(nn.Module):
    """latents (V, M, dim) -> adapters {layer: (A (V, *a_shape), B (V, *b_shape))}.

    static=True ignores the latents (one learned adapter shared by all videos): the "static
    shared LoRA, same budget" control of docs/design.md."""

    def __init__(self, *, spec: LoRASpec, dim: int, num_heads: int = 4, static: bool = False):
        super().__init__()
        self.spec = spec
        self.static = static
        self.query = LayerQuery(num_layers=len(spec.targets), dim=dim, num_heads=num_heads)
        self.norm = nn.LayerNorm(dim)
        shapes = sorted({(t.a_shape, t.b_shape) for t in spec.targets})
        self.shape_of = {t.name: shapes.index((t.a_shape, t.b_shape)) for t in spec.targets}
        # the target layers (their indices) each pair of heads serves
        self.layers_of = [
            [i for i, t in enumerate(spec.targets) if self.shape_of[t.name] == group]
            for group in range(len(shapes))
        ]
        self.heads_a = nn.ModuleList(nn.Linear(dim, math.prod(a)) for a, _ in shapes)
        self.heads_b = nn.ModuleList(nn.Linear(dim, math.prod(b)) for _, b in shapes)
        self.gates = nn.Parameter(torch.zeros(len(spec.targets)))
        if static:
            self.static_latents = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, latents: torch.Tensor) -> Adapters:
        if self.static:
            latents = self.static_latents.expand(latents.shape[0], -1, -1)
        hidden = self.norm(self.query(latents))  # (V, L, dim)
        made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # one call of each head for all the layers it serves rather than one per layer (3 calls of
        # each head instead of 11 for hyper_content's window base): the same numbers to float rounding
        for group, layers in enumerate(self.layers_of):
            a_shape, b_shape = self.spec.targets[layers[0]].a_shape, self.spec.targets[layers[0]].b_shape
            served = hidden.transpose(0, 1)[layers]  # (layers, V, dim): each layer's adapters contiguous
            # unit-gain down-projection whatever the layer's fan-in; B starts at zero via the gate
            a = self.heads_a[group](served) / math.sqrt(math.prod(a_shape[1:]))
            b = self.heads_b[group](served) * self.gates[layers][:, None, None]
            for i, a_i, b_i in zip(layers, a.unbind(0), b.unbind(0), strict=True):
                made[i] = (a_i.view(-1, *a_shape), b_i.view(-1, *b_shape))
        return {target.name: made[i] for i, target in enumerate(self.spec.targets)}


def adapter_spread(spec: LoRASpec, adapters: Adapters, *, eps: float = 1e-12) -> torch.Tensor:
    """How much the adapters differ between videos relative to their size, averaged over layers:
    mean_v ||dW_v - mean(dW)|| / mean_v ||dW_v||. 0 = the same adapter for every video (collapse)."""
    spreads = []
    for target in spec.targets:
        delta = delta_weight(target, *adapters[target.name]).flatten(1)  # (V, numel)
        size = delta.norm(dim=1).mean()
        if size <= eps:
            continue
        spreads.append((delta - delta.mean(0, keepdim=True)).norm(dim=1).mean() / size)
    return torch.stack(spreads).mean() if spreads else torch.zeros(())
