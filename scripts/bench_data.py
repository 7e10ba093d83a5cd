"""Benchmark the training data against the model: does drawing content keep pace with the steps?

Every figure is measured in one run, on `--threads` torch threads (default 1), the draws and the
steps alternating round by round (`harness.interleaved_seconds`) so that load from other jobs hits
both alike:

- ``procedural_over_step``: seconds to draw a batch of 8 fresh procedural videos (scene, the clip's
  and the context's frames, degradation; hyper_content's shapes) with the torch backend on the CPU,
  over one stage-2 step of hyper_content (target <= 0.25); ``procedural_over_stage1_step`` over a
  stage-1 step; ``pil_over_step`` the same batch drawn by the PIL painter (the old default);
  ``stills_over_step`` a batch of 8 videos of the photographs;
- ``data_stall_fraction``: the share of a training step's time spent waiting for data, for
  experiment=hyper_content as configured (its loader, its worker): 1 - (seconds per step on a
  batch already in memory) / (seconds per step fed by the loader) (target <= 0.1);
- ``cuda_procedural_videos_per_s``: procedural videos drawn per second on the GPU, in batches of
  64, when there is one (skipped, and said so, when not).

    .venv/bin/python scripts/bench_data.py [--repeats 7] [--stall-steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_hyper import build_stage_steps
from harness import bench_parser, interleaved_seconds, median_ratio, write_figures

from hypernet.data.camera import builtin_images
from hypernet.data.datamodule import build_datamodule
from hypernet.data.datasets import DegradationConfig, FreshVideoDataset, SampleConfig, collate_items
from hypernet.data.degrade import DegradationRanges
from hypernet.data.procedural import ProceduralConfig

BATCH = 8


def fresh_batches(
    data, *, source: str, backend: str = "torch", device: str = "cpu", batch: int = BATCH, codec: bool = False
):
    """A function drawing the next batch of brand-new videos of `source` at `data`'s (the
    experiment's) sample shapes, each call new indices; the batch stacked as training gets it."""
    sample = SampleConfig(
        clip_len=data.clip_len, context_frames=data.context_frames, patch_size=data.patch_size // data.scale
    )
    dataset = FreshVideoDataset(
        sources={source: 1.0},
        image_paths=builtin_images("train"),
        num_samples=10**9,
        num_frames=data.num_frames,
        hr_size=data.hr_size,
        sample=sample,
        degradation=DegradationConfig(
            ranges=DegradationRanges(crf=(18, 32), codec_prob=1.0 if codec else 0.0)
        ),
        seed=0,
        procedural=ProceduralConfig(backend=backend),
    )
    dataset.draw_device = device
    count = iter(range(10**9))

    def draw():
        first = next(count) * batch
        out = collate_items(dataset.__getitems__(range(first, first + batch)))
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    return draw


def draw_over_step(steps: dict, *, repeats: int) -> dict[str, float]:
    """Seconds of each draw and of each step, alternating; each ratio the median over rounds."""
    data = steps["cfg"].data
    x = steps["inputs"]
    fns = {
        "stage1": lambda: steps["step1"](x["lr"], x["hr"]),
        "stage2": lambda: steps["step2"](x["lr"], x["hr"], x["ctx"], x["times"]),
        "procedural": fresh_batches(data, source="procedural"),
        "pil": fresh_batches(data, source="procedural", backend="pil"),
        "stills": fresh_batches(data, source="stills"),
        "h264": fresh_batches(data, source="procedural", codec=True),
    }
    seconds = interleaved_seconds(fns, warmup=2, repeats=repeats)
    figures = {f"{name}_s": statistics.median(s) for name, s in seconds.items()}
    figures["procedural_over_step"] = median_ratio(seconds["procedural"], seconds["stage2"])
    figures["procedural_over_stage1_step"] = median_ratio(seconds["procedural"], seconds["stage1"])
    figures["pil_over_step"] = median_ratio(seconds["pil"], seconds["stage2"])
    figures["stills_over_step"] = median_ratio(seconds["stills"], seconds["stage2"])
    figures["procedural_videos_per_s"] = BATCH / figures["procedural_s"]
    # every video of the batch through the H.264 round trip (PyAV, on the CPU, video by video)
    figures["h264_extra_s"] = figures["h264_s"] - figures["procedural_s"]
    figures["h264_over_step"] = median_ratio(seconds["h264"], seconds["stage2"])
    return figures


