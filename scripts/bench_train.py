"""Stage-1 training throughput of each base network at quickstart size, next to what a plain
conv2d achieves on the same machine in the same run.

    .venv/bin/python scripts/bench_train.py [--json PATH]

Prints LR frames per second (forward + backward + optimiser step) and the achieved FLOP/s
(counted with torch.utils.flop_counter over one forward+backward), and the ratio of the model's
FLOP/s to the conv2d micro-benchmark's (how close the model gets to what this machine does on
its best-shaped layer). `--json` writes the same figures; `model_over_conv_flops` is the ratio of
the fastest base (by frames per second)."""

from __future__ import annotations

from pathlib import Path

import torch
from harness import bench_parser, median_seconds, write_figures
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from hypernet.config import compose_config
from hypernet.models.base import BASE_MODELS, build_base
from hypernet.sr import charbonnier


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_microbench(*, channels: int = 64, size: int = 64, batch: int = 16) -> float:
    """FLOP/s of one 3x3 conv forward+backward on a shape convolutions like best."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.rand(batch, channels, size, size, requires_grad=True)

    def step():
        conv(x).sum().backward()

    return count_flops(step) / median_seconds(step, warmup=2)


def model_bench(model_cfg: dict, *, batch: int, frames: int, lr_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_base(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lr = torch.rand(batch, frames, 3, lr_size, lr_size)
    hr = torch.rand(batch, frames, 3, lr_size * model.scale, lr_size * model.scale)

    def step():
        optimizer.zero_grad(set_to_none=True)
        charbonnier(model(lr), hr).backward()
        optimizer.step()

    seconds = median_seconds(step, warmup=2)
    flops = count_flops(lambda: charbonnier(model(lr), hr).backward())
    return {"frames_per_s": batch * frames / seconds, "step_s": seconds, "flop_per_s": flops / seconds}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="videos per step (base_quickstart: 8)")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip (base_quickstart: 5)")
    parser.add_argument("--lr-size", type=int, default=16, help="LR patch side (base_quickstart: 64/4)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    conv_flops = conv_microbench()
    results: dict[str, float] = {"conv2d_flop_per_s": conv_flops, "threads": args.threads}
    print(f"threads {args.threads}; conv2d 3x3 64ch micro-benchmark: {conv_flops / 1e9:.1f} GFLOP/s")
    print(f"{'base':<10} {'LR frames/s':>12} {'step ms':>9} {'GFLOP/s':>9} {'of conv2d':>10}")
    best_name, best_fps = None, 0.0
    for name in sorted(BASE_MODELS):
        cfg = OmegaConf.to_container(compose_config("train", [f"model={name}"]).model, resolve=True)
        r = model_bench(cfg, batch=args.batch, frames=args.frames, lr_size=args.lr_size)
        ratio = r["flop_per_s"] / conv_flops
        print(
            f"{name:<10} {r['frames_per_s']:>12.1f} {r['step_s'] * 1e3:>9.1f} {r['flop_per_s'] / 1e9:>9.2f} {ratio:>10.2f}"
        )
        results[f"{name}_frames_per_s"] = r["frames_per_s"]
        results[f"{name}_flop_per_s"] = r["flop_per_s"]
        results[f"{name}_over_conv_flops"] = ratio
        if r["frames_per_s"] > best_fps:
            best_name, best_fps = name, r["frames_per_s"]
    results["model_over_conv_flops"] = results[f"{best_name}_over_conv_flops"]
    print(f"fastest base: {best_name}; model_over_conv_flops = {results['model_over_conv_flops']:.2f}")
    if args.json:
        write_figures(Path(args.json), results)
    return results


if __name__ == "__main__":
    main()
