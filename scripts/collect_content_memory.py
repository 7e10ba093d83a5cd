"""Collect experiments/content_memory: does the hypernetwork carry content from a close-up to a
distant shot of the same video, and how much of the internal-learning reference does it reach?

    .venv/bin/python scripts/collect_content_memory.py [--runs outputs/content_memory] [-o experiments/content_memory]

Reads each model's `hypernet.eval` folder (eval_<model>/: results.csv, metrics.json) and writes
beside the study's run.sh:

    results.md      per model, on test/recurrence (the wide shots scored): the hypernet's gain over
                    the base, its own adapters over another video's, with its close-ups over
                    without, the internal-learning reference and the oracle (mean +- s.e., videos
                    improved), the share of the reference reached and at what share of its time;
                    and the gain on the 20 standard test videos
    per_video.csv   every test video's PSNR-Y by model and method
    metrics.json    each evaluation's metrics.json, by model
    (and, when run: mixed_s0 on the benchmark at HR 96, eval_mixed_s0_hr96/; GUARDED with its
    learned guard on the real-size groups, guard_GUARDED/ and eval_real_GUARDED/)
    memory.png      the recurrence group's gains by model: the hypernet and its controls
    as_trained.csv  each model's adapters on validation recurrence videos with and without its
                    steps (as_trained_<model>/), its table in results.md
    plus.csv        a stepping model's step delta added to a direct model's adapters (plus_<pair>/)
    step_counts.csv each stepping model's adapters after 0 to its trained count of steps, timed,
                    beside the reference (counts_<model>/), its tables in results.md
    step_probe.csv, step_probe_noise.csv
                    the step probe's rows (step_probe/, scripts/probe_refine_steps.py), its tables
                    in results.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from probe_refine_steps import cell, counts_table  # the probe's own table, as it prints it (scripts/)

from hypernet.files import atomic_write_text
from hypernet.metrics import gain_summary
from hypernet.runs import read_table_csv, write_table_csv

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    "mixed_s0": "hyper_content as it was: HR 96, no recurrence videos, pooled encoder",
    "pooled_s0": "HR 192, half the training videos recurrence videos, pooled encoder",
    "grid_s0": "recurrence videos, spatial tokens (grid 4, 16 latents)",
    "both_plain_s0": "recurrence videos, spatial tokens and one plain refine step on the close-ups",
    "crossscale_s0": "recurrence videos, three normalised refine steps on noisy pairs from the close-ups",
    "both_s0": "recurrence videos, spatial tokens and those three steps",
    "crossscale_s1": "crossscale_s0's recipe, seed 1",
    "anchored_s0": "crossscale_s0's recipe, training also scoring the generated adapters before the steps",
    "split_s0": "crossscale_s0's recipe at rank 8, the steps moving half of each layer's rank (the other half all a video without close-ups gets)",
    "apart_s0": "split_s0, its first half trained on its own loss alone (the steps' path does not reach it)",
    "onestep_s0": "crossscale_s0's recipe trained at one refine step (the most that fits in 1% of the reference's time)",
    "onestep_s1": "onestep_s0's recipe, seed 1",
}
GUARDED = "crossscale_s0"  # the second seed's model, chosen on validation: its guard and the real-size groups
CONTROLS = ("hypernet_other", "hypernet_without_closeups", "crossscale", "oracle")


def psnr_table(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """An evaluation's results.csv rows as PSNR-Y by (group, video, method)."""
    return {(r["group"], r["video_id"], r["method"]): float(r["psnr_y"]) for r in rows}


def differences(table: dict, group: str, first: str, second: str) -> list[float]:
    """first minus second, PSNR-Y per video of the group (videos that have both)."""
    videos = sorted({v for g, v, m in table if g == group and m == first})
    return [
        table[(group, v, first)] - table[(group, v, second)] for v in videos if (group, v, second) in table
    ]


