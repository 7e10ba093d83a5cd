"""How large must a refine step on a video's close-ups be to help its wide shot, and is what it
learns the video's content or only the group's degradation?

    .venv/bin/python scripts/probe_refine_steps.py CHECKPOINT [--videos 8] [-o DIR]
    .venv/bin/python scripts/probe_refine_steps.py CHECKPOINT --as-trained [--videos 16] [-o DIR]

A stage-2 checkpoint's generated adapters on validation recurrence videos
(`VSRDataModule.recurrence_videos(split="val")`: scenes of other seeds than the test group's,
the same degradation), refined by k crossscale steps on each video's close-ups at a common step
size, plain (the gradient times the step size, as refine mode takes it) and normalised (the
gradients over their joint RMS per layer, `hypernet.refine.normalize`). Each is scored on the wide shot
(PSNR-Y over the base), beside the internal-learning reference (a LoRA fitted on the close-ups,
100 Adam steps: eval's `crossscale`); for normalised steps also the video's own refined adapters
over its neighbour's (same degradation, other content).

With --as-trained, only the checkpoint's own adapters: as it makes them (its refine steps taken)
and as its generator makes them (no step), each over the base on the wide shot; as_trained.csv
(every video) and as_trained.md (means +- s.e.). A generator trained only through the steps may
make a start for them rather than an adapter.

Then noise: on 16 validation recurrence videos under the training family's degradations (each
its own blur and noise, as `data.val_recurrence` draws them), three normalised steps of 1e-3 (the study's) on
pairs without noise, with noise at the video's estimated level (`sr.noise_level`) times 0.5, 1
and 1.5, and at its true level. Writes probe.csv and noise.csv (every video, every setting) and
probe.md (means +- s.e.) to DIR. experiments/content_memory/run.sh runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hypernet.adaptation import finetune_adapters
from hypernet.config import compose_config
from hypernet.data.datamodule import check_data
from hypernet.data.recurrence import crossscale_pairs
from hypernet.files import atomic_write_text
from hypernet.metrics import gain_summary, video_metrics
from hypernet.models.lora import Adapters
from hypernet.runs import write_table_csv
from hypernet.sr import adapted_sr, noise_level
from hypernet.systems.hyper_lora import fed_as_trained, load_hypernet, refine_steps

PLAIN_SIZES = (1.0, 10.0, 100.0, 1000.0)  # multiples of the checkpoint's learned step sizes
NORMALISED_SIZES = (3e-4, 1e-3, 3e-3, 1e-2)
COUNTS = (1, 3, 10)


def stepped(
    system, item: dict, *, count: int, size: float, normalize: bool, noise_sigma: torch.Tensor | None = None
) -> Adapters:
    """The generated adapters after `count` first-order crossscale steps on the item's close-ups:
    plain steps at `size` times the checkpoint's per-layer step sizes, normalised ones at `size`;
    the pairs' inputs with noise of `noise_sigma` (1,) when given."""
    context = item["context"][None]
    with torch.no_grad():
        generated = system.generated_adapters(context, item["context_times"][None], item["degradation"][None])
    learned = system.refine.log_lr.exp().detach()
    blur = system.refine.log_blur.exp().detach() if hasattr(system.refine, "log_blur") else None
    refined = refine_steps(
        system.base,
        system.spec,
        generated,
        context,
        count=count,
        step_sizes=torch.full_like(learned, size) if normalize else size * learned,
        normalize=normalize,
        second_order=False,
        weights=item["context_closeup"][None],
        blur_sigma=blur,
        noise_sigma=noise_sigma,
    )
    return {n: (a.detach(), b.detach()) for n, (a, b) in refined.items()}


NOISE_GAINS = (0.5, 1.0, 1.5)


def noise_lines(system, datamodule, psnr, cell, out: Path) -> list[str]:
    """Three normalised steps of 1e-3 (the study's) on pairs without noise, with the estimated noise at
    NOISE_GAINS, and with the true noise, on 16 validation recurrence videos of the training
    family's degradations; noise.csv and the table's lines."""
    videos = datamodule.evaluation_set(
        datamodule.recurrence_videos(split="val", count=16, frame_size=192), controls=False
    )
    items = [videos[i] for i in range(len(videos))]
    settings = {"none": lambda item: None}
    for gain in NOISE_GAINS:
        settings[f"estimated x{gain:g}"] = lambda item, gain=gain: (
            gain * noise_level(item["context"][None], item["context_closeup"][None])
        )
    settings["true"] = lambda item: item["degradation"][2:3]
    rows = []
    for item in items:
        base = psnr(item, None)
        for name, sigma in settings.items():
            adapters = stepped(system, item, count=3, size=1e-3, normalize=True, noise_sigma=sigma(item))
            rows.append(
                {
                    "video_id": item["video_id"],
                    "noise": name,
                    "true_sigma": item["degradation"][2].item(),
                    "gain_y": psnr(item, adapters) - base,
                }
            )
    write_table_csv(out / "noise.csv", rows)
    lines = [
        "",
        f"Noise in the pairs: {len(items)} validation recurrence videos, each with its own blur and noise "
        "(the training family's), three normalised steps of 1e-3; wide shot PSNR-Y over the base:",
        "",
        "| pairs' noise | gain | videos with noise >= 0.025: gain |",
        "|---|---|---|",
    ]
    for name in settings:
        chosen = [r for r in rows if r["noise"] == name]
        noisy = [r["gain_y"] for r in chosen if r["true_sigma"] >= 0.025]
        lines.append(f"| {name} | {cell([r['gain_y'] for r in chosen])} | {cell(noisy)} |")
    return lines


