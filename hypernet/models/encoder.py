"""The streaming whole-video encoder: LR frames of a video -> M latent vectors.

The hypernetwork has to read a whole video, possibly feature length, to say what *this* video
looks like. So the encoder is built to stream: every frame is turned into tokens on its own
(models/tokenizers.py), and M learned latent queries pool all tokens of the video by
cross-attention computed chunk by chunk with a running maximum and running sum per (video,
head, latent), the online softmax of FlashAttention. Time is linear in the video's length,
memory is that of one chunk plus a state of V*H*M*(d+2) numbers, and the result equals encoding
every frame at once (up to float rounding).

What the encoder reads is `hypernet.encoder.source` (docs/design.md, "Interfaces"), and this
module is its one home: `build_encoder`, the `_target_` of configs/hypernet/default.yaml's
encoder, makes the encoder a source asks for: "conv" or "base" (their tokens, plus the LR
statistics), "stats" (the LR statistics alone, a control), or "degradation", which reads no
frames: `DegradationEncoder` turns the video's true degradation parameters into latents (the
ceiling control).

Layouts: frames (V, n, C, h, w) in [0, 1], V videos of n frames; times (V, n) in [0, 1], the
frame's position in its video, index / (num_frames - 1), so its encoding does not depend on
how the video was cut into chunks. Tokens are (V, L, dim), latents (V, M, dim).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from hypernet.models.blocks import Attention, FeedForward
from hypernet.models.tokenizers import (
    BaseActivationTokenizer,
    ConvTokenizer,
    EncoderInputError,
    LRStats,
    RunningNorm,
    TimeEncoding,
)

FRAME_SOURCES = ("conv", "base", "stats")  # stats: the LR statistics tokens alone, no content features
SOURCES = (*FRAME_SOURCES, "degradation")  # degradation: the true degradation parameters, no frames


# ----------------------------------------------------------------------------------------------
# Small pieces


def check_width(dim: int, num_heads: int) -> None:
    """The latents' width splits evenly into the attention heads."""
    if dim % num_heads:
        raise EncoderInputError(
            f"hypernet.encoder.dim={dim} must be a multiple of hypernet.encoder.num_heads={num_heads}"
        )


def frame_times(num_frames: int, *, start: int = 0, count: int | None = None) -> Tensor:
    """(count,) positions in [0, 1] of frames start..start+count-1 of a video of num_frames frames.

    Use it to stream a video: each chunk gets the times of its own frames, so the encoding does
    not depend on how the video was chunked."""
    if num_frames < 1:
        raise EncoderInputError(f"a video needs at least one frame, got num_frames={num_frames}")
    count = num_frames - start if count is None else count
    if start < 0 or count < 0 or start + count > num_frames:
        raise EncoderInputError(
            f"frames {start}..{start + count - 1} are outside a video of {num_frames} frames"
        )
    index = torch.arange(start, start + count, dtype=torch.float32)
    return index / max(num_frames - 1, 1)


# ----------------------------------------------------------------------------------------------
# Pooling and latent blocks


class PoolState(NamedTuple):
    """Online-softmax state per (video, head, latent): running max m (V, H, M), running sum of
    exp(score - m) s (V, H, M), and the running sum of exp(score - m) * value acc (V, H, M, d)."""

    max: Tensor
    sum: Tensor
    acc: Tensor


class LatentPooler(nn.Module):
    """M learned latent queries attend to all tokens of a video, chunk by chunk.

    For each chunk of tokens: scores (V, H, M, L); m_new = max(m, chunk max);
    acc = acc * exp(m - m_new) + exp(scores - m_new) @ values; s likewise. `finalize` divides,
    projects, adds the result onto the queries and applies a pre-norm MLP. The running max is
    detached: the result does not depend on it, it only keeps exp() in range.
    """

    def __init__(self, *, dim: int, num_latents: int, num_heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(num_latents, dim))
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_tokens = nn.LayerNorm(dim)
        self.attention = Attention(dim=dim, num_heads=num_heads)
        self.feed_forward = FeedForward(dim=dim, hidden=mlp_ratio * dim)

    def init_state(self, num_videos: int, *, device: torch.device | None = None) -> PoolState:
        m, h, d = self.queries.shape[0], self.attention.num_heads, self.attention.head_dim
        device = self.queries.device if device is None else device
        dtype = self.queries.dtype
        return PoolState(
            max=torch.full((num_videos, h, m), -math.inf, device=device, dtype=dtype),
            sum=torch.zeros(num_videos, h, m, device=device, dtype=dtype),
            acc=torch.zeros(num_videos, h, m, d, device=device, dtype=dtype),
        )

    def update(self, state: PoolState, tokens: Tensor) -> PoolState:
        """Fold tokens (V, L, dim) of one chunk into the state."""
        if tokens.shape[1] == 0:
            return state
        q = self.attention.heads_q(self.norm_queries(self.queries))  # (H, M, d)
        k, v = self.attention.heads_kv(self.norm_tokens(tokens))  # (V, H, L, d)
        scores = torch.einsum("hmd,bhld->bhml", q, k) / math.sqrt(self.attention.head_dim)  # (V, H, M, L)
        new_max = torch.maximum(state.max, scores.detach().amax(dim=-1))  # (V, H, M)
        weights = torch.exp(scores - new_max[..., None])
        correction = torch.exp(state.max - new_max)  # 0 on the first chunk (m = -inf)
        return PoolState(
            max=new_max,
            sum=state.sum * correction + weights.sum(dim=-1),
            acc=state.acc * correction[..., None] + torch.einsum("bhml,bhld->bhmd", weights, v),
        )

    def finalize(self, state: PoolState) -> Tensor:
        """state -> latents (V, M, dim)."""
        if bool(torch.isneginf(state.max).any()):  # still the initial -inf: nothing was folded in
            raise EncoderInputError("the encoder was given no frames: finalize() needs at least one update()")
        pooled = rearrange(state.acc / state.sum[..., None], "b h m d -> b m (h d)")
        latents = self.queries + self.attention.to_out(pooled)
        return latents + self.feed_forward(latents)