def model_lines(model: str, table: dict, metrics: dict) -> list[str]:
    r = "recurrence"
    seconds = {m: metrics.get(f"test/{r}/{m}/seconds") for m in ("hypernet", "crossscale")}
    reference = differences(table, r, "crossscale", "base")
    hyper = differences(table, r, "hypernet", "base")
    share = (sum(hyper) / sum(reference)) if reference and sum(reference) > 0 else float("nan")
    time_share = seconds["hypernet"] / seconds["crossscale"] if seconds["crossscale"] else float("nan")
    return [
        f"| {model} | {cell(hyper)} | {cell(differences(table, r, 'hypernet', 'hypernet_other'))} "
        f"| {cell(differences(table, r, 'hypernet', 'hypernet_without_closeups'))} | {cell(reference)} "
        f"| {100 * share:.0f}% at {100 * time_share:.2f}% of its time "
        f"| {cell(differences(table, r, 'oracle', 'base'))} | {cell(differences(table, 'single', 'hypernet', 'base'))} |"
    ]


def frame_size_lines(runs: Path, at_192: dict | None) -> list[str]:
    """mixed_s0 on the benchmark at HR 96 (LR 24, the training size) beside HR 192: where the
    internal-learning reference gains at all."""
    folder = runs / "eval_mixed_s0_hr96"
    if not (folder / "metrics.json").is_file() or at_192 is None:
        return []
    at_96 = psnr_table(read_table_csv(folder / "results.csv"))
    videos = {video for group, video, _ in at_96 if group == "recurrence"}
    # scenes are recurrence-<n>, photographs recurrence-<photo>-<n>
    photos = sum(not video.removeprefix("recurrence-").isdigit() for video in videos)
    scenes = len(videos) - photos
    lines = [
        "",
        "## Why HR 192: the benchmark at the training size",
        "",
        f"mixed_s0 on test/recurrence at HR 96 (LR 24: a close-up downscaled once more is 6 pixels; {scenes} scenes + "
        f"{photos} videos of the held-out photos that fit) and at HR 192 (LR 48; 16 scenes):",
        "",
        "| frame size | hypernet vs base | reference vs base | oracle vs base |",
        "|---|---|---|---|",
    ]
    for name, table in (("HR 96, LR 24", at_96), ("HR 192, LR 48", at_192)):
        cells = [
            cell(differences(table, "recurrence", m, "base")) for m in ("hypernet", "crossscale", "oracle")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def no_harm_lines(runs: Path) -> list[str]:
    """GUARDED with its learned guard on the real-size groups: no video worse than the base by
    more than 0.05 dB?"""
    folder = runs / f"eval_real_{GUARDED}"
    if not (folder / "metrics.json").is_file():
        return []
    table = psnr_table(read_table_csv(folder / "results.csv"))
    fit = json.loads((runs / f"guard_{GUARDED}" / "metrics.json").read_text())
    lines = [
        "",
        f"## Do no harm: {GUARDED} with its learned guard on the real-size groups",
        "",
        f"Its guard (`hypernet.fit_guard`, {int(fit['videos'])} fit videos): margin {fit['margin']:g} dB, leave-one-out "
        f"{fit['loo_guarded_gain']:+.3f} a video, {int(fit['loo_harmed'])} harmed.",
        "",
        "| group | hypernet vs base | hypernet + guard vs base | worst video with the guard |",
        "|---|---|---|---|",
    ]
    for group in sorted({g for g, _, _ in table}, key=lambda g: (g != "single", g)):
        guarded = differences(table, group, "hypernet_guard", "base")
        lines.append(
            f"| {group} | {cell(differences(table, group, 'hypernet', 'base'))} | {cell(guarded)} | {min(guarded):+.3f} |"
        )
    return lines


def probe_lines(runs: Path, out: Path) -> list[str]:
    """The step probe (scripts/probe_refine_steps.py on both_plain_s0, validation recurrence
    videos): its table, and its per-video rows copied beside the results."""
    folder = runs / "step_probe"
    if not (folder / "probe.md").is_file():
        return []
    write_table_csv(out / "step_probe.csv", read_table_csv(folder / "probe.csv"))
    if (folder / "noise.csv").is_file():  # a probe from before its noise table has none
        write_table_csv(out / "step_probe_noise.csv", read_table_csv(folder / "noise.csv"))
    table = (folder / "probe.md").read_text().splitlines()
    return [
        "",
        "## The step probe: why the steps are normalised and their pairs noisy (validation videos; step_probe.csv)",
        "",
        *table[2:],
    ]


def as_trained_lines(runs: Path, out: Path) -> list[str]:
    """Each model's adapters on 16 validation recurrence videos as it makes them and as its
    generator alone makes them (probe_refine_steps.py --as-trained); every video in as_trained.csv."""
    rows, lines = [], []
    for model in MODELS:
        path = runs / f"as_trained_{model}" / "as_trained.csv"
        if not path.is_file():
            continue
        chosen = read_table_csv(path)
        rows += [{"model": model, **r} for r in chosen]
        lines.append(
            f"| {model} | {cell([float(r['as_trained_y']) for r in chosen])} "
            f"| {cell([float(r['generated_y']) for r in chosen])} |"
        )
    if not rows:
        return []
    write_table_csv(out / "as_trained.csv", rows)
    return [
        "",
        "## The generator's adapters alone (validation recurrence videos; as_trained.csv)",
        "",
        "Wide shot PSNR-Y over the base: the adapters as the model makes them (its steps taken) and as "
        "its generator alone makes them (no step).",
        "",
        "| model | as trained | generator alone |",
        "|---|---|---|",
        *lines,
    ]


def counts_lines(runs: Path, out: Path) -> list[str]:
    """Each stepping model's adapters after 0 to its trained count of steps on 16 validation
    recurrence videos, timed, beside the reference (probe_refine_steps.py --step-counts); every
    video in step_counts.csv."""
    rows, lines = [], []
    for model in MODELS:
        path = runs / f"counts_{model}" / "counts.csv"
        if not path.is_file():
            continue
        chosen = read_table_csv(path)
        rows += [{"model": model, **r} for r in chosen]
        lines += ["", f"`{model}`:", "", *counts_table(chosen)]
    if not rows:
        return []
    write_table_csv(out / "step_counts.csv", rows)
    return [
        "",
        "## Time against gain: fewer steps at inference (validation recurrence videos; step_counts.csv)",
        "",
        "Each model's adapters after 0 to its trained count of refine steps (its learned step sizes), wide "
        "shot PSNR-Y over the base, and own minus the next video's adapters at the same count; the share "
        "of the internal-learning reference's gain (a LoRA fitted on the close-ups, 100 steps) at a share "
        "of its time, both measured on the same videos in one run.",
        *lines,
    ]


def plus_lines(runs: Path, out: Path) -> list[str]:
    """The plus probe (probe_refine_steps.py --plus): a stepping model's step delta added to a
    direct model's adapters on validation recurrence videos; every video in plus.csv."""
    rows, lines = [], []
    for folder in sorted(runs.glob("plus_*")):
        if (folder / "plus.md").is_file():
            rows += [
                {"pair": folder.name.removeprefix("plus_"), **r} for r in read_table_csv(folder / "plus.csv")
            ]
            lines += ["", *(folder / "plus.md").read_text().splitlines()]
    if not rows:
        return []
    write_table_csv(out / "plus.csv", rows)
    return [
        "",
        "## A step delta added to a direct model's adapters (validation recurrence videos; plus.csv)",
        *lines,
    ]


def sizes_lines(runs: Path) -> list[str]:
    """Each model on the held-out photos' videos at HR 96 (the 20 standard videos) and HR 192
    (sizes_<model>/: eval with data.test_large_hr=192): does a model trained at HR 192 lose the
    standard videos for their frame size?"""
    lines = []
    for model in MODELS:
        folder = runs / f"sizes_{model}"
        if not (folder / "metrics.json").is_file():
            continue
        table = psnr_table(read_table_csv(folder / "results.csv"))
        cells = [cell(differences(table, group, "hypernet", "base")) for group in ("single", "large")]
        lines.append(f"| {model} | {cells[0]} | {cells[1]} |")
    if not lines:
        return []
    return [
        "",
        "## The standard videos at two frame sizes (sizes_<model>/)",
        "",
        "The hypernet over the base on the held-out photos' videos at HR 96 (LR 24: the 20 standard videos) and "
        "at HR 192 (LR 48, the size the HR-192 models trained at; other camera paths over the same photos):",
        "",
        "| model | HR 96 (standard) | HR 192 |",
        "|---|---|---|",
        *lines,
    ]


def plot(path: Path, tables: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("hypernet", "hypernet_other", "hypernet_without_closeups", "crossscale")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(shown)
    models = list(tables)
    for i, method in enumerate(shown):
        means, errors = [], []
        for model in models:
            s = gain_summary(differences(tables[model], "recurrence", method, "base"))
            means.append(s["gain_y"])
            errors.append(s["gain_y_stderr"])
        ax.bar(
            [j + i * width for j in range(len(models))], means, width, yerr=errors, label=method, capsize=2
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(models))], models, rotation=20, ha="right", fontsize=8
    )
    ax.set_ylabel("PSNR-Y gain over the base on the wide shots (dB)")
    ax.set_title("test/recurrence: mean +- s.e.")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(runs: Path, out: Path) -> None:
    lines = [
        "# content_memory: results",
        "",
        "Produced by `bash experiments/content_memory/run.sh` (this file by "
        "`scripts/collect_content_memory.py`). test/recurrence: wide shots scored, mean +- s.e. (videos "
        "improved / videos) in dB PSNR-Y; `own - other`: the video's own adapters over another video's of "
        "the group; `with - without close-ups`: the video read whole over the same video with its "
        "close-ups removed from what the encoder and the refine steps read; `reference`: a LoRA fitted "
        "on the video's close-ups (LR only, 100 steps); `share`: the hypernet's gain over the "
        "reference's, and its time to specialise over the reference's.",
        "",
        "| model | hypernet vs base | own - other | with - without close-ups | reference vs base | share "
        "| oracle vs base | standard 20: hypernet vs base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_video, all_metrics, tables = [], {}, {}
    evaluations = [(model, runs / f"eval_{model}") for model in MODELS]
    for model in MODELS:  # a stepping model at another count of refine steps (eval's refine_steps)
        named = (re.fullmatch(rf"eval_{model}_k(\d+)", f.name) for f in runs.glob(f"eval_{model}_k*"))
        counts = sorted(int(m.group(1)) for m in named if m)
        evaluations += [(f"{model}, {k} step{'s' * (k != 1)}", runs / f"eval_{model}_k{k}") for k in counts]
    for model, folder in evaluations:
        if not (folder / "metrics.json").is_file():
            lines.append(f"| {model} | not run yet | | | | | | |")
            continue
        rows = read_table_csv(folder / "results.csv")
        table = psnr_table(rows)
        metrics = json.loads((folder / "metrics.json").read_text())
        tables[model], all_metrics[model] = table, metrics
        lines += model_lines(model, table, metrics)
        per_video += [
            {
                "model": model,
                "group": r["group"],
                "video_id": r["video_id"],
                "method": r["method"],
                "psnr_y": r["psnr_y"],
            }
            for r in rows
        ]
    lines += ["", "Models:", ""] + [f"- `{m}`: {w}" for m, w in MODELS.items()]
    lines += frame_size_lines(runs, tables.get("mixed_s0"))
    lines += no_harm_lines(runs)
    lines += sizes_lines(runs)
    out.mkdir(parents=True, exist_ok=True)
    lines += as_trained_lines(runs, out)
    lines += counts_lines(runs, out)
    lines += plus_lines(runs, out)
    lines += probe_lines(runs, out)
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    write_table_csv(out / "per_video.csv", per_video)
    atomic_write_text(out / "metrics.json", json.dumps(all_metrics, indent=1, sort_keys=True) + "\n")
    if tables:
        plot(out / "memory.png", tables)
    print((out / "results.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "content_memory")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "experiments" / "content_memory")
    args = parser.parse_args()
    collect(args.runs, args.out)


if __name__ == "__main__":
    main()
