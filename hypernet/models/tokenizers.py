"""Per-frame tokens, what the video encoder (models/encoder.py) reads: every frame is turned into
tokens on its own (nothing depends on which other frames share its chunk), so a video can be
streamed. Layouts: frames (V, n, C, h, w) in [0, 1], V videos of n frames -> tokens
(V, n, L, dim), L tokens per frame.

- "conv" (`ConvTokenizer`): the encoder's own small conv net, one token per position of a
  stride-4 feature map;
- "base" (`BaseActivationTokenizer`): the frozen base network's own activations at given
  layers, pooled to per-channel mean and std, one token per (frame, layer): what the base
  itself "sees"; with `grid` > 0 also one token per cell of a grid x grid average of each
  layer's activations, which keeps where and what (content) where the pooled statistics keep
  only how much of each feature (mostly the degradation: experiments/content_scaling);
- beside them, `LRStats`: cheap LR statistics (per-channel mean, std, log mean |Laplacian|, log
  high-pass std), one more token per frame. The prototype (docs/design.md, "Making the
  hypernetwork learn") found that a learned encoder alone collapsed, producing the same adapter
  for every video, while these statistics, normalised, vary between videos from the first step;
- `TimeEncoding`: the frame's position in its video, added to each of its tokens.

Features whose scale is not known in advance pass through a `RunningNorm`, so they arrive at
unit scale without the batch coupling (and train/eval mismatch) of batch norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class EncoderInputError(ValueError):
    """Frames, times or options given to the encoder do not fit together."""


def sinusoidal(x: Tensor, *, num_freqs: int) -> Tensor:
    """(...) values in [0, 1] -> (..., 2 * num_freqs) features sin/cos(pi * 2^k * x).

    Frequencies from half a period over [0, 1] up to 2^(num_freqs-1) periods: the lowest tells
    the beginning from the end, the highest neighbouring positions apart."""
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    angles = x[..., None] * freqs  # (..., F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def mean_and_std(x: Tensor, dim: int | tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and population standard deviation of x over `dim` (reduced away), in two passes: the
    mean, then the root mean square of the deviations from it. As accurate as torch.std (about
    1e-7 relative in float32, also where the mean dwarfs the spread, as a one-pass E[x^2] - E[x]^2
    would not be) and on CPU about 10x faster than torch.std's kernel, which was half of the
    stage-2 encoder's time (scripts/bench_hyper.py)."""
    mean = x.mean(dim=dim, keepdim=True)
    count = math.prod(x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim))
    return mean.squeeze(dim), torch.linalg.vector_norm(x - mean, dim=dim) / math.sqrt(count)


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
    on the valid interior (no padding, so borders add nothing), normalised, projected to dim.
    The Laplacian and the box blur are sums of shifted views of the frame: on CPU a third of the
    time of a depthwise convolution and avg_pool2d, the same numbers to float rounding."""

    def __init__(self, *, in_channels: int = 3, dim: int, eps: float = 1e-4):
        super().__init__()
        self.in_channels = in_channels
        self.eps = eps
        self.norm = RunningNorm(num_features=4 * in_channels)
        self.proj = nn.Linear(4 * in_channels, dim)

    def features(self, frames: Tensor) -> Tensor:
        """frames (V, n, C, h, w) -> raw statistics (V, n, 4C)."""
        v = frames.shape[0]
        x = rearrange(frames, "v n c h w -> (v n) c h w").to(self.proj.weight.dtype)
        mean, std = mean_and_std(rearrange(x, "N c h w -> N c (h w)"), -1)
        centre = x[..., 1:-1, 1:-1]  # the valid interior, (N, C, h-2, w-2)
        lap = x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4 * centre
        log_lap = torch.log(lap.abs().mean(dim=(-2, -1)) + self.eps)
        rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]  # sums of 3 neighbours along each row
        blur = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9  # 3x3 box blur
        high = centre - blur  # frame minus its 3x3 box blur
        log_high = torch.log(mean_and_std(high, (-2, -1))[1] + self.eps)
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

    def __init__(self, *, base: nn.Module, layer_names: Sequence[str], dim: int, grid: int = 0):
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 0:
            raise EncoderInputError(
                f"hypernet.encoder.grid={grid!r} must be an int >= 0 (cells per side of the spatial tokens; 0: none)"
            )
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
        self.grid = grid
        if grid:  # made after the pooled tokens' parameters, so grid=0 draws the weights it always drew
            self.cell_norms = nn.ModuleList(RunningNorm(num_features=c) for c in channels)
            self.cell_projs = nn.ModuleList(nn.Linear(c, dim) for c in channels)
            self.cell_embedding = nn.Parameter(0.02 * torch.randn(grid * grid, dim))

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def pooled_activations(self, frames: Tensor) -> list[Tensor]:
        """frames (V, n, C, h, w) -> per layer (V*n, 2*c_l): channel mean and std over space."""
        return [pooled for pooled, _ in self.activations(frames)]

    def activations(self, frames: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """frames (V, n, C, h, w) -> per layer its channel mean and std over space (V*n, 2*c_l)
        and, with a grid, its grid x grid average (V*n, c_l, grid, grid)."""
        num = frames.shape[0] * frames.shape[1]
        modules = dict(self.base.named_modules())
        pooled: dict[str, tuple[Tensor, Tensor | None]] = {}

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
                cells = None
                if self.grid:
                    if out.dim() != 4:
                        raise EncoderInputError(
                            f"hypernet.encoder.grid={self.grid}: base layer {name!r} gave output {tuple(out.shape)}, "
                            "not a feature map (N, c, h, w); spatial tokens read conv layers"
                        )
                    cells = F.adaptive_avg_pool2d(out, self.grid)
                pooled[name] = (torch.cat(mean_and_std(flat, -1), dim=-1), cells)
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
        """frames (V, n, C, h, w) -> tokens (V, n, num_layers * (1 + grid^2), dim): a layer's
        pooled token, then (grid > 0) its cells' tokens row by row, layer after layer."""
        v = frames.shape[0]
        read = self.activations(frames)
        tokens = torch.stack(
            [
                proj(norm(p.to(proj.weight.dtype)))
                for (p, _), norm, proj in zip(read, self.norms, self.projs, strict=True)
            ],
            dim=1,
        )  # (V*n, num_layers, dim)
        tokens = tokens + self.layer_embedding
        if self.grid:
            cells = [
                proj(norm(rearrange(c, "N c g k -> N (g k) c").to(proj.weight.dtype)))
                + self.cell_embedding
                + layer
                for (_, c), norm, proj, layer in zip(
                    read, self.cell_norms, self.cell_projs, self.layer_embedding, strict=True
                )
            ]  # per layer (V*n, grid^2, dim)
            tokens = torch.cat([tokens, *cells], dim=1)
        return rearrange(tokens, "(v n) l d -> v n l d", v=v)


class TimeEncoding(nn.Module):
    """times (V, n) in [0, 1] -> (V, n, dim), added to every token of its frame."""

    def __init__(self, *, dim: int, num_freqs: int = 8):
        super().__init__()
        self.num_freqs = num_freqs
        self.proj = nn.Linear(2 * num_freqs, dim)

    def forward(self, times: Tensor) -> Tensor:
        return self.proj(sinusoidal(times, num_freqs=self.num_freqs))
