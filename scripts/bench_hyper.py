"""Benchmark the hypernetwork's pieces on CPU. Encoder part: does streaming a whole video through
`VideoEncoder` cost time linear in its length and memory independent of it?

A random LR video (24x24 frames by default) is generated chunk by chunk, never held whole, and
streamed through the encoder in eval mode under torch.no_grad (source "base": the quickstart
`window` base's activations at its conv layers inside "body", plus the LR statistics). Each length
runs in a fresh subprocess, so each peak resident memory (VmHWM, read inside it by
scripts/harness.py) is that of one encoding alone. Figures, measured in the same run:

- ``encoder_time_2000_over_200``: seconds for 2000 frames over seconds for 200 (target about 10);
- ``encoder_mem_2000_over_200``: peak memory for 2000 frames over that for 200 (target <= 1.2);
- ``stage2_over_stage1``: a stage-2 training step (hyper_content: 4 context frames, base activations
  of the first layers, adapters folded into per-video weights) over a stage-1 step, same batch
  (target <= 1.5), the median over rounds in which the two steps alternate (`stage_step_times`);
  ``stage2_quickstart_over_stage1`` the same for hyper_quickstart's settings;
- ``crossscale_over_memory``: the inner loop's cost, a hyper_memory step (context frames of LR 48)
  with one refine crossscale step on half its context frames over the same step without it
  (``stage2_memory_over_stage1`` and ``stage2_crossscale_over_stage1``, each in its own rounds);

What the data costs against these steps is scripts/bench_data.py's.

    .venv/bin/python scripts/bench_hyper.py [--frames-small 200] [--frames-large 2000] [--step-repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from harness import bench_parser, interleaved_seconds, median_ratio, run_measured, write_figures
from torch import nn

from hypernet.config import compose_config
from hypernet.memory import peak_rss_mib
from hypernet.models.base import WindowVSR
from hypernet.models.encoder import VideoEncoder, frame_times

SCRIPTS = Path(__file__).resolve().parent


def build_encoder(source: str, *, seed: int = 0) -> VideoEncoder:
    """The encoder of the default stage-2 config on the quickstart-sized window base."""
    torch.manual_seed(seed)
    base = WindowVSR().eval()
    layer_names = [n for n, m in base.named_modules() if n.startswith("body.") and isinstance(m, nn.Conv2d)]
    return VideoEncoder(source=source, base=base, layer_names=layer_names).eval()


def stream_random_video(
    encoder: VideoEncoder, num_frames: int, *, chunk: int, size: int, seed: int = 0
) -> tuple[float, float]:
    """Stream a random video of num_frames frames, generated chunk by chunk, never whole.
    Returns (wall seconds, CPU seconds of this process) spent encoding: CPU time is the steadier
    figure when other jobs share the machine."""
    generator = torch.Generator().manual_seed(seed)
    wall = cpu = 0.0
    with torch.no_grad():
        state = encoder.init_state(1)
        for start in range(0, num_frames, chunk):
            count = min(chunk, num_frames - start)
            frames = torch.rand(1, count, 3, size, size, generator=generator)
            times = frame_times(num_frames, start=start, count=count)[None]
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            state = encoder.update(state, frames, times)
            wall, cpu = wall + time.perf_counter() - wall_start, cpu + time.process_time() - cpu_start
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        latents = encoder.finalize(state)
        wall, cpu = wall + time.perf_counter() - wall_start, cpu + time.process_time() - cpu_start
    assert torch.isfinite(latents).all()
    return wall, cpu


def encoder_child(num_frames: int, *, chunk: int, size: int, source: str, threads: int) -> dict[str, float]:
    """Runs in a fresh interpreter: build, warm up on two chunks, then time one streamed video."""
    torch.set_num_threads(threads)
    encoder = build_encoder(source)
    stream_random_video(encoder, 2 * chunk, chunk=chunk, size=size, seed=1)  # warm-up: allocator, kernels
    baseline = peak_rss_mib()
    seconds, cpu_seconds = stream_random_video(encoder, num_frames, chunk=chunk, size=size)
    return {"frames": num_frames, "seconds": seconds, "cpu_seconds": cpu_seconds, "baseline_mib": baseline}


def encoder_memory_and_time(
    num_frames: int, *, chunk: int = 32, size: int = 24, source: str = "base", threads: int = 1
) -> dict:
    """Seconds and peak MiB of streaming num_frames frames through the encoder, in a subprocess."""
    command = [__file__, "--child-encoder", str(num_frames), "--chunk", str(chunk), "--size", str(size)]
    command += ["--source", source, "--threads", str(threads)]
    run = run_measured(command, what=f"the encoder benchmark child ({num_frames} frames)")
    return run.last_json() | {"peak_mib": run.peak_mib}


def encoder_figures(
    small: int, large: int, *, chunk: int, size: int, source: str, repeats: int = 3, threads: int = 1
) -> dict[str, float]:
    """The encoder's flat figures for a short and a long video, each run in its own subprocess,
    `repeats` rounds interleaved (short, long, short, long, ...) so that a change in the machine's
    load hits both lengths alike; each figure is the median over the rounds."""
    runs: dict[int, list[dict]] = {small: [], large: []}
    for _ in range(repeats):
        for n in (small, large):
            runs[n].append(encoder_memory_and_time(n, chunk=chunk, size=size, source=source, threads=threads))
    results: dict[str, float] = {}
    for n, figures in runs.items():
        median = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
        results[f"encoder_seconds_{n}"] = median["seconds"]
        results[f"encoder_cpu_seconds_{n}"] = median["cpu_seconds"]
        results[f"encoder_fps_{n}"] = n / median["seconds"]
        results[f"encoder_peak_mib_{n}"] = median["peak_mib"]
        results[f"encoder_growth_mib_{n}"] = statistics.median(
            f["peak_mib"] - f["baseline_mib"] for f in figures
        )
    for name, key in [("time", "seconds"), ("cpu_time", "cpu_seconds"), ("mem", "peak_mib")]:
        results[f"encoder_{name}_{large}_over_{small}"] = (
            results[f"encoder_{key}_{large}"] / results[f"encoder_{key}_{small}"]
        )
    results["encoder_repeats"] = repeats
    results["encoder_threads"] = threads
    return results


def print_encoder_table(
    results: dict[str, float], small: int, large: int, *, chunk: int, size: int, source: str
) -> None:
    print(
        f"encoder streaming: source={source}, {size}x{size} LR frames, chunk={chunk}, eval, no_grad, "
        f"{results['encoder_threads']:.0f} thread(s), median of {results['encoder_repeats']:.0f} interleaved runs"
    )
    print(f"{'frames':>8} {'wall s':>9} {'CPU s':>9} {'frames/s':>9} {'peak MiB':>9} {'growth MiB':>11}")
    for n in (small, large):
        print(
            f"{n:>8} {results[f'encoder_seconds_{n}']:>9.2f} {results[f'encoder_cpu_seconds_{n}']:>9.2f} "
            f"{results[f'encoder_fps_{n}']:>9.0f} {results[f'encoder_peak_mib_{n}']:>9.1f} "
            f"{results[f'encoder_growth_mib_{n}']:>11.1f}"
        )
    ratio = large / small
    print(
        f"time   {large} / {small} frames: {results[f'encoder_time_{large}_over_{small}']:6.2f} wall, "
        f"{results[f'encoder_cpu_time_{large}_over_{small}']:.2f} CPU  (target about {ratio:.0f})"
    )
    print(
        f"memory {large} / {small} frames: {results[f'encoder_mem_{large}_over_{small}']:6.3f}  (target <= 1.2)"
    )


def build_stage_steps(
    *, experiment: str, batch: int = 8, frames: int = 5, patch: int = 16, size: int = 24, mode: str = "direct"
) -> dict:
    """A stage-1 and a stage-2 training step (forward, backward, optimiser) at the same batch, each
    a function of (lr, hr[, context, times]); stage 2 as `experiment` builds it (its hypernet, its
    context frames) over a fresh base, with random inputs of the experiment's shapes."""
    import lightning as L
    from hydra.utils import instantiate

    from hypernet.sr import charbonnier

    torch.manual_seed(0)
    stage1 = instantiate(compose_config("train", ["model.upsampler=direct"]).stage)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "base.ckpt"
        torch.save(
            {
                "state_dict": stage1.state_dict(),
                "hyper_parameters": dict(stage1.hparams),
                "pytorch-lightning_version": L.__version__,
            },
            ckpt,
        )
        cfg = compose_config(
            "train",
            [
                f"experiment={experiment}",
                "model.upsampler=direct",
                f"base_ckpt={ckpt}",
                f"hypernet.refine.mode={mode}",
            ],
        )
        stage2 = instantiate(cfg.stage).train()
    context = cfg.data.context_frames
    # each stage's optimiser as its system's configure_optimizers makes it
    opt1 = torch.optim.AdamW(stage1.model.parameters())
    opt2 = torch.optim.Adam([p for p in stage2.parameters() if p.requires_grad], fused=True)

    def step1(lr, hr):
        opt1.zero_grad(set_to_none=True)
        charbonnier(stage1.model(lr), hr).backward()
        opt1.step()

    def step2(lr, hr, ctx, times, closeups=None):
        opt2.zero_grad(set_to_none=True)
        charbonnier(stage2.sr(lr, stage2.adapters_for(ctx, times, closeups=closeups)), hr).backward()
        opt2.step()

    return {
        "step1": step1,
        "step2": step2,
        "cfg": cfg,
        "inputs": {
            "lr": torch.rand(batch, frames, 3, patch, patch),
            "hr": torch.rand(batch, frames, 3, 4 * patch, 4 * patch),
            "ctx": torch.rand(batch, context, 3, size, size),
            "times": torch.linspace(0, 1, context).expand(batch, -1),
            # the first half of each video's context frames marked as close-ups (crossscale's pairs)
            "closeups": (torch.arange(context) < max(context // 2, 1)).expand(batch, -1),
        },
    }


def stage_step_times(
    *,
    experiment: str,
    label: str,
    repeats: int = 15,
    warmup: int = 3,
    threads: int = 1,
    closeups: bool = False,
    **shapes,
) -> dict[str, float]:
    """Seconds per training step of stage 1 (the base) and of stage 2 (encoder + generator + the
    frozen base with per-video adapters, gradient into the hypernet only) at the same batch
    (`build_stage_steps`).

    The two steps alternate, `repeats` rounds after `warmup` untimed ones, on `threads` torch
    threads (`harness.interleaved_seconds`): each step's seconds are its median, and the ratio is
    the median over rounds of stage 2's time over stage 1's in the same round, so a change in the
    machine's load hits both alike (back to back runs of the ratio of two separate timings
    differed by up to 25%; this one's stay within a few percent). With `closeups`, half of each
    video's context frames are marked as close-ups (what refine crossscale steps on)."""
    torch.set_num_threads(threads)
    steps = build_stage_steps(experiment=experiment, **shapes)
    x = steps["inputs"]
    marks = x["closeups"] if closeups else None
    seconds = interleaved_seconds(
        {
            "stage1": lambda: steps["step1"](x["lr"], x["hr"]),
            "stage2": lambda: steps["step2"](x["lr"], x["hr"], x["ctx"], x["times"], marks),
        },
        warmup=warmup,
        repeats=repeats,
    )
    return {
        "stage1_step_s": statistics.median(seconds["stage1"]),
        f"stage2_{label}_step_s": statistics.median(seconds["stage2"]),
        f"stage2_{label}_over_stage1": median_ratio(seconds["stage2"], seconds["stage1"]),
    }


def main() -> None:
    parser = bench_parser(__doc__, lengths=(200, 2000))
    parser.add_argument("--chunk", type=int, default=32, help="frames per streamed chunk")
    parser.add_argument("--size", type=int, default=24, help="LR frame height and width")
    parser.add_argument("--source", default="base", choices=["base", "conv"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per length; figures are medians")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine a 2-thread pool waits out other "
        "jobs' scheduler slices at every op, which made timings 10x slower and erratic)",
    )
    parser.add_argument(
        "--step-repeats",
        type=int,
        default=15,
        help="timed rounds of the stage-1 / stage-2 step comparison, the two steps alternating; "
        "figures are medians",
    )
    parser.add_argument("--child-encoder", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_encoder is not None:
        figures = encoder_child(
            args.child_encoder, chunk=args.chunk, size=args.size, source=args.source, threads=args.threads
        )
        print(json.dumps(figures))
        return

    small, large = args.frames_small, args.frames_large
    results = encoder_figures(
        small,
        large,
        chunk=args.chunk,
        size=args.size,
        source=args.source,
        repeats=args.repeats,
        threads=args.threads,
    )
    results.update(chunk=args.chunk, size=args.size)
    print_encoder_table(results, small, large, chunk=args.chunk, size=args.size, source=args.source)
    timing = {"repeats": args.step_repeats, "threads": args.threads}
    # hyper_quickstart: 8 context frames, every layer read; hyper_content: 4 frames, first layers
    steps = stage_step_times(experiment="hyper_quickstart", label="quickstart", **timing)
    steps.update(stage_step_times(experiment="hyper_content", label="content", **timing))
    steps["stage2_over_stage1"] = steps["stage2_content_over_stage1"]
    steps["stage_step_repeats"] = args.step_repeats
    results.update(steps)
    print(
        f"training step, 8 clips x 5 frames of 16x16 LR: stage 1 {steps['stage1_step_s'] * 1e3:.0f} ms; stage 2 as "
        f"hyper_quickstart (8 context frames, all 11 layers read) {steps['stage2_quickstart_step_s'] * 1e3:.0f} ms "
        f"= {steps['stage2_quickstart_over_stage1']:.2f}x; as hyper_content (4 context frames, first layers, "
        f"per-video weights) {steps['stage2_content_step_s'] * 1e3:.0f} ms = {steps['stage2_over_stage1']:.2f}x "
        f"(target <= 1.5); {args.threads} thread(s), medians over {args.step_repeats} rounds, the two steps "
        "alternating"
    )
    # the inner loop's cost: hyper_memory's step (context frames of LR 48) without refine steps and
    # with one crossscale step on half its context frames, each against stage 1 in its own rounds
    memory = {"experiment": "hyper_memory", "size": 48, **timing}
    steps = stage_step_times(label="memory", **memory)
    steps.update(stage_step_times(label="crossscale", mode="crossscale", closeups=True, **memory))
    steps["crossscale_over_memory"] = (
        steps["stage2_crossscale_over_stage1"] / steps["stage2_memory_over_stage1"]
    )
    results.update(
        {k: v for k, v in steps.items() if k != "stage1_step_s"}
    )  # stage 1's is the first comparison's
    print(
        f"hyper_memory (context frames of LR 48): {steps['stage2_memory_step_s'] * 1e3:.0f} ms = "
        f"{steps['stage2_memory_over_stage1']:.2f}x stage 1; with one crossscale step on 2 of its 4 context "
        f"frames {steps['stage2_crossscale_step_s'] * 1e3:.0f} ms = {steps['stage2_crossscale_over_stage1']:.2f}x; "
        f"the inner loop's cost {steps['crossscale_over_memory']:.2f}x the step without it"
    )
    if args.json:
        write_figures(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
