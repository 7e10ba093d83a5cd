"""Benchmark: does streaming decode keep memory flat as videos get longer?

Writes a short and a long synthetic video (streamed into ``write_mp4``, never held in memory),
then streams each through ``iter_chunks`` in a fresh subprocess, so each peak RSS (VmHWM, read
inside it by scripts/harness.py) is that of one read alone. The figure that matters is ``mem_2000_over_200``: peak memory for the long video over
that of the short one (target <= 1.2; a reader that kept every frame would be near 10x the frame
bytes). For contrast, ``read_video`` (everything in one array) is measured on the long video too.

    .venv/bin/python scripts/bench_video_io.py [--frames-small 200] [--frames-large 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from harness import bench_parser, run_measured, write_figures

from hypernet.data.video_io import iter_chunks, probe, read_video, write_mp4
from hypernet.memory import peak_rss_mib


def synthetic_frames(num_frames: int, size: int) -> Iterator[np.ndarray]:
    """A moving colour gradient with a drifting square over a fixed texture, one frame at a time."""
    rng = np.random.default_rng(0)
    texture = rng.integers(-12, 13, (size, size, 1))  # some detail, so the codec has work to do
    yy, xx = np.mgrid[0:size, 0:size]
    for t in range(num_frames):
        frame = np.stack([(xx + 2 * t) % 256, (yy + t) % 256, (xx + yy + 3 * t) % 256], axis=-1) + texture
        top, left = (5 * t) % (size - size // 4), (3 * t) % (size - size // 4)
        frame[top : top + size // 4, left : left + size // 4] = (230, 40, 40)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def child(path: str, *, mode: str, chunk_size: int) -> None:
    """Runs in a fresh interpreter: read ``path`` once and print one JSON line of figures."""
    baseline = peak_rss_mib()  # interpreter + numpy + PyAV, before any frame exists
    start = time.perf_counter()
    frames, checksum = 0, 0
    if mode == "stream":
        for chunk in iter_chunks(path, chunk_size=chunk_size):
            frames += len(chunk)
            checksum += int(chunk[:, ::16, ::16].sum())  # touch the pixels
    else:
        video = read_video(path)
        frames, checksum = len(video), int(video[:, ::16, ::16].sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"frames": frames, "seconds": seconds, "baseline_mib": baseline}))


def run_child(path: Path, *, mode: str, chunk_size: int) -> dict:
    """One read in a fresh interpreter: its figures and its own peak memory."""
    command = [__file__, "--child", str(path), "--mode", mode, "--chunk-size", str(chunk_size)]
    run = run_measured(command, what=f"reading {path} ({mode})")
    return run.last_json() | {"peak_mib": run.peak_mib}


def main() -> None:
    parser = bench_parser(__doc__, lengths=(200, 2000))
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stream", choices=["stream", "read_video"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, mode=args.mode, chunk_size=args.chunk_size)
        return

    small, large = args.frames_small, args.frames_large
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, large):
            path = Path(tmp) / f"synthetic_{n}.mp4"
            start = time.perf_counter()
            write_mp4(path, synthetic_frames(n, args.size), crf=18, preset="veryfast")
            results[f"encode_fps_{n}"] = n / (time.perf_counter() - start)
            assert probe(path).num_frames == n, f"{path}: expected {n} frames"
            figures = run_child(path, mode="stream", chunk_size=args.chunk_size)
            assert figures["frames"] == n, figures
            results[f"decode_fps_{n}"] = n / figures["seconds"]
            results[f"peak_mib_{n}"] = figures["peak_mib"]
            results[f"growth_mib_{n}"] = figures["peak_mib"] - figures["baseline_mib"]
        whole = run_child(Path(tmp) / f"synthetic_{large}.mp4", mode="read_video", chunk_size=args.chunk_size)
        results[f"peak_mib_{large}_read_video"] = whole["peak_mib"]

    results[f"mem_{large}_over_{small}"] = results[f"peak_mib_{large}"] / results[f"peak_mib_{small}"]
    results[f"decode_fps_{large}_over_{small}"] = (
        results[f"decode_fps_{large}"] / results[f"decode_fps_{small}"]
    )
    results["frame_mib"] = args.size * args.size * 3 / 2**20
    results["size"] = args.size
    results["chunk_size"] = args.chunk_size

    print(f"video_io streaming benchmark: {args.size}x{args.size} H.264, chunk_size={args.chunk_size}")
    print(f"{'frames':>8} {'encode fps':>11} {'decode fps':>11} {'peak MiB':>9} {'growth MiB':>11}")
    for n in (small, large):
        print(
            f"{n:>8} {results[f'encode_fps_{n}']:>11.0f} {results[f'decode_fps_{n}']:>11.0f} "
            f"{results[f'peak_mib_{n}']:>9.1f} {results[f'growth_mib_{n}']:>11.1f}"
        )
    print(
        f"peak memory {large} / {small} frames, streamed: {results[f'mem_{large}_over_{small}']:.3f}  (target <= 1.2)"
    )
    print(f"decode speed {large} / {small} frames:         {results[f'decode_fps_{large}_over_{small}']:.3f}")
    print(
        f"for contrast, read_video({large} frames) peaks at {results[f'peak_mib_{large}_read_video']:.1f} MiB"
    )
    if args.json:
        write_figures(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
