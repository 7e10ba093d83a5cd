"""PSNR and SSIM as the VSR literature computes them (the BasicSR / MMagic protocol).

Numbers are only comparable with published tables when every detail matches: Y is MATLAB's
``rgb2ycbcr`` studio-swing luma (not rounded, as BasicSR), SSIM is Wang et al.'s with an 11x11
Gaussian window (sigma 1.5) over the valid region on the 0-255 scale, each frame is scored on its
own and a video's score is the mean over its frames (`video_metrics`). Arithmetic is float64 so
that the metric does not add noise of its own to small differences between methods.

Inputs are (..., C, H, W) in [0, 1]; `psnr` and `ssim` return one value per image of the leading
dims, e.g. (T,) for a (T, C, H, W) video and a 0-d tensor for a single (C, H, W) image.

Across videos, every table reports a mean +- its standard error (`mean_stderr`), and a gain over
a reference with the videos it improved (`gain_summary`): one definition for training's logs,
`hypernet.eval` and the scripts that collect studies.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hypernet.data.degrade import quantise

# MATLAB rgb2ycbcr, ITU-R BT.601 studio swing: Y = 16 + (65.481 R + 128.553 G + 24.966 B) for RGB in [0, 1]
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


class MetricInputError(ValueError):
    """Inputs a metric cannot score: the message names the shapes or option at fault."""


def rgb_to_y(x: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) BT.601 luma in [16/255, 235/255]."""
    if x.ndim < 3 or x.shape[-3] != 3:
        raise MetricInputError(f"rgb_to_y: expected (..., 3, H, W) RGB, got shape {tuple(x.shape)}")
    r, g, b = x.unbind(dim=-3)
    y = _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def _prepare(
    sr: Tensor, hr: Tensor, *, y_channel: bool, crop_border: int, quantize: bool, name: str
) -> tuple:
    """Check shapes, then float64, optional 8-bit rounding, border crop and Y conversion."""
    if not isinstance(sr, Tensor) or not isinstance(hr, Tensor):
        raise MetricInputError(f"{name}: sr and hr must be torch tensors")
    if sr.shape != hr.shape:
        raise MetricInputError(
            f"{name}: sr and hr must have the same shape, got sr {tuple(sr.shape)} and hr {tuple(hr.shape)}"
        )
    if sr.ndim < 3:
        raise MetricInputError(f"{name}: expected (..., C, H, W) tensors, got shape {tuple(sr.shape)}")
    if y_channel and sr.shape[-3] != 3:
        raise MetricInputError(
            f"{name}: y_channel=True needs 3 RGB channels, got shape {tuple(sr.shape)}; pass y_channel=False"
        )
    if isinstance(crop_border, bool) or int(crop_border) != crop_border or crop_border < 0:
        raise MetricInputError(f"{name}: crop_border must be a non-negative int, got {crop_border!r}")
    h, w = sr.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise MetricInputError(f"{name}: crop_border={crop_border} leaves nothing of a {h}x{w} image")

    out = []
    for x in (sr, hr):
        x = x.detach().to(torch.float64)
        if quantize:
            x = quantise(x)
        if crop_border:
            x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        if y_channel:
            x = rgb_to_y(x)
        out.append(x)
    return out[0], out[1]


def psnr(
    sr: Tensor,
    hr: Tensor,
    *,
    y_channel: bool = True,
    crop_border: int = 0,
    data_range: float = 1.0,
    quantize: bool = False,
) -> Tensor:
    """Peak signal-to-noise ratio in dB, one value per image: shape sr.shape[:-3], float64.

    Identical images give +inf (not a cap: a cap would silently bias means). quantize=True clamps
    and rounds both inputs to 8 bit first, as BasicSR does when it turns tensors into images;
    otherwise values are scored as given, unclamped. crop_border pixels are dropped on each side.
    """
    a, b = _prepare(sr, hr, y_channel=y_channel, crop_border=crop_border, quantize=quantize, name="psnr")
    mse = (a - b).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)  # mse 0 -> log10(inf) = inf