def as_trained(system, items: list[dict], psnr, cell, args: argparse.Namespace) -> None:
    """The checkpoint's adapters as it makes them and as its generator alone makes them (no
    close-up marked: no step), over the base; as_trained.csv and as_trained.md in args.out."""
    rows = []
    for item in items:
        base = psnr(item, None)
        unmarked = {k: v for k, v in item.items() if k != "context_closeup"}
        rows.append(
            {
                "video_id": item["video_id"],
                "as_trained_y": psnr(item, system.adapters_for_item(item)) - base,
                "generated_y": psnr(item, system.adapters_for_item(unmarked)) - base,
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_table_csv(args.out / "as_trained.csv", rows)
    lines = [
        f"| `{Path(args.checkpoint).as_posix()}` | {cell([r['as_trained_y'] for r in rows])} "
        f"| {cell([r['generated_y'] for r in rows])} |"
    ]
    atomic_write_text(args.out / "as_trained.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--videos", type=int, default=8, help="validation recurrence videos")
    parser.add_argument("--steps", type=int, default=100, help="the reference's Adam steps")
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/step_probe"))
    parser.add_argument(
        "--as-trained", action="store_true", help="only the checkpoint's adapters with and without its steps"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [
        f"checkpoint={args.checkpoint}",
        f"data.test_recurrence={args.videos}",
        "data.test_recurrence_hr=192",
    ]
    system = load_hypernet(args.checkpoint, option="checkpoint=").eval()
    cfg = fed_as_trained(compose_config("eval", overrides), system)
    datamodule = check_data(cfg, stages=("validate",))
    videos = datamodule.recurrence_set(split="val")
    items = [videos[i] for i in range(len(videos))]
    base, spec = system.base, system.spec

    def psnr(item: dict, adapters: Adapters | None) -> float:
        with torch.no_grad():
            sr = adapted_sr(base, spec, adapters, item["lr"][None]).clamp(0, 1)
        return video_metrics(sr, item["hr"][None], crop_border=cfg.crop_border)["psnr_y"].item()

    def cell(values: list[float]) -> str:
        s = gain_summary(values)
        return f"{s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} ({int(s['videos_improved'])}/{len(values)})"

    if args.as_trained:
        as_trained(system, items, psnr, cell, args)
        return
    rows = []
    base_psnr = [psnr(item, None) for item in items]
    settings = [("plain", c, s) for c in COUNTS for s in PLAIN_SIZES] + [
        ("normalised", c, s) for c in COUNTS for s in NORMALISED_SIZES
    ]
    for kind, count, size in [("generated", 0, 0.0), *settings]:
        refined = [
            stepped(system, it, count=count, size=size, normalize=kind == "normalised") for it in items
        ]
        for i, item in enumerate(items):
            row = {"video_id": item["video_id"], "kind": kind, "steps": count, "size": size}
            row["gain_y"] = psnr(item, refined[i]) - base_psnr[i]
            if kind == "normalised":
                row["own_over_other_y"] = (
                    row["gain_y"] + base_psnr[i] - psnr(item, refined[(i + 1) % len(items)])
                )
            rows.append(row)
        print(
            kind,
            count,
            size,
            f"{sum(r['gain_y'] for r in rows[-len(items) :]) / len(items):+.3f}",
            flush=True,
        )
    for i, item in enumerate(items):
        inputs, targets = crossscale_pairs(
            item["closeups"], item["degradation"], clip_len=item["lr"].shape[0], seed=0
        )
        fitted = finetune_adapters(
            base, spec, inputs, hr=targets, steps=args.steps, learning_rate=cfg.finetune_lr
        )
        rows.append(
            {"video_id": item["video_id"], "kind": "reference", "steps": args.steps, "size": cfg.finetune_lr,
             "gain_y": psnr(item, fitted) - base_psnr[i]}
        )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_table_csv(args.out / "probe.csv", rows)

    lines = [
        f"# Refine steps on the close-ups: {len(items)} validation recurrence videos",
        "",
        f"`{Path(args.checkpoint).as_posix()}`'s adapters; wide shot PSNR-Y over the base, mean +- s.e. "
        "(videos improved). Plain sizes are multiples of the checkpoint's learned step sizes; "
        "normalised sizes are the RMS each layer's factors move by a step.",
        "",
        "| steps | kind | size | gain | own - neighbour's |",
        "|---|---|---|---|---|",
    ]
    for kind, count, size in [("generated", 0, 0.0), *settings, ("reference", args.steps, cfg.finetune_lr)]:
        chosen = [r for r in rows if (r["kind"], r["steps"], r["size"]) == (kind, count, size)]
        other = cell([r["own_over_other_y"] for r in chosen]) if kind == "normalised" else ""
        lines.append(f"| {count} | {kind} | {size:g} | {cell([r['gain_y'] for r in chosen])} | {other} |")
    lines += noise_lines(system, datamodule, psnr, cell, args.out)
    atomic_write_text(args.out / "probe.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
