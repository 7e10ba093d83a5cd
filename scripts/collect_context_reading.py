"""Collect experiments/context_reading: the hypernetwork's gain with the context read as in
training (a few frames spread over the video) against its encoder streaming every frame (as
`specialise` reads a video), paired on the same test videos.

    .venv/bin/python scripts/collect_context_reading.py outputs/content_scaling/eval_context_reading \
        -o experiments/context_reading

Reads the eval folder (results.csv, metrics.json, eval.json) and writes beside the study's run.sh:

    results.md      per test group: the base, each reading's gain over it (mean +- s.e., videos
                    improved) and their paired difference; with --frames, the gain when the
                    encoder reads more spread frames than it trained on
    per_video.csv   every video's PSNR-Y with the base and with each reading
    metrics.json    the eval's own figures, copied
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from hypernet.metrics import gain_summary, mean_stderr

READINGS = {"hypernet": "{k} spread frames, as trained", "hypernet_stream": "every frame, streamed"}


def frames_table(eval_dir: Path, others: list[Path], groups: list[str], trained: int) -> list[str]:
    """The gain with K spread frames read (K = what each eval folder used), paired per video with
    the trained count's."""

    def gains(folder: Path) -> dict[tuple[str, str], float]:
        with (folder / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        psnr = {(r["group"], r["video_id"], r["method"]): float(r["psnr_y"]) for r in rows}
        return {(g, v): psnr[(g, v, "hypernet")] - psnr[(g, v, "base")] for g, v, m in psnr if m == "base"}

    reference = gains(eval_dir)
    lines = [
        "",
        "| spread frames read | test group | gain over the base | against the trained count |",
        "|---|---|---|---|",
    ]
    for folder in [eval_dir, *others]:
        count = json.loads((folder / "eval.json").read_text())["context_frames"]
        these = gains(folder)
        for group in groups:
            keys = [k for k in reference if k[0] == group]
            s = gain_summary([these[k] for k in keys])
            d = gain_summary([these[k] - reference[k] for k in keys])
            label = f"{count} (trained)" if count == trained else str(count)
            lines.append(
                f"| {label} | {group} | {s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} "
                f"({int(s['videos_improved'])}/{len(keys)}) | {d['gain_y']:+.3f} +- {d['gain_y_stderr']:.3f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="the hypernet.eval output folder")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument(
        "--frames", type=Path, nargs="*", default=[], help="eval folders at other context_frames"
    )
    args = parser.parse_args()
    with (args.eval_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    psnr = {(r["group"], r["video_id"], r["method"]): float(r["psnr_y"]) for r in rows}
    groups = list(dict.fromkeys(r["group"] for r in rows))
    recorded = json.loads((args.eval_dir / "eval.json").read_text())
    checkpoint, trained = recorded["checkpoint"], recorded["context_frames"]
    lines = [
        "# context reading: spread frames against every frame",
        "",
        f"Model: `{Path(checkpoint).name}` of content_scaling's mixed_s0. PSNR-Y gains over the base (dB), "
        "mean +- s.e. over the videos of each group, videos improved; the difference is paired per video.",
        "",
        "| test group | videos | base PSNR-Y | "
        + " | ".join(f"gain, {d.format(k=trained)}" for d in READINGS.values())
        + " | every frame - spread |",
        "|---|---|---|" + "---|" * len(READINGS) + "---|",
    ]
    per_video = []
    for group in groups:
        videos = list(dict.fromkeys(r["video_id"] for r in rows if r["group"] == group))
        base = [psnr[(group, v, "base")] for v in videos]
        gains = {m: [psnr[(group, v, m)] - b for v, b in zip(videos, base, strict=True)] for m in READINGS}
        cells = []
        for m in READINGS:
            s = gain_summary(gains[m])
            cells.append(
                f"{s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} ({int(s['videos_improved'])}/{len(videos)})"
            )
        difference = [a - b for a, b in zip(gains["hypernet_stream"], gains["hypernet"], strict=True)]
        d = gain_summary(difference)
        lines.append(
            f"| {group} | {len(videos)} | {mean_stderr(base)[0]:.2f} | "
            + " | ".join(cells)
            + f" | {d['gain_y']:+.3f} +- {d['gain_y_stderr']:.3f} (higher on {int(d['videos_improved'])}) |"
        )
        for v, b in zip(videos, base, strict=True):
            per_video.append(
                {"group": group, "video_id": v, "base": f"{b:.4f}"}
                | {m: f"{psnr[(group, v, m)]:.4f}" for m in READINGS}
            )
    if args.frames:
        lines += frames_table(args.eval_dir, args.frames, groups, trained)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.md").write_text("\n".join(lines) + "\n")
    with (args.output / "per_video.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_video[0]))
        writer.writeheader()
        writer.writerows(per_video)
    shutil.copy(args.eval_dir / "metrics.json", args.output / "metrics.json")
    print((args.output / "results.md").read_text())


if __name__ == "__main__":
    main()
