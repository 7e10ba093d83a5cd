"""Degradations that turn HR video into the LR video the model sees.

The VSR literature measures on two fixed protocols, and results are only comparable when
they are reproduced bit for bit:

- "BI": MATLAB's ``imresize(img, 1/s, 'bicubic')`` with antialiasing (REDS, Vimeo-90K, Vid4 as
  BasicSR and MMagic build them). ``imresize`` below follows MATLAB's index math exactly.
- "BD": Gaussian blur sigma 1.6 on a 13x13 kernel, then every s-th pixel (DUF, BasicVSR).

The hypernetwork's premise is that every video has its own look, so training draws one random
degradation per video (blur, noise, optional H.264) and applies it identically to all its
frames: ``sample_degradation`` draws it once, ``degrade`` applies it, and the same seed always
gives the same LR video, whichever frames are asked for. Users' videos are often clean
downscales, or blurred and subsampled as BD does: ``DegradationRanges.clean_prob`` and
``subsample_prob`` put those in the mix (``Degradation.subsample`` is not among the numbers of
``as_tensor``, which the true-degradation control reads).

Tensors are float in [0, 1], channels first, any leading dims: (..., C, H, W).
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

ALLOWED_SCALES = (2, 3, 4)
# Order of the numbers in `Degradation.as_tensor()` and the keys of `Degradation.to_dict()`.
PARAM_NAMES = ("scale", "blur_sigma", "noise_sigma", "crf")
BD_KERNEL_SIZE = 13


class DegradationError(ValueError):
    """Bad input to a degradation: the message names the option or size and what to do."""


def _check_float_image(x: Tensor, where: str, min_dims: int = 2) -> None:
    if not isinstance(x, Tensor):
        raise DegradationError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DegradationError(
            f"{where}: expected a float tensor in [0, 1], got dtype {x.dtype}; convert with x.float() / 255"
        )
    if x.ndim < min_dims:
        raise DegradationError(
            f"{where}: expected a tensor of shape (..., C, H, W), got shape {tuple(x.shape)}"
        )


def _check_scale(factor: int) -> None:
    if isinstance(factor, bool) or factor not in ALLOWED_SCALES:
        raise DegradationError(f"scale must be one of {ALLOWED_SCALES}, got {factor!r}")


# ---------------------------------------------------------------------------------------------
# MATLAB-exact bicubic resize
# ---------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, the one MATLAB's 'bicubic' uses."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=128)
def _resize_matrix(in_len: int, out_len: int, scale: float, antialiasing: bool) -> Tensor:
    """(out_len, in_len) float64 matrix M with out = M @ in along one axis.

    MATLAB computes, per output pixel, the weights of a few input pixels and their indices,
    mirrors out-of-range indices symmetrically (edge pixel repeated) and normalises the
    weights. Folding the mirrored indices into a dense matrix gives the same sums and lets one
    matmul resize a whole batch, differentiably.
    """
    antialias = antialiasing and scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based output coordinates, as in MATLAB
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # centre of output pixel x in input coordinates
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # (out_len, taps), 1-based input indices
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if antialias else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # MATLAB: aux = [1:in_len, in_len:-1:1]; idx = aux(mod(idx - 1, 2 * in_len) + 1)
    period = 2 * in_len
    j = np.mod(idx - 1, period).astype(np.int64)
    j = np.where(j < in_len, j, period - 1 - j)
    rows = np.broadcast_to(np.arange(out_len)[:, None], j.shape)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(matrix, (rows, j), weights)
    return torch.from_numpy(matrix)


def _out_len(in_len: int, scale: float) -> int:
    # MATLAB: ceil(scale * in). The 1e-9 keeps 0.1 * 30 = 3.0000000000000004 from becoming 4.
    return max(1, math.ceil(scale * in_len - 1e-9))


def imresize(
    x: Tensor,
    *,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` on the last two dims of a (..., H, W) tensor.

    Exactly one of ``scale`` (output size ceil(scale * in), as MATLAB) or ``size`` (out_h, out_w;
    the scale of each axis is then out / in, as MATLAB) is given. Downscaling widens the cubic
    kernel by 1/scale (antialiasing, MATLAB's default). The result is NOT clamped: bicubic
    overshoots a little at edges, and a clamp here would hide it from gradients; callers clamp.
    Computed in float64 weights, returned in x's dtype.
    """
    _check_float_image(x, "imresize")
    in_h, in_w = x.shape[-2:]
    if (scale is None) == (size is None):
        raise DegradationError("imresize: give exactly one of scale= or size=")
    if scale is not None:
        if not scale > 0 or not math.isfinite(scale):
            raise DegradationError(f"imresize: scale must be a positive number, got {scale!r}")
        scale_h = scale_w = float(scale)
        out_h, out_w = _out_len(in_h, scale_h), _out_len(in_w, scale_w)
    else:
        if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
            raise DegradationError(f"imresize: size must be two positive ints (out_h, out_w), got {size!r}")
        out_h, out_w = int(size[0]), int(size[1])
        scale_h, scale_w = out_h / in_h, out_w / in_w
    m_h = _resize_matrix(in_h, out_h, scale_h, antialiasing).to(dtype=x.dtype, device=x.device)
    m_w = _resize_matrix(in_w, out_w, scale_w, antialiasing).to(dtype=x.dtype, device=x.device)
    # (o, h) @ (..., h, w) -> (..., o, w); then (..., o, w) @ (w, p) -> (..., o, p)
    return m_h @ x @ m_w.T


