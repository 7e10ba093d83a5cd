"""Collect experiments/content_scaling: stage-2 gain over the base against the training content.

    .venv/bin/python scripts/collect_content_scaling.py outputs/content_scaling -o experiments/content_scaling

Reads each finished run folder (metrics.json, val_videos.csv, test_videos.csv, config.yaml) and
writes beside the study's run.sh:

    runs/<label>/   metrics.json, config.yaml, val_videos.csv, test_videos.csv (results, no checkpoints)
    results.md      the tables: bases; content x seed; controls; test groups apart (single-shot,
                    multi-shot); gain as a fraction of the degradation ceiling's and the oracle's
    per_video.csv   every test video's gain over the base in every stage-2 run
    plot.png        test gain (mean +- s.e. over videos) per content, seeds side by side, single-
                    and multi-shot

Gains are PSNR-Y (dB) over the frozen base on the same videos; "own - shuffled" is how much better
a video does with its own adapters than with another video's (per-video information).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
from pathlib import Path

from hypernet.metrics import gain_summary, mean_stderr

CONTENTS = ("photos", "augmented", "procedural", "mixed")  # in order of content diversity
CONTROLS = ("mixed_stats", "mixed_static", "mixed_degradation", "photos_on_photo_base")
GROUPS = ("single", "multishot", "large")
COPIED = ("metrics.json", "config.yaml", "val_videos.csv", "test_videos.csv")


def is_seed_run(label: str, content: str) -> bool:
    """mixed_s0, mixed_s1 are seeds of the content `mixed`; mixed_stats and mixed_static are controls."""
    return re.fullmatch(rf"{re.escape(content)}_s\d+", label) is not None


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def group_stats(rows: list[dict], group: str) -> dict[str, float]:
    rows = [r for r in rows if r.get("group", "single") == group]
    gains = gain_summary([float(r["gain_y"]) for r in rows])
    own = [float(r["psnr_y"]) - float(r["psnr_y_shuffled"]) for r in rows]
    return {
        "n": len(rows),
        "gain": gains["gain_y"],
        "se": gains["gain_y_stderr"],
        "improved": int(gains["videos_improved"]),
        "own_over_shuffled": mean_stderr(own)[0],
        "base": mean_stderr([float(r["psnr_y_base"]) for r in rows])[0],
    }


def fmt(stats: dict[str, float], metrics: dict, prefix: str) -> str:
    if not stats["n"]:
        return "| - | - | - | - |"
    spread = metrics.get(f"{prefix}adapter_spread", math.nan)
    return (
        f"| {stats['gain']:+.3f} +- {stats['se']:.3f} | {stats['improved']}/{stats['n']} "
        f"| {stats['own_over_shuffled']:+.3f} | {spread:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, help="the study's output folder (outputs/content_scaling)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()

    labels = sorted(
        p.name
        for p in args.runs.iterdir()
        if (p / "metrics.json").is_file() and not p.name.startswith("eval_")
    )
    if not labels:
        raise SystemExit(f"{args.runs} holds no finished run (no */metrics.json)")
    metrics = {label: json.loads((args.runs / label / "metrics.json").read_text()) for label in labels}
    tests = {label: read_csv(args.runs / label / "test_videos.csv") for label in labels}
    for label in labels:
        target = args.out / "runs" / label
        target.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            if (args.runs / label / name).is_file():
                shutil.copyfile(args.runs / label / name, target / name)

    lines = ["# content_scaling results", ""]
    lines += ["## Bases (stage 1), test videos", ""]
    lines += ["| base | test PSNR-Y | bicubic | multi-shot PSNR-Y | bicubic | val PSNR-Y (procedural) |"]
    lines += ["|---|---|---|---|---|---|"]
    for label in (lab for lab in labels if lab.startswith("base_")):
        m = metrics[label]
        lines.append(
            f"| {label} | {m.get('test/psnr_y', math.nan):.3f} | {m.get('test/psnr_y_bicubic', math.nan):.3f} "
            f"| {m.get('test/multishot/psnr_y', math.nan):.3f} | {m.get('test/multishot/psnr_y_bicubic', math.nan):.3f} "
            f"| {m.get('val/psnr_y', math.nan):.3f} |"
        )
    stage2 = [lab for lab in labels if not lab.startswith("base_")]
    for group in GROUPS:
        if not any(group_stats(tests[lab], group)["n"] for lab in stage2):
            continue
        prefix = "test/" if group == "single" else f"test/{group}/"
        lines += ["", f"## Stage 2, test group '{group}': gain over the base (PSNR-Y dB)", ""]
        lines += [
            "| run | gain +- s.e. | videos improved | own - shuffled | adapter spread | val gain (selection) |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for label in stage2:
            stats = group_stats(tests[label], group)
            val_gain = metrics[label].get("val/gain_y", math.nan)
            lines.append(f"| {label} {fmt(stats, metrics[label], prefix)} {val_gain:+.3f} |")
        pooled = []
        for content in CONTENTS:
            seeds = [lab for lab in stage2 if is_seed_run(lab, content)]
            if seeds:
                per_seed = [group_stats(tests[lab], group)["gain"] for lab in seeds]
                pooled.append(
                    f"{content}: {sum(per_seed) / len(per_seed):+.3f} (seeds {', '.join(f'{g:+.3f}' for g in per_seed)})"
                )
        if pooled:
            lines += ["", "Mean over seeds: " + "; ".join(pooled) + "."]
    ceiling = [lab for lab in stage2 if lab == "mixed_degradation"]
    blind = [lab for lab in stage2 if is_seed_run(lab, "mixed")]
    if ceiling and blind:
        c = group_stats(tests[ceiling[0]], "single")["gain"]
        b = sum(group_stats(tests[lab], "single")["gain"] for lab in blind) / len(blind)
        lines += [
            "",
            f"Blind hypernetwork (mixed content, mean over seeds) {b:+.3f} dB = {b / c:.2f} of the "
            f"degradation ceiling's {c:+.3f} dB."
            if c > 0
            else f"Blind {b:+.3f} dB; the degradation ceiling gained {c:+.3f} dB (not positive: no fraction).",
        ]
    for evaluation in sorted(
        p.name for p in args.runs.iterdir() if p.is_dir() and p.name.startswith("eval_")
    ):
        target = args.out / evaluation
        target.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "results.md", "results.csv", "gains.png"):
            if (args.runs / evaluation / name).is_file():
                shutil.copyfile(args.runs / evaluation / name, target / name)
    oracle_path = args.runs / "eval_mixed_s0" / "metrics.json"
    if oracle_path.is_file():
        ev = json.loads(oracle_path.read_text())
        oracle = ev["test/oracle/psnr_y"] - ev["test/base/psnr_y"]
        lines += [
            "",
            f"Oracle (a LoRA fitted to each test video's own HR, 100 Adam steps, `hypernet.eval` on mixed_s0's base): "
            f"{oracle:+.3f} dB; mixed_s0's {ev['test/hypernet_gain_y']:+.3f} dB is {ev['test/hypernet_gain_y'] / oracle:.3f} of it.",
        ]
        if "mixed_degradation" in stage2:
            c = group_stats(tests["mixed_degradation"], "single")["gain"]
            lines.append(f"The degradation ceiling's {c:+.3f} dB is {c / oracle:.3f} of the oracle's gain.")
    large = [
        (name, args.runs / name / "metrics.json")
        for name in ("eval_large_mixed_s0", "eval_large_tiled_mixed_s0")
    ]
    if any(path.is_file() for _, path in large):
        lines += ["", "## Real frame sizes (mixed_s0, `hypernet.eval data.test_large_hr=512`)", ""]
        lines += [
            "| context read as | test group | LR frames | base PSNR-Y | hypernet gain +- s.e. | videos improved |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for name, path in large:
            if not path.is_file():
                continue
            ev = json.loads(path.read_text())
            read = "24x24 tiles (context_tile=24)" if "tiled" in name else "whole frames"
            for group, size, prefix, n in (
                ("single", "24x24", "test/", 20),
                ("large", "128x128", "test/large/", 8),
            ):
                if f"{prefix}hypernet_gain_y" in ev:
                    lines.append(
                        f"| {read} | {group} | {size} | {ev[f'{prefix}base/psnr_y']:.3f} | "
                        f"{ev[f'{prefix}hypernet_gain_y']:+.3f} +- {ev[f'{prefix}hypernet_gain_y_stderr']:.3f} | "
                        f"{int(ev[f'{prefix}hypernet_videos_improved'])}/{n} |"
                    )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")

    with (args.out / "per_video.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "group", "psnr_y_base", *stage2])
        first = tests[stage2[0]] if stage2 else []
        for i, row in enumerate(first):
            gains = []
            for lab in stage2:
                other = tests[lab][i] if i < len(tests[lab]) else None
                same = other is not None and other["video_id"] == row["video_id"]
                gains.append(f"{float(other['gain_y']):+.4f}" if same else "")
            writer.writerow(
                [row["video_id"], row.get("group", "single"), f"{float(row['psnr_y_base']):.4f}", *gains]
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [*CONTENTS, *(c for c in CONTROLS)]
    x = 0
    ticks, tick_labels = [], []
    for name in names:
        runs = [lab for lab in stage2 if is_seed_run(lab, name) or lab == name]
        if not runs:
            continue
        for j, lab in enumerate(runs):
            for group, colour in (("single", "C0"), ("multishot", "C1")):
                s = group_stats(tests[lab], group)
                if s["n"]:
                    offset = 0.15 * j + (0.45 if group == "multishot" else 0)
                    ax.errorbar(
                        x + offset,
                        s["gain"],
                        yerr=s["se"],
                        fmt="o",
                        color=colour,
                        label=group if x == 0 and j == 0 else None,
                    )
        ticks.append(x + 0.3)
        tick_labels.append(name.replace("mixed_", "mixed\n"))
        x += 1.2
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(ticks, tick_labels, fontsize=8)
    ax.set_ylabel("test gain over the base, PSNR-Y dB (mean +- s.e.)")
    ax.set_title("Stage-2 gain against training content (seeds side by side)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "plot.png", dpi=110)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
