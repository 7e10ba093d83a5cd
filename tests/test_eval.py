import csv
import json
from pathlib import Path

import pytest
import torch

from hypernet import eval as evaluation
from hypernet.adaptation import finetune_adapters
from hypernet.config import compose_config
from hypernet.metrics import psnr
from hypernet.models.lora import init_adapters
from hypernet.sr import adapted_sr
from hypernet.systems.hyper_lora import fed_as_trained, load_hypernet

TINY_DATA = [
    "data.hr_size=32",
    "data.num_frames=8",
    "data.clip_len=3",
    "data.context_frames=3",
    "data.val_videos_per_image=1",
    "selfsup_steps=3",
    "oracle_steps=5",
    "crop_videos=2",
]


def compose_eval(overrides: list[str]):
    return compose_config("eval", overrides)


def test_eval_table_has_every_method_and_column(tiny_checkpoints, tmp_path):
    cfg = compose_eval(
        [*TINY_DATA, f"checkpoint={tiny_checkpoints['hyper']}", f"paths.output_dir={tmp_path}"]
    )
    summary = evaluation.run(cfg)
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "video_id", "method", "psnr_y", "ssim_y", "psnr_rgb", "seconds", "adapter_kib", "group"
    ]  # fmt: skip
    assert [r["method"] for r in rows[:5]] == ["bicubic", "base", "selfsup", "hypernet", "oracle"]
    assert len(rows) == 5 * 5  # five held-out photos, one video each, five methods
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(summary)
    for key in (
        "test/hypernet_gain_y",
        "test/hypernet_fraction_of_oracle_gain",
        "test/oracle_time_over_hypernet",
    ):
        assert key in saved
    # bicubic and base need no adapters; every LoRA method has the same adapter size
    sizes = {r["method"]: float(r["adapter_kib"]) for r in rows[:5]}
    assert (
        sizes["bicubic"] == sizes["base"] == 0
        and sizes["selfsup"] == sizes["hypernet"] == sizes["oracle"] > 0
    )
    text = (tmp_path / "results.md").read_text()
    assert "| oracle |" in text and "hypernet vs base" in text
    assert (tmp_path / "gains.png").stat().st_size > 0 and (tmp_path / "crops.png").stat().st_size > 0


def test_eval_refuses_unknown_methods(tiny_checkpoints, tmp_path):
    cfg = compose_eval([*TINY_DATA, f"checkpoint={tiny_checkpoints['hyper']}", "methods=[base,magic]"])
    with pytest.raises(ValueError, match="magic"):
        evaluation.run(cfg)