def _ssim_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.arange(_SSIM_WINDOW, dtype=torch.float64) - _SSIM_WINDOW // 2
    g = torch.exp(-(t**2) / (2 * _SSIM_SIGMA**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(
    sr: Tensor,
    hr: Tensor,
    *,
    y_channel: bool = True,
    crop_border: int = 0,
    quantize: bool = False,
) -> Tensor:
    """Structural similarity (Wang et al. 2004, as BasicSR), one value per image: sr.shape[:-3].

    11x11 Gaussian window sigma 1.5, K1 0.01, K2 0.03, on the 0-255 scale, averaged over the valid
    region (no padding, so H and W must be at least 11 after cropping); RGB SSIM is the mean of the
    per-channel SSIMs. quantize as in `psnr`.
    """
    a, b = _prepare(sr, hr, y_channel=y_channel, crop_border=crop_border, quantize=quantize, name="ssim")
    h, w = a.shape[-2:]
    if min(h, w) < _SSIM_WINDOW:
        raise MetricInputError(
            f"ssim: images must be at least {_SSIM_WINDOW}x{_SSIM_WINDOW} after cropping, got {h}x{w}"
        )
    lead, c = a.shape[:-3], a.shape[-3]
    a = a.reshape(-1, 1, h, w) * 255.0  # every channel of every image scored separately
    b = b.reshape(-1, 1, h, w) * 255.0
    g = _ssim_window(a.dtype, a.device)

    def filt(x: Tensor) -> Tensor:  # separable Gaussian, valid region: (n, 1, h, w) -> (n, 1, h-10, w-10)
        return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_channel = ssim_map.mean(dim=(-3, -2, -1)).reshape(*lead, c)
    return per_channel.mean(dim=-1)


def video_metrics(
    sr: Tensor, hr: Tensor, *, crop_border: int = 0, quantize: bool = False
) -> dict[str, Tensor]:
    """psnr_y, ssim_y and psnr_rgb of (..., T, 3, H, W) videos, each the mean over its frames:
    one value per video, shape sr.shape[:-4] (a 0-d tensor for a single (T, 3, H, W) video).

    The literature averages per-frame scores (not the PSNR of the mean MSE); a frame identical to
    its HR makes the PSNR mean inf. Values are scored as given: clamp a model's output first, as
    the images it writes are clamped.
    """
    if sr.ndim < 4:
        raise MetricInputError(
            f"video_metrics: expected (..., T, C, H, W) videos, got shape {tuple(sr.shape)}"
        )
    kwargs = {"crop_border": crop_border, "quantize": quantize}
    return {
        "psnr_y": psnr(sr, hr, y_channel=True, **kwargs).mean(dim=-1),
        "ssim_y": ssim(sr, hr, y_channel=True, **kwargs).mean(dim=-1),
        "psnr_rgb": psnr(sr, hr, y_channel=False, **kwargs).mean(dim=-1),
    }


def _mean_variance(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (n - 1), summed in order as every table so far was: 0 for one value,
    nan for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (the spread over seeds): 0 for one value, nan for none."""
    mean, variance = _mean_variance(values)
    return mean, math.sqrt(variance)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean over videos and its standard error, sqrt(sample variance / n): the "+-" of every
    results table; s.e. 0 for one video, both nan for none."""
    mean, variance = _mean_variance(values)
    return mean, math.sqrt(variance / len(values)) if len(values) else math.nan


def gain_summary(gains: Sequence[float]) -> dict[str, float]:
    """PSNR gains over a reference, one per video: gain_y (mean), gain_y_stderr and
    videos_improved (how many gained at all), the three figures every gain is reported with."""
    mean, stderr = mean_stderr(gains)
    return {"gain_y": mean, "gain_y_stderr": stderr, "videos_improved": float(sum(g > 0 for g in gains))}
