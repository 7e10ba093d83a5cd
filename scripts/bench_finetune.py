"""Benchmark: does `python -m hypernet.finetune` on a folder of HR videos keep memory flat as the
folder grows, and what does a step cost?

Writes 20 synthetic HR videos (mp4, streamed into ``write_mp4``), then fine-tunes one domain
adapter on a folder holding 2 of them and on one holding all 20, each in a fresh process whose
peak resident memory (VmHWM) is read inside it (scripts/harness.py: ``wait4``'s ru_maxrss would
start from this process's own high-water mark). The figures that matter: ``mem_20_over_2``, peak
memory for 20 videos over that for 2 (target <= 1.2: clips are read from disk a batch at a time;
a tool that loaded the videos would grow ten-fold), and the seconds per step of each.

Needs a stage-2 checkpoint: the one `make quickstart` trains, or ``--checkpoint``.

    .venv/bin/python scripts/bench_finetune.py [--checkpoint PATH] [--frames 60] [--size 256]
        [--steps 20] [--json out.json]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness import bench_parser, require_checkpoint, run_measured, synthetic_frames, write_figures

from hypernet.data.video_io import write_mp4
from hypernet.runs import DEFAULT_CHECKPOINT


def measure(folder: Path, output: Path, *, checkpoint: Path, steps: int) -> dict:
    """One fine-tuning run in a fresh interpreter: seconds per step and its own peak memory."""
    command = ["-m", "hypernet.finetune", "--hr", str(folder), "-o", str(output)]
    command += ["--checkpoint", str(checkpoint), "--steps", str(steps), "--val-videos", "0", "--no-progress"]
    run = run_measured(command, what=f"finetune on {folder}")
    summary = dict(item.split("=", 1) for item in run.stdout.split())
    return {
        "videos": int(summary["videos"]),
        "seconds_per_step": float(summary["seconds"]) / steps,
        "peak_mib": run.peak_mib,
    }


def main() -> None:
    parser = bench_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="stage-2 checkpoint")
    parser.add_argument("--frames", type=int, default=60, help="frames per HR video")
    parser.add_argument("--size", type=int, default=256, help="HR frame side, pixels")
    parser.add_argument("--steps", type=int, default=20)
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
        write_figures(args.json, figures)


if __name__ == "__main__":
    main()
