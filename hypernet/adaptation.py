"""LoRA fitted by gradient descent, with the base frozen and only the adapters moving: the
oracle (on a video's own HR frames), the self-supervised baseline (on its LR frames alone), a
domain adapter (one LoRA for many videos of one kind, read from disk clip by clip), and the
learned merge that puts the hypernetwork's per-video adapter on top of a domain adapter. The
engine of `python -m hypernet.finetune` and of the oracle in `python -m hypernet.eval`; a
library, not a LightningModule, so it lives outside systems/."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hypernet.data import video_io
from hypernet.data.datasets import spread_indices
from hypernet.data.degrade import bicubic_downsample, quantise
from hypernet.metrics import psnr
from hypernet.models.lora import Adapters, LoRASpec, init_adapters, merge_columns, stack_under_hypernet
from hypernet.sr import adapted_sr, charbonnier, self_supervised_loss

Clips = tuple[torch.Tensor, torch.Tensor | None]  # LR (B, T, C, h, w), HR (B, T, C, sh, sw) or None


def descend(
    params: list[torch.Tensor],
    loss_of: Callable[[Any], torch.Tensor],
    batches: Iterable[Any],
    *,
    steps: int,
    learning_rate: float,
    snapshot: Callable[[], Any],
    validate: Callable[[Any], float] | None = None,
    validate_every: int = 25,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Any, list[dict[str, float]]]:
    """Adam on `params` over `steps` batches, the loss `loss_of(batch)`. Without `validate`,
    returns the last `snapshot()`; with it, scores snapshots on held-out data (higher is better)
    before the first step and every `validate_every` steps and returns the best, so a fit that
    only hurts returns its start. Also returns the history of {"step", "score"}."""
    if steps < 1:
        raise ValueError(f"steps={steps}: fitting takes at least 1 step")
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    history: list[dict[str, float]] = []
    best, best_score = None, -float("inf")

    def offer(step: int) -> None:
        nonlocal best, best_score
        state = snapshot()
        if validate is None:
            best = state
            return
        score = validate(state)
        history.append({"step": step, "score": score})
        if score > best_score:
            best, best_score = state, score

    if validate is not None:
        offer(0)
    for step, batch in enumerate(itertools.islice(batches, steps), start=1):
        with torch.enable_grad():
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, loss.item())
        if step % validate_every == 0 or step == steps:
            offer(step)
    return best, history


def fit_adapters(
    base: nn.Module,
    spec: LoRASpec,
    batches: Iterable[Clips],
    *,
    steps: int,
    learning_rate: float = 1e-3,
    init: Adapters | None = None,
    seed: int = 0,
    validate: Callable[[Adapters], float] | None = None,
    validate_every: int = 25,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Adapters, list[dict[str, float]]]:
    """One set of adapters (V = 1) fitted with Adam on `batches`: with HR, the SR loss (the
    oracle, a domain adapter); without, the self-supervised loss on the LR frames alone.

    `validate` scores adapters on held-out data (higher is better, e.g. PSNR) before the first
    step and every `validate_every` steps; the best-scoring adapters are returned, so a fit that
    only hurts returns its start. Returns (adapters, history of {"step", "score"})."""
    generator = torch.Generator().manual_seed(seed)
    batches = iter(batches)
    first = next(batches)
    start = (
        init
        if init is not None
        else init_adapters(spec, num_videos=1, generator=generator, dtype=first[0].dtype)
    )
    leaves = {
        k: (a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
        for k, (a, b) in start.items()
    }

    def loss_of(clips: Clips) -> torch.Tensor:
        lr, hr = clips
        if hr is None:
            return self_supervised_loss(base, spec, leaves, lr)
        return charbonnier(adapted_sr(base, spec, leaves, lr), hr)

    return descend(
        [t for pair in leaves.values() for t in pair],
        loss_of,
        itertools.chain([first], batches),
        steps=steps,
        learning_rate=learning_rate,
        snapshot=lambda: {k: (a.detach().clone(), b.detach().clone()) for k, (a, b) in leaves.items()},
        validate=validate,
        validate_every=validate_every,
        on_step=on_step,
    )


def finetune_adapters(
    base: nn.Module,
    spec: LoRASpec,
    lr: torch.Tensor,
    *,
    hr: torch.Tensor | None = None,
    steps: int = 100,
    learning_rate: float = 1e-3,
    init: Adapters | None = None,
    seed: int = 0,
) -> Adapters:
    """Adapters for ONE video held in memory: lr (B, T, C, h, w) holds B clips of it, hr
    (B, T, C, sh, sw) or None; every step sees them all. The oracle with hr (it sees the
    answer), the self-supervised baseline without."""
    if lr.ndim != 5:
        raise ValueError(f"finetune_adapters takes clips (B, T, C, h, w), got {tuple(lr.shape)}")
    adapters, _ = fit_adapters(
        base, spec, itertools.repeat((lr, hr)), steps=steps, learning_rate=learning_rate, init=init, seed=seed
    )
    return adapters


def fit_on_closeups(
    base: nn.Module,
    spec: LoRASpec,
    item: dict,
    *,
    steps: int,
    learning_rate: float,
    seed: int = 0,
) -> Adapters:
    """The internal-learning reference of the memory benchmark: a LoRA fitted on one recurrence
    item's own cross-scale pairs, its close-ups degraded once more (the group's degradation) as
    inputs and the close-ups themselves as targets: LR only, no HR seen (`crossscale_pairs`)."""
    from hypernet.data.recurrence import crossscale_pairs

    inputs, targets = crossscale_pairs(
        item["closeups"], item["degradation"], clip_len=item["lr"].shape[0], seed=seed
    )
    return finetune_adapters(
        base, spec, inputs, hr=targets, steps=steps, learning_rate=learning_rate, seed=seed
    )


# ----------------------------------------------------------------------------------------------
# videos on disk, read a clip at a time


@dataclass(frozen=True)
class VideoPair:
    """One video of a fine-tuning set: its HR file (or None, self-supervised) and its LR file
    (or None: made from HR by MATLAB bicubic, the BI protocol)."""

    hr: Path | None
    lr: Path | None
    num_frames: int

    @property
    def name(self) -> str:
        return str(self.hr if self.hr is not None else self.lr)

    def clips(self, clips: Sequence[Sequence[int]], *, scale: int) -> Clips:
        """Clips of frame indices, read from disk now: LR (B, T, C, h, w), HR or None."""
        indices = [i for clip in clips for i in clip]
        shape = (len(clips), len(clips[0]))
        hr = None if self.hr is None else video_io.to_tensor(video_io.read_frames(self.hr, indices))
        lr = self.lr_frames(indices, scale=scale, hr=hr)
        return lr.view(*shape, *lr.shape[2:]), None if hr is None else hr.view(*shape, *hr.shape[2:])

    def lr_frames(
        self, indices: Sequence[int], *, scale: int, hr: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LR frames at `indices`, (1, n, C, h, w): read, or made from the HR ones (given, or read)."""
        if self.lr is not None:
            return video_io.to_tensor(video_io.read_frames(self.lr, indices))
        hr = video_io.to_tensor(video_io.read_frames(self.hr, indices)) if hr is None else hr
        return quantise(bicubic_downsample(hr, scale))


