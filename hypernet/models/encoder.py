"""The streaming whole-video encoder: LR frames of a video -> M latent vectors.

The hypernetwork has to read a whole video, possibly feature length, to say what *this* video
looks like. So the encoder is built to stream: every frame is turned into tokens on its own
(nothing depends on which other frames share its chunk), and M learned latent queries pool
all tokens of the video by cross-attention computed chunk by chunk with a running maximum and
running sum per (video, head, latent), the online softmax of FlashAttention. Time is linear in
the video's length, memory is that of one chunk plus a state of V*H*M*(d+2) numbers, and the
result equals encoding every frame at once (up to float rounding).

What the encoder reads is `hypernet.encoder.source` (docs/design.md, "Interfaces"), and this
module is its one home: `build_encoder`, the `_target_` of configs/hypernet/default.yaml's
encoder, makes the encoder a source asks for. Per-frame tokens come from one of three sources:

- "conv": the encoder's own small conv net, one token per position of a stride-4 feature map;
- "base": the frozen base network's own activations at given layers, pooled to per-channel
  mean and std, one token per (frame, layer): what the base itself "sees";
- "stats": no content features, only the LR statistics below (a control).

The fourth, "degradation", reads no frames: `DegradationEncoder` turns the video's true
degradation parameters into latents (the ceiling control).

Beside them, cheap LR statistics (per-channel mean, std, log mean |Laplacian|, log high-pass
std) give one more token per frame. The prototype (docs/design.md, "Making the hypernetwork learn") found that a
learned encoder alone collapsed, producing the same adapter for every video, while these
statistics, normalised, vary between videos from the first step. Features whose scale is not
known in advance pass through a `RunningNorm`, so they arrive at unit scale without the
batch coupling (and train/eval mismatch) of batch norm.

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
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from hypernet.models.blocks import Attention, FeedForward

FRAME_SOURCES = ("conv", "base", "stats")  # stats: the LR statistics tokens alone, no content features
SOURCES = (*FRAME_SOURCES, "degradation")  # degradation: the true degradation parameters, no frames


class EncoderInputError(ValueError):
    """Frames, times or options given to the encoder do not fit together."""


# ----------------------------------------------------------------------------------------------
# Small pieces


def check_width(dim: int, num_heads: int) -> None:
    """The latents' width splits evenly into the attention heads."""
    if dim % num_heads:
        raise EncoderInputError(
            f"hypernet.encoder.dim={dim} must be a multiple of hypernet.encoder.num_heads={num_heads}"
        )


def sinusoidal(x: Tensor, *, num_freqs: int) -> Tensor:
    """(...) values in [0, 1] -> (..., 2 * num_freqs) features sin/cos(pi * 2^k * x).

    Frequencies from half a period over [0, 1] up to 2^(num_freqs-1) periods: the lowest tells
    the beginning from the end, the highest neighbouring positions apart."""
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    angles = x[..., None] * freqs  # (..., F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


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


