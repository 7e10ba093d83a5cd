"""Collect experiments/torch_scenes: content_scaling's mixed recipe with its procedural scenes drawn
by the tensor program (data.procedural.backend=torch), against the same recipe's two seeds with the
PIL painter (experiments/content_scaling/per_video.csv), on the same 20 test videos and their 20
multi-shot twins.

    .venv/bin/python scripts/collect_torch_scenes.py [--runs outputs/torch_scenes] [-o experiments/torch_scenes]

Writes beside the study's run.sh:

    results.md      the bases' PSNR-Y (test groups, bicubic), and per test group each stage-2 run's
                    gain over its base (mean +- s.e., videos improved, own - shuffled)
    per_video.csv   every test video's base PSNR-Y and gain, for the torch run and the PIL seeds
    metrics.json    the two runs' metrics.json, copied
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from hypernet.files import atomic_write_text
from hypernet.metrics import gain_summary, mean_stderr
from hypernet.runs import read_table_csv

REPO = Path(__file__).resolve().parent.parent
PIL_RUNS = ("mixed_s0", "mixed_s1")
TORCH_RUNS = (
    "mixed_s0",
    "mixed_s1",
)  # the same recipe and seeds, torch scenes  # content_scaling's mixed recipe, PIL painter, seeds 0 and 1
GROUPS = ("single", "multishot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "torch_scenes")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "experiments" / "torch_scenes")
    parser.add_argument(
        "--pil", type=Path, default=REPO / "experiments" / "content_scaling" / "per_video.csv"
    )
    args = parser.parse_args()
    base = json.loads((args.runs / "base_content" / "metrics.json").read_text())
    hyper = {run: json.loads((args.runs / run / "metrics.json").read_text()) for run in TORCH_RUNS}
    runs = {
        run: {(r["group"], r["video_id"]): r for r in read_table_csv(args.runs / run / "test_videos.csv")}
        for run in TORCH_RUNS
    }
    torch_rows = runs[TORCH_RUNS[0]]
    pil_rows = {(r["group"], r["video_id"]): r for r in read_table_csv(args.pil)}
    missing = sorted(set(torch_rows) - set(pil_rows))
    if missing:
        raise SystemExit(f"error: {args.pil} lacks test videos {missing[:3]}...: not the same test set")

    lines = [
        "# torch_scenes results",
        "",
        "Produced by `experiments/torch_scenes/run.sh` (collected by `scripts/collect_torch_scenes.py`).",
        "PIL rows: `experiments/content_scaling` (same recipe, same test videos, scenes by the PIL painter).",
        "",
        "## Bases (stage 1), test PSNR-Y",
        "",
        "| base | test group | PSNR-Y | bicubic |",
        "|---|---|---|---|",
    ]
    for group in GROUPS:
        keys = [k for k in torch_rows if k[0] == group]
        new = mean_stderr([float(torch_rows[k]["psnr_y_base"]) for k in keys])[0]
        old = mean_stderr([float(pil_rows[k]["psnr_y_base"]) for k in keys])[0]
        bicubic = mean_stderr([float(torch_rows[k]["psnr_y_bicubic"]) for k in keys])[0]
        lines.append(f"| base_content, torch scenes | {group} | {new:.3f} | {bicubic:.3f} |")
        lines.append(f"| base_content, PIL scenes (content_scaling) | {group} | {old:.3f} | {bicubic:.3f} |")
    per_video = []
    for group in GROUPS:
        keys = sorted(k for k in torch_rows if k[0] == group)
        lines += [
            "",
            f"## Stage 2, test group '{group}': gain over the base (PSNR-Y dB)",
            "",
            "| run | scenes | gain +- s.e. | videos improved | own - shuffled |",
            "|---|---|---|---|---|",
        ]
        means = {"torch": [], "PIL": []}
        for run, rows in runs.items():
            gains = [float(rows[k]["gain_y"]) for k in keys]
            shuffled = [float(rows[k]["psnr_y"]) - float(rows[k]["psnr_y_shuffled"]) for k in keys]
            s = gain_summary(gains)
            means["torch"].append(s["gain_y"])
            lines.append(
                f"| {run} | torch | {s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} | "
                f"{int(s['videos_improved'])}/{len(keys)} | {mean_stderr(shuffled)[0]:+.3f} |"
            )
        for run in PIL_RUNS:
            p = gain_summary([float(pil_rows[k][run]) for k in keys])
            means["PIL"].append(p["gain_y"])
            lines.append(
                f"| {run} (content_scaling) | PIL | {p['gain_y']:+.3f} +- {p['gain_y_stderr']:.3f} | "
                f"{int(p['videos_improved'])}/{len(keys)} | |"
            )
        lines.append("")
        lines.append(
            "Mean over the two seeds: "
            + "; ".join(
                f"{name} {sum(m) / len(m):+.3f} ({', '.join(f'{g:+.3f}' for g in m)})"
                for name, m in means.items()
            )
            + "."
        )
        for k in keys:
            per_video.append(
                {
                    "video_id": k[1],
                    "group": group,
                    "psnr_y_base_torch": torch_rows[k]["psnr_y_base"],
                    **{
                        f"gain_torch_{run[-2:]}": f"{float(rows[k]['gain_y']):+.4f}"
                        for run, rows in runs.items()
                    },
                    **{f"gain_pil_{run[-2:]}": pil_rows[k][run] for run in PIL_RUNS},
                    "psnr_y_base_pil": pil_rows[k]["psnr_y_base"],
                }
            )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.md", "\n".join(lines) + "\n")
    with (args.out / "per_video.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_video[0]))
        writer.writeheader()
        writer.writerows(per_video)
    atomic_write_text(
        args.out / "metrics.json",
        json.dumps({"base_content": base, **hyper}, indent=2, sort_keys=True) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
