"""The two transformer pieces the hypernetwork is made of, in one place: multi-head attention of
queries over a context, and the feed-forward after it. The encoder's latent blocks (self-
attention), its streaming pooler (latent queries over a video's tokens, folded chunk by chunk
with an online softmax) and the generator's layer queries (one query per target layer over the
latents) all use these; each applies its own pre-norms, because what is normalised differs
(learned queries are not, activations are)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

INITS = ("separate", "fused", "mha")


class Attention(nn.Module):
    """Multi-head attention, queries (V, M, dim) over a context (V, L, dim) -> (V, M, dim).

    The projections are separate for the streaming pooler, which takes the heads of its queries
    and of each chunk of tokens itself (`heads_q`, `heads_kv`) and projects the pooled result
    back with `to_out`. `init` draws the initial weights as each user drew them before this
    class existed ("separate" Linear layers, one "fused" q/k/v Linear, torch's "mha"), so a seed
    gives the same network as it did."""

    def __init__(self, *, dim: int, num_heads: int, init: str = "separate"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be a multiple of its {num_heads} heads")
        if init not in INITS:
            raise ValueError(f"attention init {init!r}: choose one of {INITS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sequence_first = init == "mha"
        if init == "separate":
            self.to_q = nn.Linear(dim, dim)
            self.to_kv = nn.Linear(dim, 2 * dim)
            self.to_out = nn.Linear(dim, dim)
            return
        # the initial weights a fused q/k/v projection, or torch's MultiheadAttention, would draw,
        # in the same order from the same generator: runs from before this class reproduce seed for seed
        self.to_q = nn.Linear(dim, dim, device="meta").to_empty(device="cpu")
        self.to_kv = nn.Linear(dim, 2 * dim, device="meta").to_empty(device="cpu")
        if init == "fused":
            fused = nn.Linear(dim, 3 * dim)
            self.to_out = nn.Linear(dim, dim)
        else:  # "mha": out_proj drawn first, then xavier-uniform q/k/v, zero biases
            self.to_out = nn.Linear(dim, dim)
            fused = nn.Linear(dim, 3 * dim, device="meta").to_empty(device="cpu")
            nn.init.xavier_uniform_(fused.weight)
            nn.init.zeros_(fused.bias)
            nn.init.zeros_(self.to_out.bias)
        with torch.no_grad():
            self.to_q.weight.copy_(fused.weight[:dim])
            self.to_q.bias.copy_(fused.bias[:dim])
            self.to_kv.weight.copy_(fused.weight[dim:])
            self.to_kv.bias.copy_(fused.bias[dim:])

    def heads_q(self, queries: Tensor) -> Tensor:
        """(..., M, dim) -> (..., H, M, d)."""
        return rearrange(self.to_q(queries), "... m (h d) -> ... h m d", h=self.num_heads)

    def heads_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(V, L, dim) -> keys and values (V, H, L, d)."""
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        return k, v

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        if self.sequence_first:
            return self._forward_sequence_first(queries, context)
        if queries is context:  # self-attention: q, k and v in one matrix product, as a fused layer
            weight = torch.cat([self.to_q.weight, self.to_kv.weight])
            bias = torch.cat([self.to_q.bias, self.to_kv.bias])
            q, k, v = rearrange(
                F.linear(queries, weight, bias), "b m (three h d) -> three b h m d", three=3, h=self.num_heads
            )
        else:
            q, (k, v) = self.heads_q(queries), self.heads_kv(context)
        out = F.scaled_dot_product_attention(q, k, v)  # (V, H, M, d)
        return self.to_out(rearrange(out, "b h m d -> b m (h d)"))

    def _forward_sequence_first(self, queries: Tensor, context: Tensor) -> Tensor:
        """The same attention in the order of operations of torch's MultiheadAttention (sequence
        first, keys and values projected together), which the generator used before this class:
        its checkpoints and seeds then give the same numbers, gradients included (sums over rows
        round differently in another order)."""
        (batch, length, dim), source = queries.shape, context.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.to_q(queries.transpose(0, 1))  # (M, V, dim)
        kv = self.to_kv(context.transpose(0, 1))  # (L, V, 2 dim)
        k, v = kv.unflatten(-1, (2, dim)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        q = q.view(length, batch * h, d).transpose(0, 1).view(batch, h, length, d)
        k = k.view(source, batch * h, d).transpose(0, 1).view(batch, h, source, d)
        v = v.view(source, batch * h, d).transpose(0, 1).view(batch, h, source, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.to_out(out.permute(2, 0, 1, 3).reshape(batch * length, dim))
        return out.view(length, batch, dim).transpose(0, 1)


class FeedForward(nn.Module):
    """Pre-norm MLP, dim -> hidden -> dim; the caller adds the residual."""

    def __init__(self, *, dim: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        act = {"gelu": nn.GELU(), "leaky_relu": nn.LeakyReLU(0.1)}[activation]
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), act, nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))