def bicubic_downsample(x: Tensor, factor: int) -> Tensor:
    """The "BI" protocol: MATLAB bicubic downscale by 1/factor, factor in {2, 3, 4}."""
    _check_scale(factor)
    return imresize(x, scale=1.0 / factor)


def quantise(x: Tensor) -> Tensor:
    """The values an 8-bit frame holds, as a video file stores them: clamped to [0, 1] and
    rounded to multiples of 1/255. LR videos are 8-bit, so every LR the model sees is quantised."""
    return (x.clamp(0, 1) * 255).round() / 255


# ---------------------------------------------------------------------------------------------
# Gaussian blur and the "BD" protocol
# ---------------------------------------------------------------------------------------------


def _kernel_size(sigma: float, size: int | None) -> int:
    if size is None:
        # scipy.ndimage's rule (truncate = 4 sigma): 13 taps for sigma 1.6, the BD kernel.
        return 2 * int(4.0 * sigma + 0.5) + 1
    if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
        raise DegradationError(f"kernel size must be a positive odd int, got {size!r}")
    return int(size)


def gaussian_kernel1d(sigma: float, size: int | None = None, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """(size,) normalised Gaussian taps; default size 2 * int(4 sigma + 0.5) + 1."""
    if not sigma > 0:
        raise DegradationError(f"blur sigma must be > 0 for a Gaussian kernel, got {sigma!r}")
    size = _kernel_size(sigma, size)
    t = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(t**2) / (2.0 * sigma**2))
    return torch.from_numpy(g / g.sum()).to(dtype)


def gaussian_kernel2d(sigma: float, size: int | None = None, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """(size, size) normalised isotropic Gaussian, the outer product of two 1-D kernels."""
    g = gaussian_kernel1d(sigma, size, dtype=torch.float64)
    return torch.outer(g, g).to(dtype)


def blur(x: Tensor, sigma: float, *, size: int | None = None) -> Tensor:
    """Gaussian blur of every channel of a (..., H, W) tensor, reflect padding, same size out.

    A depthwise convolution with the 2-D Gaussian, run as two 1-D passes (the kernel is an outer
    product, so this is the same sum, k instead of k * k taps). sigma 0 returns x itself.
    """
    _check_float_image(x, "blur")
    if not sigma >= 0:
        raise DegradationError(f"blur: sigma must be >= 0, got {sigma!r}")
    if sigma == 0:
        return x
    g = gaussian_kernel1d(sigma, size, dtype=x.dtype).to(x.device)
    radius = g.numel() // 2
    h, w = x.shape[-2:]
    if radius >= h or radius >= w:
        raise DegradationError(
            f"blur: a {h}x{w} image is too small for sigma {sigma} (kernel radius {radius} needs "
            f"at least {radius + 1} pixels per side); use a larger crop or a smaller sigma"
        )
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, h, w)  # every channel of every image is its own "batch" entry
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, -1, 1))  # vertical pass
    y = F.conv2d(y, g.view(1, 1, 1, -1))  # horizontal pass
    return y.reshape(*lead, h, w)


