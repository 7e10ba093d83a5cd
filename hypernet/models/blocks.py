"""The two transformer pieces the hypernetwork is made of, in one place: multi-head attention of
queries over a context, and the feed-forward after it. The encoder's latent blocks (self-
attention), its streaming pooler (latent queries over a video's tokens, folded chunk by chunk
with an online softmax) and the generator's layer queries (one query per target layer over the
latents) all use these; each applies its own pre-norms, because what is normalised differs
(learned queries are not, activations are)."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Multi-head attention, queries (V, M, dim) over a context (V, L, dim) -> (V, M, dim).

    The projections are separate for the streaming pooler, which takes the heads of its queries
    and of each chunk of tokens itself (`heads_q`, `heads_kv`) and projects the pooled result
    back with `to_out`."""

    def __init__(self, *, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be a multiple of its {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def heads_q(self, queries: Tensor) -> Tensor:
        """(..., M, dim) -> (..., H, M, d)."""
        return rearrange(self.to_q(queries), "... m (h d) -> ... h m d", h=self.num_heads)

    def heads_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(V, L, dim) -> keys and values (V, H, L, d)."""
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        return k, v

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        k, v = self.heads_kv(context)
        out = F.scaled_dot_product_attention(self.heads_q(queries), k, v)  # (V, H, M, d)
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