class LatentBlock(nn.Module):
    """A plain pre-norm transformer block over the M latents of each video."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attention = Attention(dim=dim, num_heads=num_heads, init="qkv")
        self.feed_forward = FeedForward(dim=dim, hidden=mlp_ratio * dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (V, M, dim) -> (V, M, dim)."""
        normed = self.norm_attn(x)
        x = x + self.attention(normed, normed)
        return x + self.feed_forward(x)


def tile_frames(frames: Tensor, times: Tensor, tile: int | None) -> tuple[Tensor, Tensor]:
    """Frames larger than `tile` cut into non-overlapping tile x tile pieces, each a frame of its
    own with its frame's time: (V, n, C, h, w) -> (V, n * (h // tile) * (w // tile), C, tile, tile).

    Pooled statistics of a frame (the base's activation mean and std, the LR statistics) depend on
    how much a frame holds; an encoder trained on small frames reads large ones as the small frames
    it knows. Frames no larger than the tile (training's) pass unchanged."""
    h, w = frames.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return frames, times
    rows, cols = max(h // tile, 1), max(w // tile, 1)
    th, tw = min(tile, h), min(tile, w)
    top, left = (h - rows * th) // 2, (w - cols * tw) // 2  # centred: the border left out is even
    crop = frames[..., top : top + rows * th, left : left + cols * tw]
    tiles = rearrange(crop, "v n c (r th) (k tw) -> v (n r k) c th tw", r=rows, k=cols)
    return tiles, times.repeat_interleave(rows * cols, dim=1)


# ----------------------------------------------------------------------------------------------
# The encoder


class VideoEncoder(nn.Module):
    """LR video -> M latents, streamed: forward() is init_state / update / finalize with one chunk.

    Streaming (`encode_stream`, or update() chunk by chunk) is meant for inference under
    torch.no_grad() (the caller's business); one-shot forward() is differentiable for training.
    Gradients never reach the base: it runs under no_grad and is frozen here.
    """

    def __init__(
        self,
        *,
        source: str,  # no default here: configs/hypernet/default.yaml holds the one default
        dim: int = 64,
        num_latents: int = 8,
        num_heads: int = 4,
        num_blocks: int = 2,
        conv_channels: int = 32,
        lr_stats: bool = True,
        base: nn.Module | None = None,
        layer_names: Sequence[str] = (),
        in_channels: int = 3,
        context_tile: int | None = None,
        grid: int = 0,
    ):
        super().__init__()
        if source not in FRAME_SOURCES:
            raise EncoderInputError(
                f"hypernet.encoder.source={source!r} is not known; choose one of {list(FRAME_SOURCES)}"
            )
        check_width(dim, num_heads)
        if source == "base" and base is None:
            raise EncoderInputError(
                "hypernet.encoder.source='base' reads the frozen base network's activations: pass "
                "base=<the base nn.Module> and layer_names=<its layers>, or use source='conv'"
            )
        if context_tile is not None and context_tile < 4:
            raise EncoderInputError(
                f"hypernet.encoder.context_tile={context_tile} must be >= 4 pixels (or null)"
            )
        self.source = source
        self.dim = dim
        self.in_channels = in_channels
        self.context_tile = context_tile
        if source == "stats" and not lr_stats:
            raise EncoderInputError(
                "hypernet.encoder.source='stats' reads the LR statistics alone: it needs "
                "hypernet.encoder.lr_stats=true"
            )
        self.tokenizer: nn.Module | None = None
        if source == "conv":
            self.tokenizer = ConvTokenizer(in_channels=in_channels, channels=conv_channels, dim=dim)
        elif source == "base":
            assert base is not None
            self.tokenizer = BaseActivationTokenizer(base=base, layer_names=layer_names, dim=dim, grid=grid)
        self.lr_stats = LRStats(in_channels=in_channels, dim=dim) if lr_stats else None
        self.time = TimeEncoding(dim=dim)
        self.pooler = LatentPooler(dim=dim, num_latents=num_latents, num_heads=num_heads)
        self.blocks = nn.ModuleList(LatentBlock(dim=dim, num_heads=num_heads) for _ in range(num_blocks))

    def _check(self, frames: Tensor, times: Tensor | None) -> None:
        if frames.dim() != 5:
            raise EncoderInputError(
                f"encoder frames must be (V, n, C, h, w), V videos of n frames; got shape {tuple(frames.shape)}"
            )
        if not frames.is_floating_point():
            raise EncoderInputError(
                f"encoder frames must be floating point in [0, 1]; got {frames.dtype} (divide uint8 by 255)"
            )
        v, n, c, h, w = frames.shape
        if n < 1:
            raise EncoderInputError("encoder frames hold no frames (n = 0)")
        if c != self.in_channels:
            raise EncoderInputError(
                f"encoder frames have {c} channels; this encoder reads {self.in_channels}"
            )
        if h < 4 or w < 4:
            raise EncoderInputError(f"encoder frames of {h}x{w} are too small; at least 4x4")
        if times is not None and tuple(times.shape) != (v, n):
            raise EncoderInputError(
                f"encoder times must be (V, n) = {(v, n)}, one position in [0, 1] per frame; "
                f"got shape {tuple(times.shape)}"
            )

    def tokens(self, frames: Tensor, times: Tensor) -> Tensor:
        """frames (V, n, C, h, w), times (V, n) -> tokens (V, n * tokens_per_frame, dim)."""
        self._check(frames, times)
        frames, times = tile_frames(frames, times, self.context_tile)
        parts = [] if self.tokenizer is None else [self.tokenizer(frames)]  # (V, n, L, dim)
        if self.lr_stats is not None:
            parts.append(self.lr_stats(frames))  # (V, n, 1, dim)
        tokens = torch.cat(parts, dim=2) + self.time(times.to(self.time.proj.weight.dtype))[:, :, None]
        return rearrange(tokens, "v n l d -> v (n l) d")

    def init_state(self, num_videos: int, device: torch.device | None = None) -> PoolState:
        return self.pooler.init_state(num_videos, device=device)

    def update(self, state: PoolState, frames: Tensor, times: Tensor) -> PoolState:
        """Fold one chunk, frames (V, n, C, h, w) with their times (V, n), into the state."""
        self._check(frames, times)
        if frames.shape[0] != state.max.shape[0]:
            raise EncoderInputError(
                f"this chunk holds {frames.shape[0]} videos; the stream was started for {state.max.shape[0]}"
            )
        return self.pooler.update(state, self.tokens(frames, times))

    def finalize(self, state: PoolState) -> Tensor:
        """state -> latents (V, M, dim)."""
        latents = self.pooler.finalize(state)
        for block in self.blocks:
            latents = block(latents)
        return latents

    def forward(self, frames: Tensor, times: Tensor | None = None) -> Tensor:
        """frames (V, n, C, h, w) -> latents (V, M, dim); times None: evenly spaced over the n frames."""
        if times is None:
            self._check(frames, None)
            times = frame_times(frames.shape[1]).to(frames.device).expand(frames.shape[0], -1)
        state = self.init_state(frames.shape[0], device=frames.device)
        return self.finalize(self.update(state, frames, times))

    def encode_context(
        self, context: Tensor, times: Tensor | None, degradation: Tensor | None = None
    ) -> Tensor:
        """A training or evaluation batch's latents (V, M, dim): its context frames (V, K, C, h, w)
        at their times (V, K); the degradation parameters are not this encoder's to read."""
        return self(context, times)

    def encode_stream(self, chunks: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """Encode a video (or V videos side by side) given as chunks of (frames, times)."""
        state = None
        for frames, times in chunks:
            if state is None:
                state = self.init_state(frames.shape[0], device=frames.device)
            state = self.update(state, frames, times)
        if state is None:
            raise EncoderInputError("encode_stream was given no chunks: the video has no frames")
        return self.finalize(state)


class DegradationEncoder(nn.Module):
    """The degradation ceiling, a control: the video's TRUE degradation parameters, not its
    frames, -> M latents. A hypernetwork on these can only adapt to the degradation, and knows
    it exactly; its gain bounds what inferring the degradation from the video is worth.

    params (V, P) in `Degradation.as_tensor` order (scale, blur sigma, noise sigma, crf or -1),
    normalised by running statistics, projected and added to M learned queries, then the same
    latent blocks as the video encoder."""

    source = "degradation"  # what it reads, as VideoEncoder.source says for frames

    def __init__(
        self,
        *,
        num_params: int = 4,
        dim: int = 64,
        num_latents: int = 8,
        num_heads: int = 4,
        num_blocks: int = 2,
    ):
        super().__init__()
        check_width(dim, num_heads)
        self.dim = dim
        self.norm = RunningNorm(num_features=num_params)
        self.proj = nn.Sequential(nn.Linear(num_params, dim), nn.GELU(), nn.Linear(dim, dim))
        self.queries = nn.Parameter(0.02 * torch.randn(num_latents, dim))
        self.blocks = nn.ModuleList(LatentBlock(dim=dim, num_heads=num_heads) for _ in range(num_blocks))

    def forward(self, params: Tensor) -> Tensor:
        """params (V, P) -> latents (V, M, dim)."""
        if params.dim() != 2 or params.shape[1] != self.norm.mean.shape[0]:
            raise EncoderInputError(
                f"degradation parameters must be (V, {self.norm.mean.shape[0]}); got shape {tuple(params.shape)}"
            )
        latents = self.queries + self.proj(self.norm(params.to(self.queries.dtype)))[:, None]
        for block in self.blocks:
            latents = block(latents)
        return latents

    def encode_context(
        self, context: Tensor, times: Tensor | None, degradation: Tensor | None = None
    ) -> Tensor:
        """A batch's latents from its videos' degradation parameters (V, P); frames are ignored."""
        if degradation is None:
            raise EncoderInputError(
                "hypernet.encoder.source=degradation needs each video's true degradation parameters"
            )
        return self(degradation)

    def encode_stream(self, chunks: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """A real video comes without its degradation parameters: refused, with what to use."""
        raise EncoderInputError(
            "this checkpoint is the degradation-ceiling control (hypernet.encoder.source=degradation): it "
            "reads a video's true degradation parameters, which a real video does not come with; use a blind one"
        )


# ----------------------------------------------------------------------------------------------
# The one place a source becomes an encoder


def feature_layer_names(
    base: nn.Module, target_names: Sequence[str], patterns: Sequence[str] | None
) -> list[str]:
    """The target layers whose activations the encoder reads: those matching
    hypernet.encoder.feature_layers (fnmatch patterns), or by default every target that runs when
    the base sees one frame alone (the encoder feeds it frames one by one; a recurrent base's flow
    layers need two). Fewer, earlier layers make the frozen base's pass over the context cheaper:
    it stops after the last layer read."""
    names = list(target_names)
    if patterns is not None:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not chosen:
            raise EncoderInputError(
                f"hypernet.encoder.feature_layers={list(patterns)} matches none of the LoRA targets {names}"
            )
        return chosen
    ran: set[str] = set()
    modules = dict(base.named_modules())
    handles = [modules[n].register_forward_hook(lambda *_, n=n: ran.add(n)) for n in names]
    try:
        with torch.no_grad():
            param = next(base.parameters())
            base(torch.zeros(1, 1, 3, 16, 16, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    return [n for n in names if n in ran]


def build_encoder(
    *,
    source: str,
    feature_layers: Sequence[str] | None,
    context_tile: int | None,
    dim: int,
    num_latents: int,
    num_heads: int,
    num_blocks: int,
    conv_channels: int,
    lr_stats: bool,
    base: nn.Module,
    target_names: Sequence[str],
    grid: int = 0,  # a checkpoint saved before the option existed reads as 0, as it was trained
) -> VideoEncoder | DegradationEncoder:
    """The encoder `hypernet.encoder` asks for (configs/hypernet/default.yaml, whose values are the
    only defaults), over the frozen `base` whose LoRA targets are `target_names`: a
    `VideoEncoder` reading frames, or for source=degradation the ceiling control. Options a
    source does not read (feature_layers beyond source=base, the frame options for degradation)
    are ignored, so one config serves every source."""
    if source not in SOURCES:
        raise EncoderInputError(
            f"hypernet.encoder.source={source!r} is not known; choose one of {list(SOURCES)}"
        )
    if source == "degradation":
        return DegradationEncoder(
            dim=dim, num_latents=num_latents, num_heads=num_heads, num_blocks=num_blocks
        )
    layer_names = feature_layer_names(base, target_names, feature_layers) if source == "base" else ()
    return VideoEncoder(
        source=source,
        dim=dim,
        num_latents=num_latents,
        num_heads=num_heads,
        num_blocks=num_blocks,
        conv_channels=conv_channels,
        lr_stats=lr_stats,
        base=base,
        layer_names=layer_names,
        context_tile=context_tile,
        grid=grid,
    )