@functools.lru_cache(maxsize=256)
def _blur_matrix(length: int, sigma: float) -> Tensor:
    """(length, length) float64 matrix B with blur(x) = B @ x along one axis: the Gaussian taps of
    `blur` with its reflect padding folded in (an index -k reads k, length - 1 + k reads
    length - 1 - k)."""
    g = gaussian_kernel1d(sigma, dtype=torch.float64).numpy()
    radius = len(g) // 2
    if radius >= length:
        raise DegradationError(
            f"blur: a side of {length} pixels is too small for sigma {sigma} (kernel radius {radius} needs "
            f"at least {radius + 1} pixels); use a larger crop or a smaller sigma"
        )
    matrix = np.zeros((length, length))
    rows = np.arange(length)[:, None]
    taps = rows + np.arange(-radius, radius + 1)[None, :]
    taps = np.abs(taps)
    taps = np.where(taps > length - 1, 2 * (length - 1) - taps, taps)
    np.add.at(matrix, (np.broadcast_to(rows, taps.shape), taps), np.broadcast_to(g, taps.shape))
    return torch.from_numpy(matrix)


def blur_downsample(x: Tensor, sigma: float, factor: int) -> Tensor:
    """bicubic_downsample(blur(x, sigma), factor) as one linear map per axis: the blur's matrix
    folded into the resize's, so two small matmuls replace a convolution over the HR frames (the
    same sums to float rounding, 20x less work at x4)."""
    _check_scale(factor)
    _check_float_image(x, "blur_downsample")
    if sigma == 0:
        return bicubic_downsample(x, factor)
    h, w = x.shape[-2:]
    m_h = _blur_resize_matrix(h, float(sigma), factor).to(dtype=x.dtype, device=x.device)
    m_w = _blur_resize_matrix(w, float(sigma), factor).to(dtype=x.dtype, device=x.device)
    return m_h @ x @ m_w.T


@functools.lru_cache(maxsize=256)
def _blur_resize_matrix(length: int, sigma: float, factor: int) -> Tensor:
    return _resize_matrix(length, _out_len(length, 1 / factor), 1 / factor, True) @ _blur_matrix(
        length, sigma
    )


def bd_downsample(x: Tensor, factor: int, sigma: float = 1.6) -> Tensor:
    """The "BD" protocol: 13x13 Gaussian blur (sigma 1.6), then every factor-th pixel.

    BasicSR's ``duf_downsample`` pads by 6 + 2 * factor, convolves with stride factor and crops 2
    outputs per side; its output pixel j then sits on input pixel j * factor, so sampling starts
    at offset 0 here. Its kernel is scipy's Gaussian of a 13x13 delta, cut at 4 sigma, so a sigma
    below 1.6 (DUF's 0.4 * scale at x2, x3) gets fewer than 13 taps; so it does here. H and W must
    be multiples of factor.
    """
    _check_scale(factor)
    _check_float_image(x, "bd_downsample")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise DegradationError(
            f"bd_downsample: size {h}x{w} is not divisible by scale {factor}; crop to a multiple of it"
        )
    size = min(BD_KERNEL_SIZE, _kernel_size(sigma, None))
    return blur(x, sigma, size=size)[..., ::factor, ::factor]


