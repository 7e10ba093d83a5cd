"""Benchmark: does `python -m hypernet.specialise` keep memory flat as the video gets longer?

Writes a short and a long synthetic LR video (generated chunk by chunk, streamed into
``write_mp4``), runs ``specialise`` on each in a fresh subprocess (so each peak resident memory,
VmHWM read inside it by scripts/harness.py, is that of one run alone), then checks each output's
frame count and size by probing it.
The figure that matters is ``mem_300_over_30``: peak memory for 300 frames over that for 30
(target <= 1.2; a pipeline that kept the video would grow with it).

Needs a stage-2 checkpoint: the one `make quickstart` trains, or ``--checkpoint``.

    .venv/bin/python scripts/bench_specialise.py [--checkpoint PATH] [--frames-small 30]
        [--frames-large 300] [--size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import bench_parser, require_checkpoint, run_measured, synthetic_frames, write_figures

from hypernet.data.video_io import probe, write_mp4
from hypernet.runs import DEFAULT_CHECKPOINT


def child(input_path: str, output_path: str, checkpoint: str, chunk_size: int) -> None:
    """Runs in a fresh interpreter: one specialise run, one JSON line of figures."""
    from hypernet.specialise import specialise

    figures = specialise(
        input_path, output_path, checkpoint=checkpoint, chunk_size=chunk_size, progress=False
    )
    print(json.dumps(figures))


def measure(num_frames: int, folder: Path, *, size: int, checkpoint: Path, chunk_size: int) -> dict:
    """Write an LR video of num_frames frames, specialise it, check the output."""
    lr, sr = folder / f"lr_{num_frames}.mp4", folder / f"sr_{num_frames}.mp4"
    write_mp4(lr, synthetic_frames(num_frames, size), fps=25.0)
    command = [__file__, "--child", str(lr), str(sr), "--checkpoint", str(checkpoint)]
    run = run_measured([*command, "--chunk-size", str(chunk_size)], what=f"specialise on {lr}")
    figures = run.last_json()
    info = probe(sr)
    scale = figures["output_height"] // figures["input_height"]
    if (info.num_frames, info.height, info.width) != (num_frames, scale * size, scale * size):
        raise SystemExit(
            f"{sr}: expected {num_frames} frames of {scale * size}x{scale * size}, "
            f"got {info.num_frames} of {info.width}x{info.height}"
        )
    return {
        "frames": info.num_frames,
        "output_width": info.width,
        "output_height": info.height,
        "seconds": figures["seconds"],
        "frames_per_second": num_frames / figures["seconds"],
        "peak_mib": run.peak_mib,
    }


def main() -> None:
    parser = bench_parser(__doc__.split("\n\n")[0], lengths=(30, 300))
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="stage-2 checkpoint")
    parser.add_argument("--size", type=int, default=32, help="LR frame side, pixels")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, str(args.checkpoint), args.chunk_size)
        return
    require_checkpoint(args.checkpoint)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.frames_small, args.frames_large):
            rows[n] = measure(
                n, Path(tmp), size=args.size, checkpoint=args.checkpoint, chunk_size=args.chunk_size
            )

    print(f"specialise, {args.size}x{args.size} LR, chunk {args.chunk_size}, checkpoint {args.checkpoint}")
    print(f"{'frames':>7} {'output':>10} {'seconds':>8} {'frames/s':>9} {'peak MiB':>9}")
    for row in rows.values():
        size = f"{row['output_width']}x{row['output_height']}"
        print(
            f"{row['frames']:>7} {size:>10} {row['seconds']:>8.2f} "
            f"{row['frames_per_second']:>9.1f} {row['peak_mib']:>9.0f}"
        )
    small, large = rows[args.frames_small], rows[args.frames_large]
    ratio_name = f"mem_{args.frames_large}_over_{args.frames_small}"
    ratio = large["peak_mib"] / small["peak_mib"]
    time_name = f"time_{args.frames_large}_over_{args.frames_small}"
    time_ratio = large["seconds"] / small["seconds"]
    print(f"{ratio_name} = {ratio:.3f} (target <= 1.2)   {time_name} = {time_ratio:.2f}")

    if args.json:
        flat: dict[str, float] = {}
        for n, row in rows.items():
            flat.update({f"{key}_{n}": value for key, value in row.items()})
        flat[ratio_name] = ratio
        flat[time_name] = time_ratio
        write_figures(args.json, flat)


if __name__ == "__main__":
    main()
