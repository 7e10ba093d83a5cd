"""Per-video comparison of stage-2 runs on the same held-out videos, as a Markdown table.

    .venv/bin/python scripts/compare_runs.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [-o table.md]

Each RUN_DIR is a stage-2 run folder: its test_videos.csv (the held-out test videos; or
val_videos.csv for runs without a test split, or with --split val) has psnr_y, psnr_y_base,
psnr_y_shuffled per video; only the main test group ("single") is compared. The table gives each video's base PSNR-Y and every run's gain over the base; the
summary rows give the mean gain +- standard error, the videos improved, the shuffled-context
control and the adapter spread (from metrics.json)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from hypernet.metrics import gain_summary, mean_stderr


def read_rows(run_dir: Path, split: str = "test") -> dict[str, dict[str, float]]:
    path = run_dir / f"{split}_videos.csv"
    if split == "test" and not path.is_file():
        path = run_dir / "val_videos.csv"  # runs without a test split
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: is {run_dir} a finished stage-2 run folder?")
    with path.open() as f:
        return {
            r["video_id"]: {k: float(v) for k, v in r.items() if k not in ("video_id", "group")}
            for r in csv.DictReader(f)
            if r.get("group", "single") == "single"
        }


def table(runs: dict[str, Path], split: str = "test") -> str:
    data = {label: read_rows(d, split) for label, d in runs.items()}
    metrics = {label: json.loads((d / "metrics.json").read_text()) for label, d in runs.items()}
    first = next(iter(data.values()))
    videos = list(first)
    for label, rows in data.items():
        if list(rows) != videos:
            raise SystemExit(f"run {label} was validated on other videos than {next(iter(data))}")
    labels = list(data)
    lines = ["| video | base PSNR-Y | " + " | ".join(f"{lb} gain" for lb in labels) + " |"]
    lines.append("|---" * (2 + len(labels)) + "|")
    for v in videos:
        gains = " | ".join(f"{data[lb][v]['gain_y']:+.3f}" for lb in labels)
        lines.append(f"| {v} | {first[v]['psnr_y_base']:.2f} | {gains} |")
    gains = {lb: gain_summary([data[lb][v]["gain_y"] for v in videos]) for lb in labels}
    summary = {
        "mean gain +- s.e. (dB)": lambda lb: (
            f"{gains[lb]['gain_y']:+.3f} +- {gains[lb]['gain_y_stderr']:.3f}"
        ),
        "videos improved": lambda lb: f"{int(gains[lb]['videos_improved'])}/{len(videos)}",
        "shuffled-context gain (dB)": lambda lb: "{:+.3f}".format(
            mean_stderr([data[lb][v]["psnr_y_shuffled"] - data[lb][v]["psnr_y_base"] for v in videos])[0]
        ),
        "adapter spread": lambda lb: (
            f"{metrics[lb].get(f'{split}/adapter_spread', metrics[lb].get('val/adapter_spread', float('nan'))):.3f}"
        ),
    }
    for name, cell in summary.items():
        lines.append(f"| **{name}** | | " + " | ".join(cell(lb) for lb in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("-o", "--output", type=Path, help="also write the table here")
    parser.add_argument(
        "--split", choices=["test", "val"], default="test", help="which per-video table to compare"
    )
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: write LABEL=RUN_DIR")
        runs[label] = Path(path)
    text = table(runs, args.split)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