class RunningNorm(nn.Module):
    """Per-feature normalisation by running mean and variance (no learned parameters).

    In training mode each call first moves the running statistics towards the batch's (detached)
    and then normalises with them; in eval mode the statistics are used as they are. A sample's
    output therefore never depends on the other samples of its batch, and training and inference
    normalise alike. The first updates are a cumulative average (rate max(momentum, 1/k) at the
    k-th update), so the first training step already normalises with that batch's statistics
    rather than with the initial mean 0, var 1.
    """

    def __init__(self, *, num_features: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("var", torch.ones(num_features))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., F) -> (..., F) normalised."""
        if self.training:
            flat = x.detach().reshape(-1, x.shape[-1]).to(self.mean.dtype)
            if flat.shape[0] >= 2:  # a single sample has no variance to learn from
                rate = max(self.momentum, 1.0 / (int(self.num_updates) + 1))
                self.mean.lerp_(flat.mean(dim=0), rate)
                self.var.lerp_(flat.var(dim=0, unbiased=False), rate)
                self.num_updates += 1
        return (x - self.mean) * torch.rsqrt(self.var + self.eps)


# ----------------------------------------------------------------------------------------------
# Tokenizers: frames (V, n, C, h, w) -> tokens (V, n, L, dim), L tokens per frame


class LRStats(nn.Module):
    """One token per frame from cheap statistics that differ between videos from the first step:
    per channel mean, std, log(mean |Laplacian| + eps) and log(std of frame - 3x3 box blur + eps).
    The last two measure sharpness and noise, i.e. the video's degradation. 4*C numbers, computed
    on the valid interior (no padding, so borders add nothing), normalised, projected to dim."""

    def __init__(self, *, in_channels: int = 3, dim: int, eps: float = 1e-4):
        super().__init__()
        self.in_channels = in_channels
        self.eps = eps
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", laplacian.expand(in_channels, 1, 3, 3).clone(), persistent=False)
        self.norm = RunningNorm(num_features=4 * in_channels)
        self.proj = nn.Linear(4 * in_channels, dim)

    def features(self, frames: Tensor) -> Tensor:
        """frames (V, n, C, h, w) -> raw statistics (V, n, 4C)."""
        v = frames.shape[0]
        x = rearrange(frames, "v n c h w -> (v n) c h w").to(self.laplacian.dtype)
        flat = rearrange(x, "N c h w -> N c (h w)")
        mean, std = flat.mean(dim=-1), flat.std(dim=-1, unbiased=False)
        lap = F.conv2d(x, self.laplacian, groups=self.in_channels)  # (N, C, h-2, w-2)
        log_lap = torch.log(lap.abs().mean(dim=(-2, -1)) + self.eps)
        high = x[..., 1:-1, 1:-1] - F.avg_pool2d(x, 3, stride=1)  # frame minus its 3x3 box blur
        log_high = torch.log(high.std(dim=(-2, -1), unbiased=False) + self.eps)
        stats = torch.cat([mean, std, log_lap, log_high], dim=-1)  # (N, 4C)
        return rearrange(stats, "(v n) f -> v n f", v=v)

    def forward(self, frames: Tensor) -> Tensor:
        """frames (V, n, C, h, w) -> tokens (V, n, 1, dim)."""
        return self.proj(self.norm(self.features(frames)))[:, :, None]


class ConvTokenizer(nn.Module):
    """The encoder's own conv net: stride 4 feature map, one token per position, with a 2-D
    sinusoidal encoding of the position (y, x) normalised to [0, 1] (so frame size does not
    change what a position means)."""

    def __init__(self, *, in_channels: int = 3, channels: int = 32, dim: int, num_freqs: int = 4):
        super().__init__()
        self.num_freqs = num_freqs
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.norm = RunningNorm(num_features=channels)
        self.proj = nn.Linear(channels + 4 * num_freqs, dim)

    def position_encoding(self, height: int, width: int, *, device: torch.device) -> Tensor:
        """(height * width, 4 * num_freqs): sin/cos features of y, then of x, row-major."""
        ys = torch.linspace(0.0, 1.0, height, device=device) if height > 1 else torch.zeros(1, device=device)
        xs = torch.linspace(0.0, 1.0, width, device=device) if width > 1 else torch.zeros(1, device=device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        pe = torch.cat(
            [sinusoidal(grid_y, num_freqs=self.num_freqs), sinusoidal(grid_x, num_freqs=self.num_freqs)],
            dim=-1,
        )
        return rearrange(pe, "h w f -> (h w) f")

    def forward(self, frames: Tensor) -> Tensor:
        """frames (V, n, C, h, w) -> tokens (V, n, h/4 * w/4, dim)."""
        v, n = frames.shape[:2]
        x = rearrange(frames, "v n c h w -> (v n) c h w").to(self.proj.weight.dtype)
        feat = self.convs(x)  # (N, d, h/4, w/4)
        pe = self.position_encoding(*feat.shape[-2:], device=feat.device)  # (h' w', 4F)
        tokens = self.norm(rearrange(feat, "N d h w -> N (h w) d"))
        tokens = torch.cat([tokens, pe.to(tokens.dtype).expand(tokens.shape[0], -1, -1)], dim=-1)
        return rearrange(self.proj(tokens), "(v n) l d -> v n l d", v=v, n=n)


def _output_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


class _StopForwardError(Exception):
    """Raised by the last hook to stop the base's forward early: its remaining layers would run
    for nothing."""


class BaseActivationTokenizer(nn.Module):
    """What the frozen base "sees": its activations at given layers, one token per (frame, layer).

    The base runs under no_grad on every frame alone, (V*n, 1, C, h, w), so a frame's tokens do
    not depend on its neighbours in the chunk. Forward hooks pool each listed layer's output to
    per-channel mean and std over space *inside the hook*: the output may be overwritten in place
    afterwards (an inplace activation right after a conv). Once every listed layer has run, the
    forward is cut short: the upsampler at HR size is most of a VSR base's cost (the base must
    keep no state between calls, as the base networks here do not).

    The base is held in a tuple, so it is neither a submodule nor in state_dict() or parameters():
    it belongs to whoever owns it (the stage-2 system), and `encoder.to(device)` does not move it.
    """

    def __init__(self, *, base: nn.Module, layer_names: Sequence[str], dim: int):
        super().__init__()
        layer_names = list(layer_names)
        if not layer_names:
            raise EncoderInputError(
                "encoder layer_names (hypernet.encoder.feature_layers) is empty: source 'base' needs the names "
                "of the base layers whose activations to read (e.g. the LoRA target layers)"
            )
        modules = dict(base.named_modules())
        channels: list[int] = []
        for name in layer_names:
            if name not in modules:
                valid = [n for n, m in modules.items() if n and _output_channels(m) is not None]
                raise EncoderInputError(
                    f"encoder layer_names (hypernet.encoder.feature_layers): {name!r} is not a layer of the base "
                    f"({type(base).__name__}); valid Conv/Linear layers include {valid[:12]}"
                )
            count = _output_channels(modules[name])
            if count is None:
                raise EncoderInputError(
                    f"encoder layer_names (hypernet.encoder.feature_layers): {name!r} is a {type(modules[name]).__name__}; "
                    "choose a Conv2d or Linear layer, whose channel count is known"
                )
            channels.append(count)
        base.requires_grad_(False)  # frozen: the encoder only reads it
        self._base = (base,)  # a tuple: not registered as a submodule
        self.layer_names = layer_names
        self.norms = nn.ModuleList(RunningNorm(num_features=2 * c) for c in channels)
        self.projs = nn.ModuleList(nn.Linear(2 * c, dim) for c in channels)
        self.layer_embedding = nn.Parameter(0.02 * torch.randn(len(layer_names), dim))

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def pooled_activations(self, frames: Tensor) -> list[Tensor]:
        """frames (V, n, C, h, w) -> per layer (V*n, 2*c_l): channel mean and std over space."""
        num = frames.shape[0] * frames.shape[1]
        modules = dict(self.base.named_modules())
        pooled: dict[str, Tensor] = {}

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                if name in pooled:
                    raise EncoderInputError(
                        f"encoder layer_names (hypernet.encoder.feature_layers): base layer {name!r} ran more than once on one "
                        "frame; choose layers that run once per frame"
                    )
                if not isinstance(output, Tensor) or output.dim() < 2 or output.shape[0] != num:
                    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                    raise EncoderInputError(
                        f"encoder layer_names (hypernet.encoder.feature_layers): base layer {name!r} gave output {shape} for "
                        f"{num} frames; expected a video-major batch of {num} samples, (V*n, ...)"
                    )
                out = output.detach().to(torch.promote_types(output.dtype, torch.float32))
                if isinstance(module, nn.Linear):  # (N, ..., c) -> (N, c, ...)
                    out = out.movedim(-1, 1)
                flat = out.reshape(num, out.shape[1], -1)  # (N, c, positions)
                pooled[name] = torch.cat([flat.mean(dim=-1), flat.std(dim=-1, unbiased=False)], dim=-1)
                if len(pooled) == len(self.layer_names):
                    raise _StopForwardError  # the rest of the base (the upsampler, mostly) is not needed

            return hook

        handles = [modules[name].register_forward_hook(make_hook(name)) for name in self.layer_names]
        try:
            base_dtype = next(self.base.parameters(), frames).dtype
            with torch.no_grad():
                self.base(rearrange(frames, "v n c h w -> (v n) 1 c h w").to(base_dtype))
        except _StopForwardError:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.layer_names if name not in pooled]
        if missing:
            raise EncoderInputError(
                f"encoder layer_names (hypernet.encoder.feature_layers): base layers {missing} did not run in the base's forward"
            )
        return [pooled[name] for name in self.layer_names]

    def forward(self, frames: Tensor) -> Tensor:
        """frames (V, n, C, h, w) -> tokens (V, n, num_layers, dim)."""
        v = frames.shape[0]
        pooled = self.pooled_activations(frames)
        tokens = torch.stack(
            [
                proj(norm(p.to(proj.weight.dtype)))
                for p, norm, proj in zip(pooled, self.norms, self.projs, strict=True)
            ],
            dim=1,
        )  # (V*n, num_layers, dim)
        tokens = tokens + self.layer_embedding
        return rearrange(tokens, "(v n) l d -> v n l d", v=v)


class TimeEncoding(nn.Module):
    """times (V, n) in [0, 1] -> (V, n, dim), added to every token of its frame."""

    def __init__(self, *, dim: int, num_freqs: int = 8):
        super().__init__()
        self.num_freqs = num_freqs
        self.proj = nn.Linear(2 * num_freqs, dim)

    def forward(self, times: Tensor) -> Tensor:
        return self.proj(sinusoidal(times, num_freqs=self.num_freqs))


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
            self.tokenizer = BaseActivationTokenizer(base=base, layer_names=layer_names, dim=dim)
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
    )
