"""The guard: the adapters' strength for one video, chosen from its LR frames alone, so that
`specialise` keeps the base where the adapters would make the video worse.

Each strength of GUARD_STRENGTHS (0 is the base exactly) upscales a few LR clips of the video (cut
to their centre, GUARD_CROP pixels at most, for cost). Two guards then judge the outputs.

The learned guard (`LearnedGuard`, the default once a checkpoint holds one). What the adapters do
to a video depends on its degradation and its content together, and the LR frames show much of
both: blur, noise and blocking in their statistics, the degradation that best explains the base's
output, how far each strength moves the output and how it reproduces the input. A ridge
regression from those measurements (`guard_features`) to the adapters' gain in PSNR-Y at each
strength is fitted per checkpoint where HR exists (`python -m hypernet.fit_guard`: fresh videos of
users' sizes and degradations, never a validation or test video) and stored in the checkpoint.
The strength of the best predicted gain wins if that beats the margin chosen with the fit (the
one whose leave-one-out predictions gain most while harming at most HARM_RATE of the fit's
videos). A video any of whose measurements lie outside what the guard was fitted on keeps the
base: every strength's prediction reads every measurement, and a regression says nothing there.
specialise uses the rule below instead when adapter files are stacked under the hypernetwork's
(the learned guard knows the hypernetwork's adapters alone).

The reproduction rule (checkpoints without a learned guard; eval's learned_guard=false). Does the
adapted output, degraded again, reproduce the input frames better than the base's does? Which
degradation to apply again is itself unknown, and it decides the answer; the rule takes the one
that best explains the base's own output (a Gaussian blur of GUARD_SIGMAS, then MATLAB bicubic or,
as BD, every scale-th pixel). What it is worth, measured in experiments/real_sizes: little. Its
evidence does not track the adapters' true gain on videos of users' sizes (correlation -0.16 and
-0.21 over 50 of them): adapters that keep the input's compression and noise reproduce it best.
It trims losses by keeping the base often, not by knowing which videos lose.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hypernet.data.degrade import bd_downsample, blur_downsample
from hypernet.metrics import psnr, rgb_to_y
from hypernet.models.lora import Adapters, LoRASpec, scale_adapters
from hypernet.sr import adapted_sr, bicubic_upscale

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
            f"the base (default: a learned guard's fitted margin, else {GUARD_MARGIN_DB:g}; 0 takes any gain)"
        )
    return float(margin)


@dataclass(frozen=True)
class GuardChoice:
    """The strength the guard chose and what it measured: the degradation that best explains the
    base's output, and for each strength tried its evidence in dB over the base: the learned
    guard's predicted gain in PSNR-Y (`learned`), or else the PSNR-Y of the input frames
    reproduced from its output under that degradation, less the base's."""

    strength: float
    degradation: str
    over_base: dict[float, float]
    margin: float
    learned: bool = False
    outside: list[str] = field(default_factory=list)  # measurements beyond the learned guard's fit

    @property
    def reason(self) -> str:
        tried = ", ".join(f"{s:g}: {d:+.3f}" for s, d in self.over_base.items() if s)
        if self.learned:
            if self.outside:
                why = (
                    f"the video's measurements lie outside what the learned guard was fitted on "
                    f"({', '.join(self.outside[:3])}{', ...' if len(self.outside) > 3 else ''}), so it judges no strength"
                )
            elif self.strength == 0:
                why = f"the learned guard predicts no strength gains more than {self.margin:g} dB PSNR-Y over the base"
            else:
                why = (
                    f"the learned guard predicts {self.over_base[self.strength]:+.3f} dB PSNR-Y over the base"
                )
            return f"strength {self.strength:g}: {why} (predicted by strength: {tried}; base output fits {self.degradation})"
        under = f"degraded again as the base's output fits best ({self.degradation})"
        if self.strength == 0:
            why = f"no strength's output, {under}, reproduced the LR frames better than the base's by more than {self.margin:g} dB"
        else:
            why = f"its output, {under}, reproduced the LR frames {self.over_base[self.strength]:+.3f} dB better than the base's"
        return f"strength {self.strength:g}: {why} (dB over the base by strength: {tried})"


def crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Top, left, height and width of the centre of an h x w frame, at most size x size."""
    return max(0, (h - size) // 2), max(0, (w - size) // 2), min(h, size), min(w, size)


def centre_crop(frames: torch.Tensor, size: int, *, scale: int = 1) -> torch.Tensor:
    """(..., h, w) cut to its centre, at most size x size; with `scale`, the same box of frames
    `scale` times larger (the HR of those LR frames)."""
    top, left, height, width = crop_box(frames.shape[-2] // scale, frames.shape[-1] // scale, size)
    return frames[..., top * scale : (top + height) * scale, left * scale : (left + width) * scale]


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


def strength_outputs(
    base: nn.Module, spec: LoRASpec, adapters: Adapters, lr: torch.Tensor, strengths: Sequence[float]
) -> dict[float, torch.Tensor]:
    """The clamped output (B, T, C, H, W) of the LR clips `lr` at every strength (and 0, the base)."""
    outputs = {}
    with torch.no_grad():
        for strength in sorted({0.0, *(float(s) for s in strengths)}):
            adapted = scale_adapters(adapters, strength, option="strengths")
            outputs[strength] = torch.cat([adapted_sr(base, spec, adapted, clip[None]) for clip in lr]).clamp(
                0, 1
            )
    return outputs


def choose_strength(
    base: nn.Module,
    spec: LoRASpec,
    adapters: Adapters,
    clips: torch.Tensor,
    *,
    margin: float | None = None,
    strengths: Sequence[float] = GUARD_STRENGTHS,
    learned: LearnedGuard | None = None,
) -> GuardChoice:
    """The strength of `adapters` (one video's, V = 1) for the video whose LR clips are `clips`
    (B, T, C, h, w). With a `learned` guard (the checkpoint's, hypernet.fit_guard): the strength of
    its best predicted gain, if that beats `margin` dB (None: the margin it was fitted with).
    Without: the strength whose output, degraded again as the base's output fits best, reproduces
    the clips best, if it beats the base's by more than `margin` dB (None: GUARD_MARGIN_DB).
    Otherwise 0 (the base). Uses nothing but the LR clips."""
    if margin is None:
        margin = learned.margin if learned is not None else GUARD_MARGIN_DB
    margin = check_margin(margin, option="margin")
    lr = centre_crop(clips, GUARD_CROP)
    outputs = strength_outputs(base, spec, adapters, lr, learned.strengths if learned else strengths)
    with torch.no_grad():
        family = degradations(base.scale)
        fits = {name: reproduction_db(d, outputs[0.0], lr) for name, d in family.items()}
        degradation = max(fits, key=fits.get)
        if learned is not None:
            features = guard_features(lr, outputs, scale=base.scale, fits=fits)
            over_base = learned.predict(features)
            outside = learned.outside(features)
        else:
            over_base = {
                s: reproduction_db(family[degradation], out, lr) - fits[degradation]
                for s, out in outputs.items()
            }
            outside = []
    best = 0.0 if outside else max(over_base, key=over_base.get)
    return GuardChoice(
        strength=best if over_base[best] > margin else 0.0,
        degradation=degradation,
        over_base=over_base,
        margin=margin,
        learned=learned is not None,
        outside=outside,
    )


# The learned guard: what it reads (guard_features), the regression, its fit.

# the degradations each strength's reproduction of the input is measured under ("best": the one
# that explains the base's output best)
FEATURE_BOXES = ("best", "blur 0, bicubic", "blur 1.2, bicubic", "blur 1.6, subsampled")


def _db(x: torch.Tensor) -> float:
    return 10 * math.log10(x.double().mean().item() + 1e-10)


def lr_statistics(lr: torch.Tensor) -> dict[str, float]:
    """What the LR frames (N, C, h, w) say of their degradation: their detail (gradient energy),
    noise (Immerkaer's estimate from a Laplacian-like filter), and blocking (the largest 8-pixel
    phase of the horizontal and vertical differences, over their mean)."""
    y = rgb_to_y(lr).double()
    dx, dy = (y[..., :, 1:] - y[..., :, :-1]).abs(), (y[..., 1:, :] - y[..., :-1, :]).abs()
    kernel = torch.tensor([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=y.dtype, device=y.device)[None, None]
    noise = torch.nn.functional.conv2d(y, kernel).abs().mean().item() * math.sqrt(math.pi / 2) / 6
    blocking = [
        (by_phase.max() / profile.mean().clamp_min(1e-8)).item()
        for profile in (dx.mean(dim=(0, 1, 2)), dy.mean(dim=(0, 1, 3)))
        for by_phase in [torch.stack([profile[p::8].mean() for p in range(min(8, profile.numel()))])]
    ]
    return {
        "lr detail": _db(dx.pow(2)) / 2 + _db(dy.pow(2)) / 2,
        "lr noise": math.log10(noise + 1e-6),
        "lr blocking": sum(blocking) / 2,
    }


def guard_features(
    lr: torch.Tensor,
    outputs: dict[float, torch.Tensor],
    *,
    scale: int,
    fits: dict[str, float] | None = None,
) -> dict[str, float]:
    """The LR-only measurements the learned guard reads, for clips `lr` (B, T, C, h, w) cut as
    the guard cuts them and the output at each strength (strength_outputs; 0 is the base).
    `fits`: how each degradation of `degradations(scale)` reproduces `lr` from the base's output,
    when the caller has measured it already."""
    base_out = outputs[0.0]
    family = degradations(scale)
    if fits is None:
        fits = {name: reproduction_db(d, base_out, lr) for name, d in family.items()}
    best = max(fits, key=fits.get)
    features = {f"fit {name}": fits[name] - fits[best] for name in family}
    features["fit best"] = fits[best]
    base_y = rgb_to_y(base_out)
    for strength, out in outputs.items():
        if strength == 0:
            continue
        for box in FEATURE_BOXES:
            name = best if box == "best" else box
            features[f"over base@{strength:g} {box}"] = reproduction_db(family[name], out, lr) - fits[name]
        features[f"change@{strength:g}"] = _db((rgb_to_y(out) - base_y).pow(2))
    features.update(lr_statistics(lr.flatten(0, 1)))
    features["base detail"] = _db((base_y - rgb_to_y(bicubic_upscale(lr, scale))).pow(2))
    return features


@dataclass(frozen=True)
class LearnedGuard:
    """Ridge regression from guard_features to the adapters' gain (dB PSNR-Y over the base) at
    each strength of `strengths`; `fitted` says on what (videos, seed, its leave-one-out record)."""

    features: tuple[str, ...]
    strengths: tuple[float, ...]
    mean: torch.Tensor  # (F,) of the features it was fitted on
    std: torch.Tensor  # (F,)
    weights: torch.Tensor  # (F, S)
    bias: torch.Tensor  # (S,)
    margin: float  # dB a predicted gain must beat: chosen in the fit (fit_learned_guard)
    low: torch.Tensor  # (F,) the smallest and largest value of each feature it was fitted on
    high: torch.Tensor  # (F,)
    fitted: dict

    def predict(self, features: dict[str, float]) -> dict[float, float]:
        missing = [name for name in self.features if name not in features]
        if missing:
            raise ValueError(f"the learned guard reads features this build does not measure: {missing}")
        x = torch.tensor([features[name] for name in self.features], dtype=torch.float64)
        gains = ((x - self.mean) / self.std) @ self.weights + self.bias
        return {0.0: 0.0, **dict(zip(self.strengths, gains.tolist(), strict=True))}

    def outside(self, features: dict[str, float]) -> list[str]:
        """The features that lie outside the range the guard was fitted on by more than
        RANGE_SLACK of it (adapters scaled until they ruin the output land far outside)."""
        slack = RANGE_SLACK * (self.high - self.low)
        return [
            name
            for i, name in enumerate(self.features)
            if not self.low[i] - slack[i] <= features[name] <= self.high[i] + slack[i]
        ]

    def state(self) -> dict:
        """Plain tensors, numbers and strings: what a checkpoint stores (weights_only loads it)."""
        return {
            "features": list(self.features),
            "strengths": list(self.strengths),
            "mean": self.mean,
            "std": self.std,
            "weights": self.weights,
            "bias": self.bias,
            "margin": self.margin,
            "low": self.low,
            "high": self.high,
            "fitted": self.fitted,
        }

    @classmethod
    def from_state(cls, state: dict) -> LearnedGuard:
        return cls(
            features=tuple(state["features"]),
            strengths=tuple(float(s) for s in state["strengths"]),
            mean=state["mean"],
            std=state["std"],
            weights=state["weights"],
            bias=state["bias"],
            margin=float(state["margin"]),
            low=state["low"],
            high=state["high"],
            fitted=dict(state["fitted"]),
        )


RIDGE_ALPHAS = (1.0, 10.0, 100.0)  # the ridge penalties a fit tries
FIT_MARGINS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)  # and the margins
HARM_DB = 0.05  # a video the guard's choice makes worse than the base by more than this is harmed
RANGE_SLACK = 0.25  # how far beyond the fitted range (a fraction of it) a feature may lie
HARM_RATE = 0.01  # the most of the fit's videos, each left out in turn, that the chosen rule may harm


def ridge(
    x: torch.Tensor, y: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, std, weights and bias of a ridge regression of y (N, S) on standardised x (N, F)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    bias = y.mean(0)
    weights = torch.linalg.solve(z.T @ z + alpha * torch.eye(z.shape[1], dtype=z.dtype), z.T @ (y - bias))
    return mean, std, weights, bias


def leave_one_out(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Each example's prediction (N, S) from a ridge fitted on all the others."""
    predictions = []
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        mean, std, weights, bias = ridge(x[keep], y[keep], alpha)
        predictions.append(((x[i] - mean) / std) @ weights + bias)
    return torch.stack(predictions)


def guarded_gains(predicted: torch.Tensor, true: torch.Tensor, margin: float) -> torch.Tensor:
    """The gain (N,) of the rule: the strength of the best predicted gain if it beats margin, else 0
    (a gain of 0); predicted and true are (N, S), strengths > 0 in columns."""
    best = predicted.argmax(1)
    take = predicted.gather(1, best[:, None])[:, 0] > margin
    return torch.where(take, true.gather(1, best[:, None])[:, 0], torch.zeros_like(true[:, 0]))


def fit_learned_guard(
    examples: Sequence[tuple[dict[str, float], dict[float, float]]], *, fitted: dict | None = None
) -> LearnedGuard:
    """The learned guard from (features, true gain by strength) of videos where HR exists.

    The ridge penalty and the margin are chosen together on leave-one-out predictions (each video
    predicted by a fit on the others): the pair whose rule gains most on average among those that
    harm at most HARM_RATE of the videos (more than HARM_DB below the base); if none does, the
    pair that harms fewest. That record goes into `fitted`: what to expect on new videos like them."""
    if len(examples) < 10:
        raise ValueError(f"the learned guard needs at least 10 videos to fit on, got {len(examples)}")
    names = tuple(examples[0][0])
    strengths = tuple(s for s in examples[0][1] if s > 0)
    x = torch.tensor([[f[n] for n in names] for f, _ in examples], dtype=torch.float64)
    y = torch.tensor([[g[s] for s in strengths] for _, g in examples], dtype=torch.float64)
    records = []
    for alpha in RIDGE_ALPHAS:
        predicted = leave_one_out(x, y, alpha)
        correlation = torch.corrcoef(torch.stack([predicted[:, -1], y[:, -1]]))[0, 1].item()
        for margin in FIT_MARGINS:
            gains = guarded_gains(predicted, y, margin)
            records.append(
                {
                    "alpha": alpha,
                    "margin": margin,
                    "loo_guarded_gain": gains.mean().item(),
                    "loo_guarded_worst": gains.min().item(),
                    "loo_harmed": int((gains < -HARM_DB).sum()),
                    "loo_kept_base": int((gains == 0).sum()),
                    "loo_correlation_at_1": correlation,
                }
            )
    allowed = [r for r in records if r["loo_harmed"] <= HARM_RATE * len(examples)]
    chosen = (
        max(allowed, key=lambda r: r["loo_guarded_gain"])
        if allowed
        else min(records, key=lambda r: (r["loo_harmed"], -r["loo_guarded_gain"]))
    )
    mean, std, weights, bias = ridge(x, y, chosen["alpha"])
    return LearnedGuard(
        features=names,
        strengths=strengths,
        mean=mean,
        std=std,
        weights=weights,
        bias=bias,
        margin=chosen["margin"],
        low=x.min(0).values,
        high=x.max(0).values,
        fitted={
            **(fitted or {}),
            **chosen,
            "videos": len(examples),
            "unguarded_gain": y[:, -1].mean().item(),
            "unguarded_worst": y[:, -1].min().item(),
            "unguarded_harmed": int((y[:, -1] < -HARM_DB).sum()),
        },
    )
