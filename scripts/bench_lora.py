"""Benchmark the LoRA engine on the quickstart base networks (CPU, 2 threads by default).

Measures, in one run and interleaved round by round (so load from other processes and drift
hit every variant alike), the median wall time of:
- the base's training step (forward + backward, weights trainable: a stage-1 step);
- the frozen base with the gradient taken to its input (stage 2's cost without adapters);
- the frozen base with per-video adapters, V videos batched (a stage-2 step, gradients to A, B);
- the same with each adapter folded into a per-video weight (`per_video_weights=True`, what stage-2
  training uses): ``per_video_weights_over_base``, ``per_video_weights_over_batched``;
- the same adapters as a Python loop over the videos, one forward call per video;
- inference (no grad) of the base, and of a copy with one video's adapters merged into it.

Targets (issue 5): batched <= 1.3x the base's step, merged within 5% of the base, batched at
least 1.5x faster than the loop. `--json PATH` writes the same figures as a flat dict: the
first base's ratios under the issue's keys, every base's figures under "<base>/<key>".
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from harness import bench_parser, write_figures
from omegaconf import OmegaConf
from torch import nn

from hypernet.config import compose_config
from hypernet.models.base import build_base
from hypernet.models.lora import (
    Adapters,
    LoRASpec,
    apply_adapters,
    find_targets,
    init_adapters,
    merge_adapters,
)


def quickstart_base(name: str) -> nn.Module:
    """The base as the CPU-sized config builds it (configs/model/<name>.yaml)."""
    return build_base(OmegaConf.to_container(compose_config("train", [f"model={name}"]).model, resolve=True))


def rank_spec(model: nn.Module, rank: int) -> LoRASpec:
    """`rank` on every conv, capped where a layer allows less (a 3-channel output takes at most 3)."""
    probe = find_targets(model, rank=1)
    caps = {
        t.name: min(rank, t.in_features * t.kernel_size[0] * t.kernel_size[1], t.out_features)
        for t in probe.targets
    }
    return find_targets(model, rank=rank, overrides={n: {"rank": r} for n, r in caps.items() if r < rank})


def random_adapters(spec: LoRASpec, num_videos: int, seed: int) -> Adapters:
    """Adapters with non-zero B, as a trained hypernetwork would give, marked for gradients."""
    g = torch.Generator().manual_seed(seed)
    adapters = init_adapters(spec, num_videos=num_videos, generator=g)
    return {
        name: (a.requires_grad_(), (0.01 * torch.randn(b.shape, generator=g)).requires_grad_())
        for name, (a, b) in adapters.items()
    }


def bench_base(
    name: str, *, videos: int, frames: int, size: int, rank: int, rounds: int, warmup: int
) -> dict[str, float]:
    torch.manual_seed(0)
    base = quickstart_base(name)
    spec = rank_spec(base, rank)
    adapters = random_adapters(spec, videos, seed=1)
    # inference compares two copies made alike, one with video 0's adapters merged into it
    plain, merged = copy.deepcopy(base), copy.deepcopy(base)
    merge_adapters(merged, spec, adapters, video=0)
    lr = torch.rand(videos, frames, 3, size, size)
    hr = torch.rand(videos, frames, 3, size * base.scale, size * base.scale)
    for p in [*base.parameters(), *plain.parameters(), *merged.parameters()]:
        p.requires_grad_(False)

    def clear_adapter_grads() -> None:
        for a, b in adapters.values():
            a.grad = b.grad = None

    def base_step() -> None:
        for p in base.parameters():
            p.requires_grad_(True)
        F.mse_loss(base(lr), hr).backward()
        for p in base.parameters():
            p.requires_grad_(False)
            p.grad = None

    def frozen_input_grad_step() -> None:
        F.mse_loss(base(lr.clone().requires_grad_()), hr).backward()

    def batched_step() -> None:
        with apply_adapters(base, spec, adapters):
            F.mse_loss(base(lr), hr).backward()
        clear_adapter_grads()

    def per_video_weights_step() -> None:
        with apply_adapters(base, spec, adapters, per_video_weights=True):
            F.mse_loss(base(lr), hr).backward()
        clear_adapter_grads()

    def loop_step() -> None:
        loss = torch.zeros(())
        for v in range(videos):
            one = {n: (a[v : v + 1], b[v : v + 1]) for n, (a, b) in adapters.items()}
            with apply_adapters(base, spec, one):
                loss = loss + F.mse_loss(base(lr[v : v + 1]), hr[v : v + 1]) / videos
        loss.backward()
        clear_adapter_grads()

    def infer(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(lr)

        return run

    steps: dict[str, Callable[[], None]] = {
        "base": base_step,
        "frozen_input_grad": frozen_input_grad_step,
        "batched": batched_step,
        "per_video_weights": per_video_weights_step,
        "loop": loop_step,
        "infer": infer(plain),
        "merged": infer(merged),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for i in range(warmup + rounds):
        for key in order if i % 2 == 0 else order[::-1]:  # alternate the order: no variant always goes first
            start = time.perf_counter()
            steps[key]()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "adapter_params": float(spec.num_params),
        "adapter_fraction": spec.fraction,
        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
        "batched_over_base": med["batched"] / med["base"],
        "batched_over_frozen_input_grad": med["batched"] / med["frozen_input_grad"],
        "per_video_weights_over_base": med["per_video_weights"] / med["base"],
        "per_video_weights_over_batched": med["per_video_weights"] / med["batched"],
        "merged_over_base": med["merged"] / med["infer"],
        "loop_over_batched": med["loop"] / med["batched"],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--bases", nargs="+", default=["window", "recurrent"], help="base networks to measure"
    )
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="LR frame height and width")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results: dict[str, float] = {}
    load_start = os.getloadavg()[0]
    print(
        f"LoRA engine, CPU {args.threads} threads: V={args.videos} videos x T={args.frames} frames, "
        f"LR {args.size}x{args.size}, rank {args.rank} on every conv; median of {args.rounds} rounds "
        f"after {args.warmup} warm-up"
    )
    for i, name in enumerate(args.bases):
        r = bench_base(
            name,
            videos=args.videos,
            frames=args.frames,
            size=args.size,
            rank=args.rank,
            rounds=args.rounds,
            warmup=args.warmup,
        )
        print(
            f"\nbase {name!r}: adapters {int(r['adapter_params']):,} parameters per video "
            f"({100 * r['adapter_fraction']:.1f}% of the base)"
        )
        rows = [
            ("base fwd+bwd (weights trainable, stage 1)", "base_ms"),
            ("frozen base fwd+bwd (grad to input only)", "frozen_input_grad_ms"),
            (f"frozen base + adapters, {args.videos} videos batched", "batched_ms"),
            ("frozen base + adapters folded into per-video weights (training)", "per_video_weights_ms"),
            (f"frozen base + adapters, loop over {args.videos} videos", "loop_ms"),
            ("inference: base", "infer_ms"),
            ("inference: one video's adapters merged", "merged_ms"),
        ]
        print(f"  {'measurement':<52} {'ms':>8}")
        for label, key in rows:
            print(f"  {label:<52} {r[key]:>8.1f}")
        checks = [
            ("batched / base step", "batched_over_base", "<= 1.30", r["batched_over_base"] <= 1.3),
            ("batched / frozen base step (reference)", "batched_over_frozen_input_grad", "", None),
            ("per-video weights / base step", "per_video_weights_over_base", "", None),
            ("per-video weights / batched", "per_video_weights_over_batched", "", None),
            ("merged / base inference", "merged_over_base", "<= 1.05", r["merged_over_base"] <= 1.05),
            ("loop / batched", "loop_over_batched", ">= 1.50", r["loop_over_batched"] >= 1.5),
        ]
        print(f"  {'ratio':<52} {'value':>8} {'target':>8} {'met':>4}")
        for label, key, target, met in checks:
            flag = "" if met is None else ("yes" if met else "NO")
            print(f"  {label:<52} {r[key]:>8.3f} {target:>8} {flag:>4}")
        if i == 0:
            results.update({k: r[k] for k in ("batched_over_base", "merged_over_base", "loop_over_batched")})
        results.update({f"{name}/{k}": v for k, v in r.items()})
    load_end = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    print(
        f"\nsystem load average (1 min): {load_start:.1f} at start, {load_end:.1f} at end, on {cores} cores"
    )
    if max(load_start, load_end) > cores:
        print(
            "  WARNING: other processes competed for the CPU; these timings are not reliable, rerun when idle"
        )
    results.update({"load_avg_start": load_start, "load_avg_end": load_end})
    if args.json:
        write_figures(Path(args.json), results)
    return results


if __name__ == "__main__":
    main()
