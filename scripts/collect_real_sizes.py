"""Collect experiments/real_sizes: the study's best recipe without and with the training coverage of
users' degradations, each with and without the guard, on the 20 standard test videos and on the
real-size groups (LR 128 to 320 pixels; clean bicubic, BD, random blur/noise, H.264 CRF 23 and 33).

    .venv/bin/python scripts/collect_real_sizes.py [--runs outputs/real_sizes] [-o experiments/real_sizes]

Reads each model's `hypernet.eval` folder (eval_<model>/: results.csv, guard.csv, metrics.json;
the reproduction rule), and for the models with a learned guard its fit (guard_<model>/) and its
evaluation with it (eval_learned_<model>/), and writes beside the study's run.sh:

    results.md      the diagnosis (mixed_s0 by LR side and degradation: size, degradation or
                    motion?); the bases of both recipes on every group; per model and test
                    group: the base over bicubic, the hypernetwork's gain over
                    the base without and with the guard (mean +- s.e., videos improved, the worst
                    video), how often the guard kept the base and what it cost where the adapters help
    per_video.csv   every test video's PSNR-Y by method, and the strength the guard chose
    metrics.json    each evaluation's metrics.json, by model (the learned guard's: <model>_learned_guard,
                    and its fit's leave-one-out record: <model>_guard_fit)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hypernet.files import atomic_write_text
from hypernet.metrics import gain_summary
from hypernet.runs import read_table_csv, write_table_csv

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    "mixed_s0": "without the coverage (content_scaling's mixed recipe)",
    "coverage_s0": "with the coverage (clean, subsampled and H.264 videos in both stages)",
    "coverage_s1": "the same, seed 1 (on the same base)",
}
GROUPS = ("single", "real_bi", "real_bd", "real_random", "real_crf23", "real_crf33")
METHODS = ("bicubic", "base", "hypernet", "hypernet_guard")


def gain_cell(gains: list[float]) -> str:
    s = gain_summary(gains)
    return f"{s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} ({int(s['videos_improved'])}/{len(gains)}, worst {min(gains):+.3f})"


def side_of(video_id: str) -> str:
    """The LR side a real-size video is drawn at ("scene128-0" -> "128"), "photo" for a photograph."""
    name = video_id.rsplit("-", 1)[0]
    return name.removeprefix("scene") if name.startswith("scene") else "photo"


def diagnosis(folder: Path) -> list[str]:
    """mixed_s0's gain by degradation and LR side: which of size, degradation or motion costs."""
    table = {
        (r["group"], r["video_id"], r["method"]): float(r["psnr_y"])
        for r in read_table_csv(folder / "results.csv")
    }
    half = {(r["group"], r["video_id"]): float(r["gain_y"]) for r in read_table_csv(folder / "strength.csv")}
    lines = [
        "",
        "## Diagnosis: mixed_s0 (no coverage) by LR side and degradation",
        "",
        "The same moving scenes (3 a side) and the held-out photos at each degradation; LR 24 is the training size.",
        "",
        "| degradation | LR side | videos | base over bicubic | hypernet | hypernet at strength 0.5 |",
        "|---|---|---|---|---|---|",
    ]
    for group in GROUPS[1:]:
        videos = sorted({v for g, v, _ in table if g == group})
        for side in sorted(
            {side_of(v) for v in videos}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0)
        ):
            chosen = [v for v in videos if side_of(v) == side]
            base = [table[(group, v, "base")] for v in chosen]
            over = [table[(group, v, "hypernet")] - b for v, b in zip(chosen, base, strict=True)]
            bicubic = sum(b - table[(group, v, "bicubic")] for v, b in zip(chosen, base, strict=True)) / len(
                chosen
            )
            lines.append(
                f"| {group.removeprefix('real_')} | {side} | {len(chosen)} | {bicubic:+.3f} | {gain_cell(over)} | "
                f"{gain_cell([half[(group, v)] for v in chosen])} |"
            )
    return lines


def guard_signal(runs: Path) -> list[str]:
    """Does the guard's evidence track the truth? Over the real-size videos: how much better the
    adapted output (strength 1) reproduces the LR frames than the base's, against its true gain."""
    import numpy as np

    lines = [
        "",
        "## The guard's evidence against the truth (real-size videos, strength 1)",
        "",
        "| model | videos | correlation of LR reproduction gain with true gain | same sign | true gain where the evidence says the adapters help |",
        "|---|---|---|---|---|",
    ]
    for model in MODELS:
        folder = runs / f"eval_{model}"
        table = {
            (r["group"], r["video_id"], r["method"]): float(r["psnr_y"])
            for r in read_table_csv(folder / "results.csv")
        }
        evidence, truth = [], []
        for r in read_table_csv(folder / "guard.csv"):
            if r["group"] != "single":
                evidence.append(float(r["over_base@1"]))
                truth.append(
                    table[(r["group"], r["video_id"], "hypernet")]
                    - table[(r["group"], r["video_id"], "base")]
                )
        evidence, truth = np.array(evidence), np.array(truth)
        said = truth[evidence > 0]
        lines.append(
            f"| {model} | {len(truth)} | {np.corrcoef(evidence, truth)[0, 1]:+.2f} | "
            f"{int(np.sum(np.sign(evidence) == np.sign(truth)))}/{len(truth)} | "
            f"{said.mean():+.3f} over {len(said)} videos |"
        )
    return lines


