"""The guard: the adapters' strength for one video, chosen from its LR frames alone, so that
`specialise` keeps the base where the adapters would make the video worse.

No HR exists at `specialise` time, so the guard asks what the LR frames can answer: does the
adapted output, degraded again, reproduce the input frames better than the base's does? Which
degradation to apply again is itself unknown, and it decides the answer: under clean bicubic a
deblurring adapter looks wrong on a blurred video, and under a blur an over-sharpening one looks
right on a clean video. The guard takes the one that best explains the base's own output (a
Gaussian blur of GUARD_SIGMAS, then MATLAB bicubic or, as BD, every scale-th pixel): a base
trained on clean, blurred and subsampled videos alike (experiment=base_coverage) reproduces its
input best under about the video's own degradation, and the adapters are then judged under it.

Each strength of GUARD_STRENGTHS (0 is the base exactly) upscales a few LR clips of the video (cut
to their centre, GUARD_CROP pixels at most, for cost); the output goes down again and is scored by
PSNR-Y against the LR frames. The best strength wins if it beats the base by more than `margin`
dB; otherwise the base.

What it is worth, measured in experiments/real_sizes: little. Its evidence does not track the
adapters' true gain on videos of users' sizes (correlation -0.16 and -0.21 over 50 of them): it
trims losses by keeping the base often and picking strengths below 1, not by knowing which videos
lose, and it gives up most of the gain where the adapters help. It is the LR-only check the
project has; a guard that learns what helps, where HR exists, is the open problem.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hypernet.data.degrade import bd_downsample, blur_downsample
from hypernet.metrics import psnr
from hypernet.models.lora import Adapters, LoRASpec, scale_adapters
from hypernet.sr import adapted_sr

GUARD_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
GUARD_SIGMAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 2.0, 2.4)  # blur (HR pixels) of the fit
GUARD_MARGIN_DB = 0.02  # what a strength must gain over the base's reproduction of the input
GUARD_CROP = 128  # LR pixels: larger frames are checked on their centre
GUARD_CLIPS = 2  # clips of the video the check upscales
GUARD_CLIP_LEN = 5  # frames per clip (a window base sees its neighbours as it will in the video)


def check_margin(margin: float, *, option: str = "--guard-margin") -> float:
    """A guard margin: a finite number of dB >= 0; ValueError naming `option` otherwise."""
    if (
        isinstance(margin, bool)
        or not isinstance(margin, int | float)
        or not math.isfinite(margin)
        or margin < 0
    ):
        raise ValueError(
            f"{option}={margin!r}: the guard's margin is a number of dB >= 0 that a strength must gain over "
            f"the base (default {GUARD_MARGIN_DB:g}; 0 takes any gain)"
        )
    return float(margin)


@dataclass(frozen=True)
class GuardChoice:
    """The strength the guard chose and what it measured: the degradation that best explains the
    base's output, and for each strength tried the PSNR-Y (dB) of the input frames reproduced
    from its output under it, less the base's."""

    strength: float
    degradation: str
    over_base: dict[float, float]
    margin: float

    @property
    def reason(self) -> str:
        tried = ", ".join(f"{s:g}: {d:+.3f}" for s, d in self.over_base.items() if s)
        under = f"degraded again as the base's output fits best ({self.degradation})"
        if self.strength == 0:
            why = f"no strength's output, {under}, reproduced the LR frames better than the base's by more than {self.margin:g} dB"
        else:
            why = f"its output, {under}, reproduced the LR frames {self.over_base[self.strength]:+.3f} dB better than the base's"
        return f"strength {self.strength:g}: {why} (dB over the base by strength: {tried})"


def centre_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(..., h, w) cut to its centre, at most size x size."""
    h, w = frames.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frames[..., top : top + min(h, size), left : left + min(w, size)]


def degradations(scale: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The degradations the guard fits, by name: (N, C, H, W) -> (N, C, H/scale, W/scale)."""
    found = {
        f"blur {s:g}, bicubic": functools.partial(blur_downsample, sigma=s, factor=scale)
        for s in GUARD_SIGMAS
    }
    for s in GUARD_SIGMAS:
        if s >= 0.8:  # narrower kernels alias as bicubic does not; BD's own sigma is 1.6
            found[f"blur {s:g}, subsampled"] = functools.partial(bd_downsample, factor=scale, sigma=s)
    return found


def reproduction_db(degrade: Callable, sr: torch.Tensor, lr: torch.Tensor) -> float:
    """PSNR-Y of the LR frames (B, T, C, h, w) reproduced from an output (B, T, C, H, W)."""
    again = degrade(sr.flatten(0, 1))
    return psnr(again, lr.flatten(0, 1), y_channel=True).mean().item()


def choose_strength(
    base: nn.Module,
    spec: LoRASpec,
    adapters: Adapters,
    clips: torch.Tensor,
    *,
    margin: float = GUARD_MARGIN_DB,
    strengths: Sequence[float] = GUARD_STRENGTHS,
) -> GuardChoice:
    """The strength of `adapters` (one video's, V = 1) for the video whose LR clips are `clips`
    (B, T, C, h, w): the one whose output, degraded again as the base's output fits best,
    reproduces the clips best, if it beats the base's by more than `margin` dB; 0 (the base)
    otherwise. Uses nothing but the LR clips."""
    margin = check_margin(margin, option="margin")
    strengths = sorted({0.0, *(float(s) for s in strengths)})
    lr = centre_crop(clips, GUARD_CROP)
    with torch.no_grad():
        outputs = {}
        for strength in strengths:
            adapted = scale_adapters(adapters, strength, option="strengths")
            outputs[strength] = torch.cat([adapted_sr(base, spec, adapted, clip[None]) for clip in lr]).clamp(
                0, 1
            )
        family = degradations(base.scale)
        fits = {name: reproduction_db(d, outputs[0.0], lr) for name, d in family.items()}
        degradation = max(fits, key=fits.get)
        over_base = {
            s: reproduction_db(family[degradation], out, lr) - fits[degradation] for s, out in outputs.items()
        }
    best = max(over_base, key=over_base.get)
    return GuardChoice(
        strength=best if over_base[best] > margin else 0.0,
        degradation=degradation,
        over_base=over_base,
        margin=margin,
    )
