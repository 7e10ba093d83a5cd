"""The guard (hypernet.guard): the adapters' strength chosen from the LR video alone."""

from __future__ import annotations

import pytest
import torch

from hypernet.adaptation import finetune_adapters
from hypernet.data.degrade import bicubic_downsample, blur_downsample, quantise
from hypernet.data.procedural import ProceduralConfig, procedural_video
from hypernet.guard import (
    GUARD_MARGIN_DB,
    GUARD_STRENGTHS,
    LearnedGuard,
    check_margin,
    choose_strength,
    fit_learned_guard,
    guard_features,
    strength_outputs,
)
from hypernet.metrics import psnr
from hypernet.models.base import WindowVSR
from hypernet.models.lora import find_targets, init_adapters, scale_adapters
from hypernet.sr import adapted_sr, charbonnier


class Trained:
    """A small base trained like the shipped ones (clean and blurred videos alike), its LoRA spec."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        cfg = ProceduralConfig.from_options(None)
        hrs = torch.stack(
            [
                procedural_video(100 + i, cfg, num_frames=3, frame_size=64).hr_frames([0, 1, 2])
                for i in range(16)
            ]
        )
        self.base = WindowVSR(channels=16, num_blocks=2)
        optimizer = torch.optim.Adam(self.base.parameters(), lr=2e-3)
        for _ in range(300):
            hr = hrs[torch.randint(0, len(hrs), (4,), generator=generator)]
            sigmas = [
                0.0
                if torch.rand(1, generator=generator) < 0.3
                else 0.4 + 2 * torch.rand(1, generator=generator).item()
                for _ in hr
            ]
            lr = torch.stack([quantise(blur_downsample(x, s, 4)) for x, s in zip(hr, sigmas, strict=True)])
            loss = charbonnier(self.base(lr), hr)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.base.eval().requires_grad_(False)
        self.spec = find_targets(self.base, rank=4)


@pytest.fixture(scope="module")
def system() -> Trained:
    return Trained()


@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, torch.Tensor]:
    """A moving procedural scene, 5 frames, clean bicubic: LR (1, 5, 3, 24, 24) and its HR."""
    video = procedural_video(11, ProceduralConfig.from_options(None), num_frames=5, frame_size=96)
    hr = video.hr_frames(list(range(5)))[None]
    return quantise(bicubic_downsample(hr, 4)), hr


def psnr_y(sr: torch.Tensor, hr: torch.Tensor) -> float:
    return psnr(sr.clamp(0, 1).flatten(0, 1), hr.flatten(0, 1), y_channel=True).mean().item()


def test_adapters_that_ruin_the_output_get_strength_zero(system, clip):
    lr, hr = clip
    base, spec = system.base, system.spec
    oracle = finetune_adapters(base, spec, lr, hr=hr, steps=60, learning_rate=3e-3)
    reference = psnr_y(adapted_sr(base, spec, None, lr), hr)
    harmful = None
    for factor in (4, 16, 64, 256):  # scaled up until they ruin the output
        harmful = scale_adapters(oracle, factor)
        if psnr_y(adapted_sr(base, spec, harmful, lr), hr) < reference - 3:
            break
    else:
        pytest.fail("scaling the adapters up never ruined the output")
    choice = choose_strength(base, spec, harmful, lr)
    assert choice.strength == 0
    assert "strength 0" in choice.reason and all(d < 0 for s, d in choice.over_base.items() if s)


@pytest.mark.xfail(
    strict=True,
    reason="a known shortfall (experiments/real_sizes): an adapter fitted on HR improves the output "
    "but its output, degraded again, reproduces the LR frames worse than the base's beyond strength "
    "0.25; reproducing the input is not monotone in fidelity to HR",
)
def test_an_adapter_fitted_on_the_videos_own_hr_keeps_at_least_half_its_strength(system, clip):
    lr, hr = clip
    base, spec = system.base, system.spec
    oracle = finetune_adapters(base, spec, lr, hr=hr, steps=60, learning_rate=3e-3)
    gain = psnr_y(adapted_sr(base, spec, oracle, lr), hr) - psnr_y(adapted_sr(base, spec, None, lr), hr)
    assert gain > 0.5  # the oracle really helps this video
    choice = choose_strength(base, spec, oracle, lr)
    assert choice.strength >= 0.5, choice.reason


def test_strength_zero_is_the_base_exactly_and_the_margin_is_checked(system, clip):
    lr, _ = clip
    base, spec = system.base, system.spec
    zero = init_adapters(spec, num_videos=1)  # B = 0: no change to any weight
    choice = choose_strength(base, spec, zero, lr)
    assert choice.strength == 0 and set(choice.over_base.values()) == {0.0}
    assert check_margin(0) == 0 and check_margin(GUARD_MARGIN_DB) == GUARD_MARGIN_DB
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="--guard-margin"):
            check_margin(bad)


@pytest.fixture(scope="module")
def learned(system) -> LearnedGuard:
    """A learned guard fitted on this base's adapters where HR exists: on 8 other scenes (clean
    bicubic or blurred), an adapter fitted on each one's HR (it helps) and the same adapter with
    its weight change reversed (it hurts), their gains at every strength measured against HR."""
    base, spec = system.base, system.spec
    examples = []
    for i in range(8):
        video = procedural_video(200 + i, ProceduralConfig.from_options(None), num_frames=5, frame_size=96)
        hr = video.hr_frames(list(range(5)))[None]
        lr = quantise(blur_downsample(hr[0], 0.0 if i % 2 else 1.2, 4))[None]
        oracle = finetune_adapters(base, spec, lr, hr=hr, steps=60, learning_rate=3e-3)
        for adapters in (oracle, {k: (a, -b) for k, (a, b) in oracle.items()}):
            outputs = strength_outputs(base, spec, adapters, lr, GUARD_STRENGTHS)
            scores = {s: psnr_y(out, hr) for s, out in outputs.items()}
            examples.append(
                (guard_features(lr, outputs, scale=4), {s: v - scores[0.0] for s, v in scores.items()})
            )
    return fit_learned_guard(examples)


def test_the_learned_guard_keeps_the_base_for_ruined_adapters_and_most_of_an_hr_fitted_one(
    system, clip, learned
):
    lr, hr = clip
    base, spec = system.base, system.spec
    oracle = finetune_adapters(base, spec, lr, hr=hr, steps=60, learning_rate=3e-3)
    choice = choose_strength(base, spec, oracle, lr, learned=learned)
    assert choice.learned and choice.strength >= 0.5, choice.reason
    assert "the learned guard predicts" in choice.reason
    reference = psnr_y(adapted_sr(base, spec, None, lr), hr)
    for factor in (4, 16, 64, 256):  # scaled up until they ruin the output
        harmful = scale_adapters(oracle, factor)
        if psnr_y(adapted_sr(base, spec, harmful, lr), hr) < reference - 3:
            break
    choice = choose_strength(base, spec, harmful, lr, learned=learned)
    assert choice.strength == 0, choice.reason