LEARNED = ("mixed_s0", "coverage_s0")  # the models whose learned guard run.sh fits (hypernet.fit_guard)


def learned_guard(runs: Path) -> tuple[list[str], dict[tuple[str, str, str], tuple[float, float]]]:
    """The learned guard (the default of specialise and eval once a checkpoint holds one) on the same
    videos: its gain over the base per group beside the hypernetwork's, and what its fit promised
    (leave-one-out on the fit's own videos). Also each video's (PSNR-Y, strength) with it."""
    lines = [
        "",
        "## The learned guard (hypernet.fit_guard), the same videos",
        "",
        "Fitted per checkpoint on 320 fresh videos where HR exists (training photographs and procedural scenes, LR 24 to 160, "
        "clean / blurred / subsampled / H.264); its penalty and margin chosen on their leave-one-out predictions.",
        "",
        "| model | test group | videos | hypernet | hypernet + learned guard | kept the base | cost where the adapters help | correlation of predicted with true gain (strength 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    import numpy as np

    per_video, pooled = {}, []
    for model in LEARNED:
        real_predicted, real_true, largest = [], [], {}
        folder = runs / f"eval_learned_{model}"
        table = {
            (r["group"], r["video_id"], r["method"]): float(r["psnr_y"])
            for r in read_table_csv(folder / "results.csv")
        }
        guard = {(r["group"], r["video_id"]): r for r in read_table_csv(folder / "guard.csv")}
        for group in GROUPS:
            videos = sorted({v for g, v, _ in table if g == group})
            over = {
                m: [table[(group, v, m)] - table[(group, v, "base")] for v in videos]
                for m in ("hypernet", "hypernet_guard")
            }
            helped = [(h, g) for h, g in zip(over["hypernet"], over["hypernet_guard"], strict=True) if h > 0]
            cost = (
                f"{sum(h - g for h, g in helped) / len(helped):+.3f} ({len(helped)} videos)"
                if helped
                else "-"
            )
            kept = sum(float(guard[(group, v)]["strength"]) == 0 for v in videos)
            predicted = np.array([float(guard[(group, v)]["over_base@1"]) for v in videos])
            correlation = np.corrcoef(predicted, over["hypernet"])[0, 1]
            largest[group] = max(
                max(float(guard[(group, v)][f"over_base@{s:g}"]) for s in (0.25, 0.5, 0.75, 1))
                for v in videos
            )
            if group != "single":
                real_predicted += list(predicted)
                real_true += over["hypernet"]
            lines.append(
                f"| {model} | {group} | {len(videos)} | {gain_cell(over['hypernet'])} | {gain_cell(over['hypernet_guard'])} | "
                f"{kept}/{len(videos)} | {cost} | {correlation:+.2f} |"
            )
            for v in videos:
                per_video[(model, group, v)] = (
                    table[(group, v, "hypernet_guard")],
                    float(guard[(group, v)]["strength"]),
                )
        fit = json.loads((runs / f"guard_{model}" / "metrics.json").read_text())
        lines.append(
            f"| | | | | | | | *{model}'s fit: margin {fit['margin']:g} dB, penalty {fit['alpha']:g}; leave-one-out over its "
            f"{int(fit['videos'])} videos: {fit['loo_guarded_gain']:+.3f} a video (unguarded {fit['unguarded_gain']:+.3f}), "
            f"{int(fit['loo_harmed'])} harmed by more than 0.05 dB (unguarded {int(fit['unguarded_harmed'])}), "
            f"correlation {fit['loo_correlation_at_1']:+.2f}* |"
        )
        real_predicted, real_true = np.array(real_predicted), np.array(real_true)
        pooled.append(
            f"| {model} | {len(real_true)} | {np.corrcoef(real_predicted, real_true)[0, 1]:+.2f} | "
            f"{int(np.sum(np.sign(real_predicted) == np.sign(real_true)))}/{len(real_true)} | "
            + " | ".join(f"{largest[g]:+.3f}" for g in GROUPS)
            + " |"
        )
    lines += [
        "",
        "Over all the real-size videos (strength 1), and the largest gain it predicts at any strength in each group:",
        "",
        "| model | videos | correlation of predicted with true gain | same sign | "
        + " | ".join(f"largest predicted, {g}" for g in GROUPS)
        + " |",
        "|---|---|---|---|" + "---|" * len(GROUPS),
        *pooled,
    ]
    return lines, per_video


def bases(runs: Path) -> list[str]:
    """The two recipes' bases on the same videos: what the coverage does for the base alone."""
    lines = [
        "",
        "## The bases: base_content (mixed_s0's) against base_coverage (coverage_s0's), same videos",
        "",
        "| test group | base_content over bicubic | base_coverage over bicubic | base_coverage over base_content |",
        "|---|---|---|---|",
    ]
    tables = {
        model: {
            (r["group"], r["video_id"], r["method"]): float(r["psnr_y"])
            for r in read_table_csv(runs / f"eval_{model}" / "results.csv")
        }
        for model in ("mixed_s0", "coverage_s0")  # coverage_s1 has coverage_s0's base
    }
    for group in GROUPS:
        videos = sorted({v for g, v, _ in tables["mixed_s0"] if g == group})
        over_bicubic = {
            model: sum(t[(group, v, "base")] - t[(group, v, "bicubic")] for v in videos) / len(videos)
            for model, t in tables.items()
        }
        old, new = over_bicubic["mixed_s0"], over_bicubic["coverage_s0"]
        diff = [
            tables["coverage_s0"][(group, v, "base")] - tables["mixed_s0"][(group, v, "base")] for v in videos
        ]
        lines.append(f"| {group} | {old:+.3f} | {new:+.3f} | {gain_cell(diff)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "real_sizes")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "experiments" / "real_sizes")
    args = parser.parse_args()
    lines = [
        "# real_sizes results",
        "",
        "Produced by `experiments/real_sizes/run.sh` (collected by `scripts/collect_real_sizes.py`).",
        "Gains are PSNR-Y over the model's own base, dB: mean +- s.e. (videos improved / videos, the worst video).",
        "",
        "| model | test group | videos | base over bicubic | hypernet | hypernet + guard | guard kept the base | guard's cost where the adapters help |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_video, metrics = [], {}
    for model, meaning in MODELS.items():
        folder = args.runs / f"eval_{model}"
        metrics[model] = json.loads((folder / "metrics.json").read_text())
        table = {
            (r["group"], r["video_id"], r["method"]): float(r["psnr_y"])
            for r in read_table_csv(folder / "results.csv")
        }
        chosen = {
            (r["group"], r["video_id"]): float(r["strength"]) for r in read_table_csv(folder / "guard.csv")
        }
        for group in GROUPS:
            videos = sorted({v for g, v, _ in table if g == group})
            psnr = {m: [table[(group, v, m)] for v in videos] for m in METHODS}
            over = {m: [a - b for a, b in zip(psnr[m], psnr["base"], strict=True)] for m in METHODS}
            helped = [(h, g) for h, g in zip(over["hypernet"], over["hypernet_guard"], strict=True) if h > 0]
            cost = (
                f"{sum(h - g for h, g in helped) / len(helped):+.3f} ({len(helped)} videos)"
                if helped
                else "-"
            )
            kept = sum(chosen[(group, v)] == 0 for v in videos)
            base_over_bicubic = -sum(over["bicubic"]) / len(videos)
            lines.append(
                f"| {model} | {group} | {len(videos)} | {base_over_bicubic:+.3f} | {gain_cell(over['hypernet'])} | "
                f"{gain_cell(over['hypernet_guard'])} | {kept}/{len(videos)} | {cost} |"
            )
            for i, video in enumerate(videos):
                per_video.append(
                    {"model": model, "group": group, "video_id": video}
                    | {f"psnr_y_{m}": psnr[m][i] for m in METHODS}
                    | {"guard_strength": chosen[(group, video)]}
                )
        lines.append(f"| | | | | | | | *{model}: {meaning}* |")
    learned_lines, learned_per_video = learned_guard(args.runs)
    for row in per_video:
        psnr, strength = learned_per_video.get((row["model"], row["group"], row["video_id"]), ("", ""))
        row["psnr_y_hypernet_learned_guard"], row["learned_guard_strength"] = psnr, strength
    lines += learned_lines
    lines += guard_signal(args.runs)
    lines += diagnosis(args.runs / "diagnosis_mixed_s0")
    lines += bases(args.runs)
    for model in LEARNED:
        metrics[f"{model}_learned_guard"] = json.loads(
            (args.runs / f"eval_learned_{model}" / "metrics.json").read_text()
        )
        metrics[f"{model}_guard_fit"] = json.loads(
            (args.runs / f"guard_{model}" / "metrics.json").read_text()
        )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.md", "\n".join(lines) + "\n")
    write_table_csv(args.out / "per_video.csv", per_video)
    atomic_write_text(args.out / "metrics.json", json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
