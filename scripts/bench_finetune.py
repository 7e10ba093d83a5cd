"""Benchmark: does `python -m hypernet.finetune` on a folder of HR videos keep memory flat as the
folder grows, and what does a step cost?

Writes 20 synthetic HR videos (mp4, streamed into ``write_mp4``), then fine-tunes one domain
adapter on a folder holding 2 of them and on one holding all 20, each in a fresh process (its
peak resident memory is that run's alone, read from ``wait4``). The figures that matter:
``mem_20_over_2``, peak memory for 20 videos over that for 2 (target <= 1.2: clips are read from
disk a batch at a time; a tool that loaded the videos would grow ten-fold), and the seconds per
step of each.

Needs a stage-2 checkpoint: the one `make quickstart` trains, or ``--checkpoint``.

    .venv/bin/python scripts/bench_finetune.py [--checkpoint PATH] [--frames 60] [--size 256]
        [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_specialise import (  # scripts/ is on the path when run as a script
    require_checkpoint,
    synthetic_frames,
)

from hypernet.data.video_io import write_mp4
from hypernet.runs import DEFAULT_CHECKPOINT, atomic_write_text


def measure(folder: Path, output: Path, *, checkpoint: Path, steps: int) -> dict:
    command = [sys.executable, "-m", "hypernet.finetune", "--hr", str(folder), "-o", str(output)]
    command += ["--checkpoint", str(checkpoint), "--steps", str(steps), "--val-videos", "0", "--no-progress"]
    """One fine-tuning run in a fresh interpreter: seconds per step and peak memory (from wait4,
    so the child's own; its output goes to files, so no pipe can fill up while it runs)."""
    log = output.with_suffix(".log")
    with log.open("w") as stdout, output.with_suffix(".err").open("w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    out, err = log.read_text(), output.with_suffix(".err").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"finetune failed on {folder}:\n{err.strip()}")
    summary = dict(item.split("=", 1) for item in out.split())
    seconds = float(summary["seconds"])
    return {
        "videos": int(summary["videos"]),
        "seconds_per_step": seconds / steps,
        "peak_mib": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="stage-2 checkpoint")
    parser.add_argument("--frames", type=int, default=60, help="frames per HR video")
    parser.add_argument("--size", type=int, default=256, help="HR frame side, pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures here as a flat JSON dict")
    args = parser.parse_args()
    require_checkpoint(args.checkpoint)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(20):
            folder = tmp / ("two" if i < 2 else "rest")
            write_mp4(
                folder / f"v{i:02d}.mp4", synthetic_frames(args.frames + 7 * i, args.size), fps=25.0, crf=10
            )
        for path in sorted((tmp / "two").iterdir()):  # the 20-video folder holds the 2 as well
            os.link(path, tmp / "rest" / path.name)
        for n, folder in ((2, tmp / "two"), (20, tmp / "rest")):
            rows[n] = measure(
                folder, tmp / f"adapter_{n}.safetensors", checkpoint=args.checkpoint, steps=args.steps
            )
    print(
        f"finetune on a folder, HR {args.size}x{args.size}, ~{args.frames} frames per video, {args.steps} steps"
    )
    print(f"{'videos':>7} {'s/step':>8} {'peak MiB':>9}")
    for row in rows.values():
        print(f"{row['videos']:>7} {row['seconds_per_step']:>8.3f} {row['peak_mib']:>9.0f}")
    figures = {
        "mem_20_over_2": rows[20]["peak_mib"] / rows[2]["peak_mib"],
        "step_20_over_2": rows[20]["seconds_per_step"] / rows[2]["seconds_per_step"],
    }
    print(
        f"mem_20_over_2 = {figures['mem_20_over_2']:.3f} (target <= 1.2)   step_20_over_2 = {figures['step_20_over_2']:.2f}"
    )
    if args.json:
        for n, row in rows.items():
            figures |= {f"videos_{n}_{k}": float(v) for k, v in row.items()}
        atomic_write_text(args.json, json.dumps(figures, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
