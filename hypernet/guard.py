"""The guard: the adapters' strength for one video, chosen from its LR frames alone, so that
`specialise` keeps the base where the adapters would make the video worse.

No HR exists at `specialise` time, so the guard asks what the LR frames can answer: does the
adapted output, degraded again, reproduce the input frames better than the base's does? Each
strength of GUARD_STRENGTHS (0 is the base exactly) upscales a few LR clips of the video (cut to
their centre, GUARD_CROP pixels at most, for cost); each output goes down again by the degradation
the check assumes (`degrade_again`) and is scored by PSNR-Y against the LR frames. The strength
that reproduces them best wins, but only by more than `margin` dB over the base: otherwise the
base. The choice and the scores travel with the result (`GuardChoice.reason`), for the run's log
and the adapter file's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hypernet.data.degrade import blur_downsample
from hypernet.metrics import psnr
from hypernet.models.lora import Adapters, LoRASpec, scale_adapters
from hypernet.sr import adapted_sr

GUARD_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
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
    """The strength the guard chose and what it measured: for each strength tried, the PSNR-Y
    (dB) of the input frames reproduced from its output, less the base's."""

    strength: float
    over_base: dict[float, float]
    margin: float

    @property
    def reason(self) -> str:
        tried = ", ".join(f"{s:g}: {d:+.3f}" for s, d in self.over_base.items() if s)
        if self.strength == 0:
            why = f"no strength reproduced the LR frames better than the base by more than {self.margin:g} dB"
        else:
            why = f"it reproduced the LR frames {self.over_base[self.strength]:+.3f} dB better than the base"
        return f"strength {self.strength:g}: {why} (dB over the base by strength: {tried})"


def centre_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(..., h, w) cut to its centre, at most size x size."""
    h, w = frames.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frames[..., top : top + min(h, size), left : left + min(w, size)]


def degrade_again(sr: torch.Tensor, scale: int) -> torch.Tensor:
    """An output (B, T, C, H, W) taken down to the input's size as the check assumes the video was."""
    return blur_downsample(sr.flatten(0, 1), 0.0, scale).unflatten(0, sr.shape[:2])


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
    (B, T, C, h, w): the one whose output reproduces the clips best, if it beats the base's by
    more than `margin` dB; 0 (the base) otherwise. Uses nothing but the LR clips."""
    margin = check_margin(margin, option="margin")
    if 0.0 not in strengths:
        strengths = (0.0, *strengths)
    lr = centre_crop(clips, GUARD_CROP)
    scores = {}
    with torch.no_grad():
        for strength in strengths:
            adapted = scale_adapters(adapters, strength, option="strengths")
            outputs = torch.cat([adapted_sr(base, spec, adapted, clip[None]) for clip in lr]).clamp(0, 1)
            again = degrade_again(outputs, base.scale)
            scores[float(strength)] = (
                psnr(again.flatten(0, 1), lr.flatten(0, 1), y_channel=True).mean().item()
            )
    over_base = {s: v - scores[0.0] for s, v in scores.items()}
    best = max(over_base, key=over_base.get)
    return GuardChoice(strength=best if over_base[best] > margin else 0.0, over_base=over_base, margin=margin)
