"""The learned guard (hypernet.guard.LearnedGuard, fitted by hypernet.fit_guard): a regression
from what a video's LR frames show to what its adapters gain, stored in the checkpoint."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import torch

from hypernet import eval as evaluation
from hypernet import fit_guard
from hypernet.checkpointing import read_checkpoint
from hypernet.config import compose_config
from hypernet.guard import FIT_MARGINS, LearnedGuard, fit_learned_guard
from hypernet.systems.hyper_lora import load_hypernet
from tests.helpers import TINY_FIT_GUARD
from tests.test_eval import TINY_DATA, compose_eval

STRENGTHS = (0.0, 0.5, 1.0)


def synthetic_examples(count: int, seed: int) -> list[tuple[dict[str, float], dict[float, float]]]:
    """Videos whose adapters gain in proportion to one measurement (`helps`, centred on 0.5) and
    its strength; the other measurement is noise."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(count):
        helps, noise = torch.rand(2, generator=generator).tolist()
        gains = {s: s * (helps - 0.5) + 0.01 * torch.randn(1, generator=generator).item() for s in STRENGTHS}
        examples.append(({"helps": helps, "noise": noise}, {**gains, 0.0: 0.0}))
    return examples


def test_the_learned_guard_predicts_gains_and_keeps_the_base_where_they_lose():
    guard = fit_learned_guard(synthetic_examples(60, seed=0))
    assert guard.strengths == (0.5, 1.0) and guard.features == ("helps", "noise")
    predicted = guard.predict({"helps": 0.9, "noise": 0.3})
    assert predicted[0.0] == 0 and predicted[1.0] == pytest.approx(0.4, abs=0.05)
    assert guard.predict({"helps": 0.1, "noise": 0.3})[1.0] == pytest.approx(-0.4, abs=0.05)
    # its leave-one-out record: the rule on videos it was not fitted on
    assert guard.fitted["videos"] == 60 and guard.fitted["loo_correlation_at_1"] > 0.95
    assert guard.fitted["loo_harmed"] == 0 < guard.fitted["unguarded_harmed"]
    assert guard.margin in FIT_MARGINS and guard.fitted["margin"] == guard.margin
    assert guard.fitted["loo_guarded_gain"] > guard.fitted["unguarded_gain"]


def test_the_learned_guard_travels_in_a_weights_only_checkpoint():
    guard = fit_learned_guard(synthetic_examples(30, seed=1), fitted={"seed": 3})
    buffer = io.BytesIO()
    torch.save({"guard": guard.state()}, buffer)
    buffer.seek(0)
    again = LearnedGuard.from_state(torch.load(buffer, weights_only=True)["guard"])
    features = {"helps": 0.7, "noise": 0.1}
    assert again.predict(features) == guard.predict(features) and again.fitted["seed"] == 3


def test_the_learned_guard_refuses_too_few_videos_and_unknown_measurements():
    with pytest.raises(ValueError, match="at least 10 videos"):
        fit_learned_guard(synthetic_examples(5, seed=0))
    guard = fit_learned_guard(synthetic_examples(20, seed=0))
    with pytest.raises(ValueError, match="noise"):
        guard.predict({"helps": 0.5})


FIT = TINY_FIT_GUARD


def test_fit_guard_stores_the_guard_in_the_checkpoint_and_eval_uses_it(
    gated_checkpoint, learned_checkpoint, tmp_path
):
    fitted = learned_checkpoint.parent / "fit"
    record = json.loads((fitted / "metrics.json").read_text())
    assert record["videos"] == 12 and {"loo_guarded_gain", "loo_harmed", "margin", "alpha"} <= set(record)
    rows = (fitted / "guard_fit.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and "gain@1" in rows[0] and "fit best" in rows[0]
    before = read_checkpoint(gated_checkpoint, option="x")
    after = read_checkpoint(learned_checkpoint, option="x")
    assert after["guard"]["features"] and "guard" not in before
    assert after["guard"]["margin"] == record["margin"]
    for name, tensor in before["state_dict"].items():  # the model itself is untouched
        assert torch.equal(after["state_dict"][name], tensor)
    assert isinstance(load_hypernet(learned_checkpoint).learned_guard, LearnedGuard)
    assert load_hypernet(gated_checkpoint).learned_guard is None

    checkpoint = learned_checkpoint
    out = tmp_path / "eval"
    evaluation.run(
        compose_eval(
            [
                *TINY_DATA,
                "methods=[base,hypernet_guard]",
                f"checkpoint={checkpoint}",
                f"paths.output_dir={out}",
            ]
        )
    )
    assert "the learned guard predicts" in (out / "guard.csv").read_text()
    out = tmp_path / "eval_rule"  # learned_guard=false: the reproduction rule, as before a guard was fitted
    evaluation.run(
        compose_eval(
            [
                *TINY_DATA,
                "methods=[base,hypernet_guard]",
                "learned_guard=false",
                f"checkpoint={checkpoint}",
                f"paths.output_dir={out}",
            ]
        )
    )
    assert "learned guard" not in (out / "guard.csv").read_text()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("videos=5", "videos=5"),
        ("sides=[4]", "sides="),
        ("sides=12", "sides=12"),
        ("degradation.clean_prob=2", "degradation"),
    ],
)
def test_fit_guard_refuses_bad_options_before_writing(gated_checkpoint, tmp_path, override, named):
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(gated_checkpoint, checkpoint)
    untouched = checkpoint.read_bytes()
    out = tmp_path / "fit"
    cfg = compose_config("fit_guard", [*FIT, override, f"checkpoint={checkpoint}", f"paths.output_dir={out}"])
    with pytest.raises(ValueError, match=named):
        fit_guard.prepare(cfg)
    assert checkpoint.read_bytes() == untouched and not out.exists()


def test_fit_guard_command_says_one_line_and_exits_2(gated_checkpoint, tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(gated_checkpoint, checkpoint)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hypernet.fit_guard",
            f"checkpoint={checkpoint}",
            "videos=3",
            f"paths.output_dir={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "videos=3" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_video_measured_outside_the_fit_is_not_judged():
    examples = [
        ({**features, "change@0.5": features["helps"] / 2, "change@1": features["helps"]}, gains)
        for features, gains in synthetic_examples(30, seed=2)
    ]
    guard = fit_learned_guard(examples)
    inside = {"helps": 0.9, "noise": 0.5, "change@0.5": 0.45, "change@1": 0.9}
    assert guard.outside(inside) == []
    # strength 1 moves the output far beyond anything fitted: every strength's prediction reads it
    ruined = {**inside, "change@1": 100.0}
    assert guard.outside(ruined) == ["change@1"]
    assert guard.predict(ruined)[0.5] != pytest.approx(guard.predict(inside)[0.5], abs=0.05)
    assert guard.outside({**inside, "noise": -5.0}) == ["noise"]


def test_a_guard_is_not_stored_into_a_checkpoint_that_changed_meanwhile(
    checkpoint, gated_checkpoint, tmp_path
):
    target = tmp_path / "model.ckpt"
    shutil.copy(gated_checkpoint, target)  # another run rewrote the file: its gates are not the fitted ones
    untouched = target.read_bytes()
    guard = fit_learned_guard(synthetic_examples(20, seed=0))
    with pytest.raises(ValueError, match="changed while its guard was fitted"):
        fit_guard.store_guard(target, guard, load_hypernet(checkpoint))
    assert target.read_bytes() == untouched
    fit_guard.store_guard(target, guard, load_hypernet(gated_checkpoint))  # the weights it was fitted on
    assert read_checkpoint(target, option="x")["guard"]["margin"] == guard.margin