def clip_starts(num_frames: int, clip_len: int, count: int) -> list[list[int]]:
    """`count` clips of `clip_len` consecutive frames spread evenly over a video."""
    clip_len = min(clip_len, num_frames)
    starts = spread_indices(num_frames - clip_len + 1, min(count, num_frames - clip_len + 1), None)
    return [list(range(s, s + clip_len)) for s in starts]


def random_clips(
    videos: Sequence[VideoPair], *, clips: int, clip_len: int, scale: int, seed: int
) -> Iterator[tuple[int, Clips]]:
    """Endless training batches streamed from disk, as (video index, clips): each holds `clips`
    clips at random places of one video, the videos taken in a new shuffled order every round.
    Memory is one batch, whatever the number of videos; a single video keeps its evenly spread
    clips (every step sees the same frames, as the oracle does)."""
    if len(videos) == 1:
        fixed = videos[0].clips(clip_starts(videos[0].num_frames, clip_len, clips), scale=scale)
        yield from itertools.repeat((0, fixed))
        return
    rng = np.random.default_rng(seed)
    while True:
        for v in rng.permutation(len(videos)):
            video = videos[v]
            length = min(clip_len, video.num_frames)
            starts = rng.integers(0, video.num_frames - length + 1, size=clips)
            yield int(v), video.clips([list(range(s, s + length)) for s in starts], scale=scale)


def psnr_on(
    base: nn.Module,
    videos: Sequence[VideoPair],
    adapters_of: Callable[[int], tuple[LoRASpec, Adapters]],
    *,
    clips: int,
    clip_len: int,
    scale: int,
) -> float:
    """Mean PSNR-Y over `videos` (evenly spread clips of each, read from disk now), each with
    the adapters `adapters_of(video index)` returns as (spec, adapters)."""
    scores = []
    with torch.no_grad():
        for i, video in enumerate(videos):
            lr, hr = video.clips(clip_starts(video.num_frames, clip_len, clips), scale=scale)
            sr = adapted_sr(base, *adapters_of(i), lr).clamp(0, 1)
            scores.append(psnr(sr.flatten(0, 1), hr.flatten(0, 1), y_channel=True).mean().item())
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------
# the learned merge of a domain adapter with the hypernetwork's


def fit_merge(
    base: nn.Module,
    spec: LoRASpec,
    under: Adapters,
    hypernet_spec: LoRASpec,
    predicted: Sequence[Adapters],
    videos: Sequence[VideoPair],
    *,
    steps: int,
    clips: int,
    clip_len: int,
    scale: int,
    learning_rate: float = 1e-2,
    seed: int = 0,
    validate: Callable[[dict[str, torch.Tensor]], float] | None = None,
    validate_every: int = 25,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Per-column weights for the sum of a domain adapter and the hypernetwork's adapter, in the
    spirit of ZipLoRA: two adapters fitted apart both move the same weights, and their plain sum
    can overshoot. One factor per output channel of each adapter's layers, starting at 1 (the
    naive sum), fitted with Adam on the domain's own HR (`videos`, the hypernet's adapters
    `predicted` for each); both adapters stay fixed. `validate` (held-out videos, higher is
    better) keeps the best, starting from the naive sum itself."""
    start = merge_columns(spec, hypernet_spec=hypernet_spec)
    columns = {k: v.clone().requires_grad_(True) for k, v in start.items()}

    def loss_of(batch: tuple[int, Clips]) -> torch.Tensor:
        v, (lr, hr) = batch
        merged_spec, merged = stack_under_hypernet(spec, under, hypernet_spec, predicted[v], columns=columns)
        return charbonnier(adapted_sr(base, merged_spec, merged, lr), hr)

    return descend(
        list(columns.values()),
        loss_of,
        random_clips(videos, clips=clips, clip_len=clip_len, scale=scale, seed=seed),
        steps=steps,
        learning_rate=learning_rate,
        snapshot=lambda: {k: v.detach().clone() for k, v in columns.items()},
        validate=validate,
        validate_every=validate_every,
        on_step=on_step,
    )