def test_oracle_finetune_improves_on_its_video(tiny_checkpoints):
    system = load_hypernet(tiny_checkpoints["hyper"])
    torch.manual_seed(0)
    hr = torch.rand(1, 3, 3, 8, 8).repeat_interleave(4, -1).repeat_interleave(4, -2)
    lr = torch.nn.functional.avg_pool2d(hr.flatten(0, 1), 4).view(1, 3, 3, 8, 8)
    before = psnr(system.base(lr).clamp(0, 1).flatten(0, 1), hr.flatten(0, 1)).mean()
    adapters = finetune_adapters(system.base, system.spec, lr, hr=hr, steps=30, learning_rate=1e-2)
    with torch.no_grad():
        after = psnr(
            adapted_sr(system.base, system.spec, adapters, lr).clamp(0, 1).flatten(0, 1), hr.flatten(0, 1)
        ).mean()
    assert after > before + 0.1
    # the base itself never moved
    fresh = load_hypernet(tiny_checkpoints["hyper"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(system.base.state_dict().values(), fresh.base.state_dict().values(), strict=True)
    )


def test_selfsup_finetune_changes_only_the_adapters(tiny_checkpoints):
    system = load_hypernet(tiny_checkpoints["hyper"])
    lr = torch.rand(2, 3, 3, 16, 16)
    start = init_adapters(system.spec, num_videos=1)
    adapters = finetune_adapters(system.base, system.spec, lr, steps=5, learning_rate=1e-2, init=start)
    assert any(not torch.equal(adapters[k][1], start[k][1]) for k in adapters)
    assert all(not p.requires_grad for p in system.base.parameters())
    assert Path(tiny_checkpoints["hyper"]).is_file()


def test_eval_reports_test_groups_apart(tiny_checkpoints, tmp_path):
    cfg = compose_eval(
        [
            *TINY_DATA,
            "methods=[base,hypernet]",
            "data.test_shots=2",
            "data.num_frames=8",
            f"checkpoint={tiny_checkpoints['hyper']}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    summary = evaluation.run(cfg)
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["group"] for r in rows} == {"single", "multishot"} and len(rows) == 2 * 5 * 2
    assert all("-shots2-" in r["video_id"] for r in rows if r["group"] == "multishot")
    assert "test/hypernet_gain_y" in summary and "test/multishot/hypernet_gain_y" in summary
    assert "| multishot | " in (tmp_path / "results.md").read_text()


def test_eval_reports_real_size_groups_and_the_guard(gated_checkpoint, tmp_path):
    cfg = compose_eval(
        [
            *TINY_DATA,
            "methods=[base,hypernet,hypernet_guard]",
            "data.test_real_sides=[12,20]",
            "data.test_real_scenes=1",
            f"checkpoint={gated_checkpoint}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    summary = evaluation.run(cfg)
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    groups = ["single", "real_bi", "real_bd", "real_random", "real_crf23", "real_crf33"]
    assert sorted({r["group"] for r in rows}) == sorted(groups)
    # per real group: 2 scenes and the 5 held-out photos at LR 20 (HR 80), 3 methods each
    assert sum(r["group"] == "real_bi" for r in rows) == 7 * 3
    with (tmp_path / "guard.csv").open() as f:
        guard = list(csv.DictReader(f))
    assert len(guard) == 5 + 5 * 7 and {"strength", "over_base@1", "reason", "gain_y"} <= set(guard[0])
    assert all(float(g["strength"]) in (0, 0.25, 0.5, 0.75, 1) for g in guard)
    for group in groups[1:]:
        for key in ("hypernet_gain_y", "hypernet_guard_worst_gain_y", "guard_kept_base"):
            assert f"test/{group}/{key}" in summary
    kept = sum(float(g["strength"]) == 0 for g in guard if g["group"] == "real_bi")
    assert summary["test/real_bi/guard_kept_base"] == kept
    table = (tmp_path / "results.md").read_text()
    assert "| real_crf33 | " in table and "guard kept the base" in table


def test_the_guards_choice_uses_no_hr(gated_checkpoint):
    system = load_hypernet(gated_checkpoint)
    cfg = compose_eval([*TINY_DATA, "methods=[base,hypernet_guard]", f"checkpoint={gated_checkpoint}"])
    cfg = fed_as_trained(cfg, system)
    from hypernet.data.datamodule import check_data

    item = check_data(cfg, stages=("test",)).test_sets["single"][0]
    other = {**item, "hr": torch.rand_like(item["hr"])}  # another HR: the same LR, context and times
    rows, _, _, chosen = evaluation.evaluate_video(system, item, cfg)
    rows_other, _, _, again = evaluation.evaluate_video(system, other, cfg)
    assert chosen["strength"] == again["strength"] and chosen["reason"] == again["reason"]
    assert rows[0]["psnr_y"] != rows_other[0]["psnr_y"]  # HR only scores the choice


def test_eval_sweeps_adapter_strength(tiny_checkpoints, tmp_path):
    cfg = compose_eval(
        [
            *TINY_DATA,
            "methods=[base,hypernet]",
            "strengths=[0,1,2]",
            f"checkpoint={tiny_checkpoints['hyper']}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    summary = evaluation.run(cfg)
    assert summary["test/hypernet_gain_y@0"] == pytest.approx(0.0, abs=1e-9)  # strength 0 is the base
    assert summary["test/hypernet_gain_y@1"] == pytest.approx(summary["test/hypernet_gain_y"], abs=1e-9)
    with (tmp_path / "strength.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3 * 5
    assert (tmp_path / "strength.png").stat().st_size > 0
    bad = compose_eval(
        [
            *TINY_DATA,
            "strengths=[-1]",
            f"checkpoint={tiny_checkpoints['hyper']}",
            f"paths.output_dir={tmp_path / 'bad'}",
        ]
    )
    with pytest.raises(ValueError, match=r"strengths=-1"):
        evaluation.run(bad)
    half = compose_eval(
        [
            *TINY_DATA,
            "methods=[base,hypernet]",
            "strengths=[0.5]",
            "strength=0.5",
            f"checkpoint={tiny_checkpoints['hyper']}",
            f"paths.output_dir={tmp_path / 'half'}",
        ]
    )
    summary = evaluation.run(half)  # strength=S scores the hypernet at S, as the sweep does
    assert summary["test/hypernet_gain_y"] == pytest.approx(summary["test/hypernet_gain_y@0.5"], abs=1e-9)