def stall_fraction(steps: dict, *, count: int, rounds: int = 2) -> dict[str, float]:
    """experiment=hyper_content's loader as configured feeding stage-2 steps, against the same steps
    on one batch held in memory; rounds alternate the two, each `count` steps after 3 warm-up ones."""
    datamodule = build_datamodule(steps["cfg"])
    datamodule.setup("fit")

    def endless():
        loader = datamodule.train_dataloader()
        while True:  # epoch after epoch, as training goes on
            yield from loader

    loader = endless()
    step = steps["step2"]

    def fed(batch):
        step(batch["lr"], batch["hr"], batch["context"], batch["context_times"])

    held = next(loader)
    for _ in range(3):
        fed(next(loader))
    real, memory = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fed(next(loader))
        real.append((time.perf_counter() - start) / count)
        start = time.perf_counter()
        for _ in range(count):
            fed(held)
        memory.append((time.perf_counter() - start) / count)
    real_s, memory_s = statistics.median(real), statistics.median(memory)
    return {
        "loader_step_s": real_s,
        "memory_step_s": memory_s,
        "data_stall_fraction": max(0.0, 1 - memory_s / real_s),
        "loader_workers": datamodule.num_workers,
    }


def cuda_rate(data, *, repeats: int = 5) -> dict[str, float]:
    draw = fresh_batches(data, source="procedural", device="cuda", batch=64)
    draw()
    start = time.perf_counter()
    for _ in range(repeats):
        draw()
    return {"cuda_procedural_videos_per_s": 64 * repeats / (time.perf_counter() - start)}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=7, help="rounds of draws and steps; figures are medians"
    )
    parser.add_argument(
        "--stall-steps", type=int, default=30, help="steps per round of the stall measurement"
    )
    parser.add_argument("--experiment", default="hyper_content", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = build_stage_steps(experiment=args.experiment)
    figures = draw_over_step(steps, repeats=args.repeats)
    print(
        f"batch of {BATCH} fresh videos ({args.threads} thread(s), medians of {args.repeats} rounds, draws and "
        f"steps alternating): procedural torch {figures['procedural_s'] * 1e3:.0f} ms "
        f"({figures['procedural_videos_per_s']:.0f} videos/s), procedural PIL {figures['pil_s'] * 1e3:.0f} ms, "
        f"stills {figures['stills_s'] * 1e3:.0f} ms; stage-1 step {figures['stage1_s'] * 1e3:.0f} ms, "
        f"stage-2 step ({args.experiment}) {figures['stage2_s'] * 1e3:.0f} ms"
    )
    print(
        f"procedural_over_step = {figures['procedural_over_step']:.2f} (target <= 0.25; PIL "
        f"{figures['pil_over_step']:.2f}), over a stage-1 step {figures['procedural_over_stage1_step']:.2f}, "
        f"stills_over_step = {figures['stills_over_step']:.2f}; the H.264 round trip (CPU, PyAV) adds "
        f"{figures['h264_extra_s'] * 1e3:.0f} ms to a batch whose every video takes it (h264_over_step = "
        f"{figures['h264_over_step']:.2f})"
    )
    figures.update(stall_fraction(steps, count=args.stall_steps))
    print(
        f"{args.experiment} as configured ({figures['loader_workers']:.0f} loader worker(s)): "
        f"{figures['loader_step_s'] * 1e3:.0f} ms per step fed by its loader, {figures['memory_step_s'] * 1e3:.0f} ms "
        f"on a batch in memory: data_stall_fraction = {figures['data_stall_fraction']:.3f} (target <= 0.1)"
    )
    if torch.cuda.is_available():
        figures.update(cuda_rate(steps["cfg"].data))
        print(
            f"on {torch.cuda.get_device_name()}: {figures['cuda_procedural_videos_per_s']:.0f} procedural videos/s"
        )
    else:
        print("no CUDA GPU here: the GPU drawing rate is skipped")
    figures.update(threads=args.threads, repeats=args.repeats, batch=BATCH)
    if args.json:
        write_figures(args.json, figures)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
