"""The study and benchmark scripts run end to end on the tiny checkpoint (slow: `make test-all`).
They are what experiments/ and the issue's figures are produced by, so a change that breaks one
shows here rather than months later in a rerun."""

from __future__ import annotations

import csv
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
sys.path.insert(0, str(ROOT / "scripts"))  # as when a benchmark runs: its shared module is `harness`

from harness import interleaved_seconds, median_ratio, run_measured  # noqa: E402

from hypernet.memory import peak_rss_mib  # noqa: E402


def run_script(*args: str, cwd: Path = ROOT) -> str:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_domain_study_pipeline_end_to_end(tiny_checkpoints, tmp_path):
    """make_domain_videos -> finetune (held-out strip, learned merge) -> domain_study: every
    method's row for every test video, the strength sweep, the plot."""
    videos = tmp_path / "videos"
    run_script(
        "scripts/make_domain_videos.py", "--photo", "ihc", "-o", str(videos), "--train", "3", "--val", "1",
        "--test", "2", "--frames", "6", "--hr-size", "32",
    )  # fmt: skip
    assert {p.name for p in videos.iterdir()} == {"train", "val", "test"}
    adapter = tmp_path / "domain.safetensors"
    out = run_script(
        "-m", "hypernet.finetune", "--checkpoint", str(tiny_checkpoints["hyper"]),
        "--hr", str(videos / "train" / "hr"), "--lr", str(videos / "train" / "lr"),
        "--val-hr", str(videos / "val" / "hr"), "--val-lr", str(videos / "val" / "lr"),
        "--steps", "4", "--val-every", "2", "--merge-steps", "2", "--clips", "2", "--clip-len", "3",
        "--no-progress", "-o", str(adapter),
    )  # fmt: skip
    assert "videos=3 held_out=1" in out and "val_psnr_learned_merge" in out
    study = tmp_path / "study"
    run_script(
        "scripts/domain_study.py", "--checkpoint", str(tiny_checkpoints["hyper"]), "--adapter", str(adapter),
        "--videos", str(videos / "test"), "--oracle-steps", "2", "--strengths", "0", "1", "-o", str(study),
    )  # fmt: skip
    with (study / "per_video.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "domain+hypernet merge" in rows[0]
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["base"]["gain_y"] == 0.0 and set(metrics) >= {"domain", "hypernet", "oracle"}
    with (study / "strength.csv").open() as f:
        strengths = list(csv.DictReader(f))
    zero = [r for r in strengths if float(r["strength"]) == 0 and r["method"] == "domain"]
    assert all(abs(float(r["gain_y"])) < 1e-9 for r in zero)  # strength 0 is the base
    assert (study / "plot.png").stat().st_size > 0 and "| oracle |" in (study / "results.md").read_text()


def test_bench_finetune_writes_its_figures(tiny_checkpoints, tmp_path):
    out = tmp_path / "bench.json"
    printed = run_script(
        "scripts/bench_finetune.py", "--checkpoint", str(tiny_checkpoints["hyper"]), "--frames", "6",
        "--size", "32", "--steps", "2", "--json", str(out),
    )  # fmt: skip
    figures = json.loads(out.read_text())
    assert figures["videos_2_videos"] == 2 and figures["videos_20_videos"] == 20
    assert figures["mem_20_over_2"] > 0 and "mem_20_over_2" in printed


def test_harness_reports_the_childs_own_peak_memory_not_the_parents(tmp_path):
    """A child's ru_maxrss from wait4 starts at the parent's size (fork or vfork, then exec): the
    harness reads VmHWM inside the child, so a small child of a large parent reports its own
    size, and what the child allocates shows in full."""
    script = tmp_path / "allocate.py"
    script.write_text(
        "import sys\nimport numpy as np\n"
        "block = np.ones(int(sys.argv[1]) * 2**20, dtype=np.uint8)\n"
        "print('{\"mib\": ' + sys.argv[1] + '}')\n"
    )
    ballast = np.ones(400 * 2**20, dtype=np.uint8)  # the parent holds 400 MiB while the children run
    small = run_measured([str(script), "1"], what="a 1 MiB child")
    large = run_measured([str(script), "200"], what="a 200 MiB child")
    assert small.last_json() == {"mib": 1} and large.last_json() == {"mib": 200}
    assert small.peak_mib < peak_rss_mib() - ballast.nbytes / 2**20
    assert 190 < large.peak_mib - small.peak_mib < 230
    with pytest.raises(SystemExit, match="error: a failing child failed"):
        run_measured([str(script), "not-a-number"], what="a failing child")


def test_interleaved_timing_alternates_the_steps_and_compares_them_round_by_round():
    """The stage-1 / stage-2 comparison of bench_hyper: warm-up rounds untimed, then the steps
    alternate, one sample each per round, the garbage collector back on afterwards; and a burst
    of load that slows one round of both steps does not move their ratio."""
    calls = []

    def step(name: str, seconds: float):
        def run():
            calls.append(name)
            time.sleep(seconds)

        return run

    samples = interleaved_seconds({"a": step("a", 0.001), "b": step("b", 0.004)}, warmup=2, repeats=3)
    assert calls == ["a", "b"] * 5
    assert len(samples["a"]) == len(samples["b"]) == 3 and gc.isenabled()
    assert all(b > a for a, b in zip(samples["a"], samples["b"], strict=True))
    assert median_ratio([2.0, 20.0, 2.2], [1.0, 10.0, 1.0]) == 2.0  # round 2 ran 10x slower for both
    assert median_ratio([2.0, 20.0, 2.2], [1.0, 1.0, 1.0]) == 2.2  # the burst hit one step alone


def test_bench_hyper_writes_its_figures(tmp_path):
    """bench_hyper end to end at a small budget: the encoder's streaming figures and each training
    step's against stage 1, the crossscale step taking its inner step on the marked close-ups."""
    out = tmp_path / "bench.json"
    run_script(
        "scripts/bench_hyper.py", "--frames-small", "8", "--frames-large", "16", "--repeats", "1",
        "--step-repeats", "1", "--json", str(out),
    )  # fmt: skip
    figures = json.loads(out.read_text())
    for key in (
        "encoder_time_16_over_8",
        "stage2_over_stage1",
        "stage2_quickstart_over_stage1",
        "stage2_memory_over_stage1",
        "stage2_crossscale_over_stage1",
        "crossscale_over_memory",
    ):
        assert figures[key] > 0, key


def test_bench_data_writes_its_figures(tmp_path):
    """bench_data end to end at a small budget: the draw-over-step ratios, the stall fraction
    (between 0 and 1), and the GPU rate said skipped where there is no GPU."""
    out = tmp_path / "bench.json"
    printed = run_script("scripts/bench_data.py", "--repeats", "1", "--stall-steps", "2", "--json", str(out))
    figures = json.loads(out.read_text())
    for key in ("procedural_over_step", "pil_over_step", "stills_over_step", "procedural_videos_per_s"):
        assert figures[key] > 0, key
    assert 0 <= figures["data_stall_fraction"] < 1 and figures["loader_workers"] >= 0
    if "cuda_procedural_videos_per_s" not in figures:
        assert "no CUDA GPU here" in printed


def test_probe_as_trained_writes_each_videos_adapters_with_and_without_steps(gated_checkpoint, tmp_path):
    """probe_refine_steps.py --as-trained on a direct-mode checkpoint: every validation recurrence
    video's row with both gains, equal (a direct model takes no step), and its table line."""
    from hypernet.runs import read_table_csv

    out = run_script(
        "scripts/probe_refine_steps.py",
        str(gated_checkpoint),
        "--as-trained",
        "--videos",
        "2",
        "-o",
        str(tmp_path),
    )
    rows = read_table_csv(tmp_path / "as_trained.csv")
    assert [r["video_id"] for r in rows] == ["recurrence-val0", "recurrence-val1"]
    assert all(r["as_trained_y"] == r["generated_y"] and float(r["as_trained_y"]) != 0 for r in rows)
    assert (tmp_path / "as_trained.md").read_text().strip() in out


def test_probe_step_counts_times_each_count_beside_the_reference(stepping_checkpoint, tmp_path):
    """probe_refine_steps.py --step-counts on a model trained with two steps: every validation
    recurrence video's row at 0, 1 and 2 steps and the reference's, each timed, and the table of
    shares it prints."""
    from hypernet.runs import read_table_csv

    out = run_script(
        "scripts/probe_refine_steps.py", str(stepping_checkpoint), "--step-counts", "--videos", "2",
        "--steps", "3", "-o", str(tmp_path),
    )  # fmt: skip
    rows = read_table_csv(tmp_path / "counts.csv")
    assert [(r["video_id"], r["steps"]) for r in rows] == [
        (f"recurrence-val{v}", str(k)) for k in (0, 1, 2) for v in (0, 1)
    ] + [("recurrence-val0", "reference"), ("recurrence-val1", "reference")]
    assert all(float(r["seconds"]) > 0 for r in rows)
    gains = {k: [float(r["gain_y"]) for r in rows if r["steps"] == k] for k in ("0", "1", "2")}
    assert gains["0"] != gains["1"] and gains["1"] != gains["2"]  # each step moves the adapters
    table = (tmp_path / "counts.md").read_text()
    assert table.strip() in out and "| reference (2 videos) |" in table and table.count("\n| ") == 5


def test_probe_plus_adds_a_models_step_delta_to_another_models_adapters(
    stepping_checkpoint, gated_checkpoint, tmp_path
):
    """probe_refine_steps.py CKPT --plus DIRECT: every validation recurrence video's row, and the
    sum's own-minus-other column is the difference of its two sums."""
    from hypernet.runs import read_table_csv

    out = run_script(
        "scripts/probe_refine_steps.py", str(stepping_checkpoint), "--plus", str(gated_checkpoint),
        "--videos", "2", "-o", str(tmp_path),
    )  # fmt: skip
    rows = read_table_csv(tmp_path / "plus.csv")
    assert [r["video_id"] for r in rows] == ["recurrence-val0", "recurrence-val1"]
    for r in rows:  # (the table's values are rounded to 4 decimals)
        own, other = float(r["sum_y"]), float(r["sum_with_other_delta_y"])
        assert float(r["own_minus_other_delta_y"]) == pytest.approx(own - other, abs=2e-4)
        assert own != pytest.approx(float(r["direct_y"]), abs=1e-3)  # the step delta moves the adapters
        # the two models share their generator: the direct one's adapters plus the stepping one's
        # delta are the stepping one's adapters, exactly
        assert own == pytest.approx(float(r["stepper_y"]), abs=2e-4)
    assert (tmp_path / "plus.md").read_text().strip() in out