# ---------------------------------------------------------------------------------------------
# Per-video random degradation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Degradation:
    """The degradation of one video, applied identically to all its frames.

    noise_sigma is in [0, 1] units (already divided by 255); crf is the H.264 CRF or None for no
    codec; seed fixes this video's noise, so the same video always gets the same noise.
    """

    scale: int
    blur_sigma: float
    noise_sigma: float
    crf: int | None
    seed: int
    subsample: bool = False  # the blur then every scale-th pixel (as BD), not MATLAB bicubic

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        if not (math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise DegradationError(f"Degradation: blur_sigma must be >= 0, got {self.blur_sigma!r}")
        if not (math.isfinite(self.noise_sigma) and 0 <= self.noise_sigma <= 1):
            raise DegradationError(
                f"Degradation: noise_sigma must be in [0, 1] (divide 8-bit levels by 255), got {self.noise_sigma!r}"
            )
        if self.crf is not None and (
            isinstance(self.crf, bool) or int(self.crf) != self.crf or not 0 <= self.crf <= 51
        ):
            raise DegradationError(f"Degradation: crf must be an int in [0, 51] or None, got {self.crf!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise DegradationError(f"Degradation: seed must be a non-negative int, got {self.seed!r}")

    def to_dict(self) -> dict[str, float]:
        """Flat floats keyed by PARAM_NAMES (crf None -> -1); the seed is an identity, not a parameter."""
        return dict(zip(PARAM_NAMES, self._numbers(), strict=True))

    def as_tensor(self) -> Tensor:
        """(4,) float32: scale, blur_sigma, noise_sigma, crf (-1 = no codec), in PARAM_NAMES order."""
        return torch.tensor(self._numbers(), dtype=torch.float32)

    def _numbers(self) -> list[float]:
        crf = -1.0 if self.crf is None else float(self.crf)
        return [float(self.scale), float(self.blur_sigma), float(self.noise_sigma), crf]


def _as_pair(value: Sequence[float] | None, name: str, cast: type) -> tuple | None:
    if value is None:
        return None
    if len(value) != 2 or value[0] > value[1]:
        raise DegradationError(
            f"DegradationRanges: {name} must be a (low, high) pair with low <= high, got {value!r}"
        )
    return (cast(value[0]), cast(value[1]))


@dataclass(frozen=True)
class DegradationRanges:
    """Ranges that per-video degradations are drawn from (uniformly); lists are accepted (Hydra)."""

    blur_sigma: tuple[float, float] = (0.4, 2.4)
    noise_sigma: tuple[float, float] = (0.0, 12 / 255)
    crf: tuple[int, int] | None = None
    codec_prob: float = 0.0  # probability that a video goes through the H.264 round trip
    # probabilities that a video is a clean bicubic downscale (no blur, no noise; the codec still
    # may apply), and that a blurred one is subsampled (as BD) instead of bicubic
    clean_prob: float = 0.0
    subsample_prob: float = 0.0

    def __post_init__(self) -> None:
        # frozen: normalise lists from configs to tuples through object.__setattr__
        object.__setattr__(self, "blur_sigma", _as_pair(self.blur_sigma, "blur_sigma", float))
        object.__setattr__(self, "noise_sigma", _as_pair(self.noise_sigma, "noise_sigma", float))
        object.__setattr__(self, "crf", _as_pair(self.crf, "crf", int))
        if self.blur_sigma[0] < 0:
            raise DegradationError(f"DegradationRanges: blur_sigma must be >= 0, got {self.blur_sigma!r}")
        if self.noise_sigma[0] < 0 or self.noise_sigma[1] > 1:
            raise DegradationError(
                f"DegradationRanges: noise_sigma must lie in [0, 1] (8-bit levels / 255), got {self.noise_sigma!r}"
            )
        for name in ("codec_prob", "clean_prob", "subsample_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise DegradationError(
                    f"DegradationRanges: {name} must be in [0, 1], got {getattr(self, name)!r}"
                )
        if self.codec_prob > 0 and self.crf is None:
            raise DegradationError("DegradationRanges: codec_prob > 0 needs a crf range, e.g. crf=(18, 32)")
        if self.crf is not None and not (self.crf[0] >= 0 and self.crf[1] <= 51):
            raise DegradationError(f"DegradationRanges: crf must lie in [0, 51], got {self.crf!r}")


def sample_degradation(rng: np.random.Generator, *, scale: int, ranges: DegradationRanges) -> Degradation:
    """Draw one video's degradation. The caller seeds rng from the video's own seed.

    Always consumes the same seven draws, so changing codec_prob, clean_prob, subsample_prob or
    the crf range does not shift the blur, noise or seed of the videos (the clean and subsample
    coins are the last draws, so the first five are those of the videos drawn before they existed).
    """
    blur_sigma = float(rng.uniform(*ranges.blur_sigma))
    noise_sigma = float(rng.uniform(*ranges.noise_sigma))
    coin, crf_u = float(rng.random()), float(rng.random())
    seed = int(rng.integers(0, 2**31))
    clean = float(rng.random()) < ranges.clean_prob  # a clean downscale, as most users' videos are
    subsample = float(rng.random()) < ranges.subsample_prob and not clean
    if clean:
        blur_sigma = noise_sigma = 0.0
    crf = None
    if ranges.crf is not None and coin < ranges.codec_prob:
        low, high = ranges.crf
        crf = min(high, low + int(crf_u * (high - low + 1)))
    return Degradation(
        scale=scale, blur_sigma=blur_sigma, noise_sigma=noise_sigma, crf=crf, seed=seed, subsample=subsample
    )


def _frame_noise(seed: int, index: int, shape: tuple[int, ...]) -> Tensor:
    """Standard normal noise of one frame, a function of (video seed, absolute frame index) only."""
    mixed = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator().manual_seed(int(mixed))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def degrade(hr: Tensor, d: Degradation, *, frame_indices: Sequence[int] | None = None) -> Tensor:
    """(T, C, H, W) HR in [0, 1] -> (T, C, H/s, W/s) 8-bit-valued LR in [0, 1].

    blur(d.blur_sigma) -> MATLAB bicubic / d.scale (exactly "BI" when blur_sigma == 0; every
    d.scale-th pixel instead, as BD, when d.subsample) -> Gaussian
    noise -> clamp and round to 8 bit -> optional H.264 round trip at d.crf. frame_indices are the
    absolute indices of the T frames in their video (default 0..T-1): frame i's noise depends
    only on (d.seed, i), so a clip gets the same LR as the same frames of the whole video. A
    single (C, H, W) frame is frame 0 unless frame_indices says otherwise.
    """
    _check_float_image(hr, "degrade", min_dims=3)
    single = hr.ndim == 3
    if single:
        hr = hr.unsqueeze(0)
    if hr.ndim != 4:
        raise DegradationError(
            f"degrade: expected HR of shape (T, C, H, W) or (C, H, W), got {tuple(hr.shape)}"
        )
    t, _, h, w = hr.shape
    if h % d.scale or w % d.scale:
        raise DegradationError(
            f"degrade: HR size {h}x{w} is not divisible by scale {d.scale}; crop HR to a multiple of the scale"
        )
    indices = list(range(t)) if frame_indices is None else [int(i) for i in frame_indices]
    if len(indices) != t or any(i < 0 for i in indices):
        raise DegradationError(
            f"degrade: frame_indices must give one non-negative index per frame ({t}), got {list(frame_indices)!r}"
        )

    if d.subsample and d.blur_sigma > 0:
        lr = bd_downsample(hr, d.scale, sigma=d.blur_sigma)  # (t, c, h/s, w/s)
    else:
        lr = blur_downsample(hr, d.blur_sigma, d.scale)
    if d.noise_sigma > 0:
        noise = torch.stack([_frame_noise(d.seed, i, tuple(lr.shape[1:])) for i in indices])
        lr = lr + d.noise_sigma * noise.to(dtype=lr.dtype, device=lr.device)
    lr = quantise(lr)
    if d.crf is not None:
        lr = _h264(lr, d.crf)
    return lr[0] if single else lr


def _h264(lr: Tensor, crf: int) -> Tensor:
    """H.264 round trip of (T, 3, h, w) 8-bit-valued frames."""
    # Imported here: PyAV is only needed when a video actually goes through the codec.
    from hypernet.data.video_io import h264_roundtrip

    if lr.shape[1] != 3:
        raise DegradationError(
            f"degrade: the H.264 codec needs 3 RGB channels, got C={lr.shape[1]}; set crf=None"
        )
    frames = rearrange(torch.round(lr * 255.0).to(torch.uint8), "t c h w -> t h w c").cpu().numpy()
    decoded = torch.as_tensor(np.asarray(h264_roundtrip(frames, crf=crf)))
    return rearrange(decoded, "t h w c -> t c h w").to(device=lr.device, dtype=lr.dtype) / 255.0
