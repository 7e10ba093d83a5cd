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
from torch.nn.utils import skip_init

INITS = ("separate", "qkv", "xavier")


class Attention(nn.Module):
    """Multi-head attention, queries (V, M, dim) over a context (V, L, dim) -> (V, M, dim).

    The projections are separate for the streaming pooler, which takes the heads of its queries
    and of each chunk of tokens itself (`heads_q`, `heads_kv`) and projects the pooled result
    back with `to_out`. `init` is how the initial weights are drawn, which is part of the network
    a seed gives: "separate" (to_q, to_kv, to_out, each a Linear, in that order: the pooler),
    "qkv" (q, k and v drawn as one Linear(dim, 3 dim), then to_out: the latent blocks), "xavier"
    (to_out, then q, k and v as one xavier-uniform matrix; every bias zero: the generator's layer
    queries). Changing a module's draw changes every seed's network."""

    def __init__(self, *, dim: int, num_heads: int, init: str = "separate"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be a multiple of its {num_heads} heads")
        if init not in INITS:
            raise ValueError(f"attention init {init!r}: choose one of {INITS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if init == "separate":
            self.to_q = nn.Linear(dim, dim)
            self.to_kv = nn.Linear(dim, 2 * dim)
            self.to_out = nn.Linear(dim, dim)
            return
        # q, k and v drawn together, then split into to_q and to_kv (made without drawing)
        self.to_q, self.to_kv = skip_init(nn.Linear, dim, dim), skip_init(nn.Linear, dim, 2 * dim)
        if init == "qkv":
            qkv = nn.Linear(dim, 3 * dim)
            self.to_out = nn.Linear(dim, dim)
        else:
            self.to_out = nn.Linear(dim, dim)
            qkv = skip_init(nn.Linear, dim, 3 * dim)
            nn.init.xavier_uniform_(qkv.weight)
            nn.init.zeros_(qkv.bias)
            nn.init.zeros_(self.to_out.bias)
        with torch.no_grad():
            self.to_q.weight.copy_(qkv.weight[:dim])
            self.to_q.bias.copy_(qkv.bias[:dim])
            self.to_kv.weight.copy_(qkv.weight[dim:])
            self.to_kv.bias.copy_(qkv.bias[dim:])

    def heads_q(self, queries: Tensor) -> Tensor:
        """(..., M, dim) -> (..., H, M, d)."""
        return rearrange(self.to_q(queries), "... m (h d) -> ... h m d", h=self.num_heads)

    def heads_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(V, L, dim) -> keys and values (V, H, L, d)."""
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        return k, v

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        if queries is context:  # self-attention: q, k and v in one matrix product
            weight = torch.cat([self.to_q.weight, self.to_kv.weight])
            bias = torch.cat([self.to_q.bias, self.to_kv.bias])
            q, k, v = rearrange(
                F.linear(queries, weight, bias), "b m (three h d) -> three b h m d", three=3, h=self.num_heads
            )
        else:
            q, (k, v) = self.heads_q(queries), self.heads_kv(context)
        out = F.scaled_dot_product_attention(q, k, v)  # (V, H, M, d)
        return self.to_out(rearrange(out, "b h m d -> b m (h d)"))


class FeedForward(nn.Module):
    """Pre-norm MLP, dim -> hidden -> dim; the caller adds the residual."""

    def __init__(self, *, dim: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        act = {"gelu": nn.GELU(), "leaky_relu": nn.LeakyReLU(0.1)}[activation]
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), act, nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))
