"""How large must a refine step on a video's close-ups be to help its wide shot, and is what it
learns the video's content or only the group's degradation?

    .venv/bin/python scripts/probe_refine_steps.py CHECKPOINT [--videos 8] [-o DIR]
    .venv/bin/python scripts/probe_refine_steps.py CHECKPOINT --as-trained [--videos 16] [-o DIR]
    .venv/bin/python scripts/probe_refine_steps.py CHECKPOINT --step-counts [--videos 16] [-o DIR]
    .venv/bin/python scripts/probe_refine_steps.py CHECKPOINT --plus DIRECT_CHECKPOINT [--videos 16] [-o DIR]

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

With --step-counts, time against gain: the checkpoint's adapters after 0 to its trained count of
steps, each timed beside the reference on the same videos; counts.csv and counts.md.

With --plus, does a model's step delta add to another model's adapters? Each video's adapters
from DIRECT_CHECKPOINT (its generator, no step: the degradation) plus CHECKPOINT's step delta
(its adapters as trained minus its generator's, exactly: a LoRA of their three ranks), beside
each alone, and the sum with the next video's step delta in place of its own; plus.csv, plus.md.

Then noise: on 16 validation recurrence videos under the training family's degradations (each
its own blur and noise, as `data.val_recurrence` draws them), three normalised steps of 1e-3 (the study's) on
pairs without noise, with noise at the video's estimated level (`sr.noise_level`) times 0.5, 1
and 1.5, and at its true level. Writes probe.csv and noise.csv (every video, every setting) and
probe.md (means +- s.e.) to DIR. experiments/content_memory/run.sh runs it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hypernet.adaptation import fit_on_closeups
from hypernet.config import compose_config
from hypernet.data.datamodule import check_data
from hypernet.files import atomic_write_text
from hypernet.metrics import gain_summary, video_metrics
from hypernet.models.lora import Adapters, LoRASpec
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


def cell(values: list[float]) -> str:
    """Gains as `mean +- s.e. (videos improved/videos)`."""
    s = gain_summary(values)
    return f"{s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} ({int(s['videos_improved'])}/{len(values)})"


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


def step_counts(system, items: list[dict], psnr, args: argparse.Namespace) -> None:
    """Time against gain: the checkpoint's adapters after 0, 1, ... up to its trained count of
    refine steps (its learned step sizes), each timed as eval times the hypernet (the adapters
    made from the item, seconds per video) and with its own minus the next video's adapters at
    the same count, beside the internal-learning reference's gain and seconds on the same videos
    (`fit_on_closeups`, args.steps Adam steps: eval's `crossscale`). Each video's counts and its
    reference are timed one after the other, so that a load that drifts over the run (another job
    on the machine) weighs on both sides alike; counts.csv, counts.md."""
    trained = 0 if system.refine.mode == "direct" else system.refine.steps  # direct: its adapters alone
    counts = range(trained + 1)
    # the first call of each side pays one-off costs no video should carry
    system.adapters_for_item(items[0])
    fit_on_closeups(system.base, system.spec, items[0], steps=1, learning_rate=args.lr)
    made, seconds = {}, {}
    for i, item in enumerate(items):
        for count in counts:
            system.refine.steps = count
            started = time.perf_counter()
            made[i, count] = system.adapters_for_item(item)
            seconds[i, count] = time.perf_counter() - started
        started = time.perf_counter()
        made[i, "reference"] = fit_on_closeups(
            system.base, system.spec, item, steps=args.steps, learning_rate=args.lr
        )
        seconds[i, "reference"] = time.perf_counter() - started
    system.refine.steps = trained
    base_psnr = [psnr(item, None) for item in items]
    rows = []
    for key in [*counts, "reference"]:
        for i, item in enumerate(items):
            own = psnr(item, made[i, key])
            other = "" if key == "reference" else own - psnr(item, made[(i + 1) % len(items), key])
            rows.append(
                {
                    "video_id": item["video_id"],
                    "steps": key,
                    "gain_y": own - base_psnr[i],
                    "own_minus_other_y": other,
                    "seconds": seconds[i, key],
                }
            )
    args.out.mkdir(parents=True, exist_ok=True)
    write_table_csv(args.out / "counts.csv", rows)
    lines = [f"`{Path(args.checkpoint).as_posix()}` on {len(items)} validation recurrence videos:", ""]
    lines += counts_table(rows)
    atomic_write_text(args.out / "counts.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def plus(stepper, direct, items: list[dict], psnr, args: argparse.Namespace) -> None:
    """`direct`'s adapters (its generator's, no step) plus `stepper`'s step delta (its adapters as
    trained minus its generator's alone), each video's PSNR-Y gain over the base on the wide shot,
    beside each model alone and the sum with the next video's delta; plus.csv and plus.md."""
    from hypernet.models.lora.stack import stack_adapters

    if stepper.refine.mode != "crossscale" or direct.refine.mode == "refine":
        raise SystemExit(
            f"error: --plus needs a crossscale model ({args.checkpoint}: {stepper.refine.mode}) and a model that "
            f"takes no step on a video without close-ups marked ({args.plus}: {direct.refine.mode})"
        )
    if direct.spec.to_dict() != stepper.spec.to_dict():
        raise SystemExit(f"error: --plus {args.plus} adapts other layers or ranks than {args.checkpoint}")
    bases = zip(direct.base.state_dict().values(), stepper.base.state_dict().values(), strict=True)
    if not all(torch.equal(a, b) for a, b in bases):
        raise SystemExit(f"error: --plus {args.plus} specialises another base than {args.checkpoint}")
    frames = [(m.trained_data or {}).get("context_frames") for m in (direct, stepper)]
    if frames[0] != frames[1]:
        raise SystemExit(
            f"error: --plus {args.plus} reads {frames[0]} context frames, {args.checkpoint} {frames[1]}"
        )
    spec = stepper.spec

    made = []
    for item in items:
        unmarked = {k: v for k, v in item.items() if k != "context_closeup"}  # no close-up: no step
        made.append(
            (
                direct.adapters_for_item(unmarked),
                stepper.adapters_for_item(item),
                stepper.adapters_for_item(unmarked),
            )
        )

    def summed(i: int, j: int) -> tuple[Adapters, LoRASpec]:
        """Video i's direct adapters plus video j's step delta, with the spec of their ranks."""
        parts = [(spec, made[i][0]), (spec, made[j][1]), (spec, made[j][2])]
        summed_spec, adapters = stack_adapters(parts, weights=[1.0, 1.0, -1.0])
        return adapters, summed_spec

    rows = []
    for i, item in enumerate(items):
        base = psnr(item, None)
        own, other = psnr(item, *summed(i, i)), psnr(item, *summed(i, (i + 1) % len(items)))
        rows.append(
            {
                "video_id": item["video_id"],
                "direct_y": psnr(item, made[i][0]) - base,
                "stepper_y": psnr(item, made[i][1]) - base,
                "sum_y": own - base,
                "sum_with_other_delta_y": other - base,
                "own_minus_other_delta_y": own - other,
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_table_csv(args.out / "plus.csv", rows)
    lines = [
        f"`{Path(args.plus).as_posix()}`'s adapters plus `{Path(args.checkpoint).as_posix()}`'s step delta, "
        f"{len(items)} validation recurrence videos (wide shot PSNR-Y over the base):",
        "",
        "| adapters | gain over the base |",
        "|---|---|",
    ]
    names = {
        "direct_y": "the direct model's alone",
        "stepper_y": "the stepping model's, as trained",
        "sum_y": "the sum",
        "sum_with_other_delta_y": "the sum with the next video's step delta",
        "own_minus_other_delta_y": "the sum: own delta minus the next video's",
    }
    lines += [f"| {name} | {cell([r[key] for r in rows])} |" for key, name in names.items()]
    atomic_write_text(args.out / "plus.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def counts_table(rows: list[dict]) -> list[str]:
    """counts.csv's rows (values as written or as read back) as a table: each count's gain, own
    minus other and share of the reference's gain at a share of its time (mean over mean)."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    reference = [r for r in rows if str(r["steps"]) == "reference"]
    ref_gain = mean([float(r["gain_y"]) for r in reference])
    ref_seconds = mean([float(r["seconds"]) for r in reference])
    lines = [
        "| refine steps | gain over the base | own minus the next video's | share of the reference's gain "
        "| share of its time |",
        "|---|---|---|---|---|",
    ]
    counts = sorted({int(r["steps"]) for r in rows if str(r["steps"]) != "reference"})
    for count in counts:
        chosen = [r for r in rows if str(r["steps"]) == str(count)]
        gain = [float(r["gain_y"]) for r in chosen]
        lines.append(
            f"| {count} | {cell(gain)} | {cell([float(r['own_minus_other_y']) for r in chosen])} "
            f"| {mean(gain) / ref_gain:.0%} | {mean([float(r['seconds']) for r in chosen]) / ref_seconds:.2%} |"
        )
    lines.append(
        f"| reference ({len(reference)} videos) | {cell([float(r['gain_y']) for r in reference])} | | 100% "
        f"| 100% ({ref_seconds:.2f} s a video) |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--videos", type=int, default=8, help="validation recurrence videos")
    parser.add_argument("--steps", type=int, default=100, help="the reference's Adam steps")
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/step_probe"))
    parser.add_argument(
        "--as-trained", action="store_true", help="only the checkpoint's adapters with and without its steps"
    )
    parser.add_argument(
        "--step-counts",
        action="store_true",
        help="the checkpoint's adapters after 0 to its trained count of steps, timed, beside the reference",
    )
    parser.add_argument(
        "--plus", help="a direct model's checkpoint: its adapters plus the checkpoint's step delta"
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

    def psnr(item: dict, adapters: Adapters | None, adapters_spec: LoRASpec = spec) -> float:
        with torch.no_grad():
            sr = adapted_sr(base, adapters_spec, adapters, item["lr"][None]).clamp(0, 1)
        return video_metrics(sr, item["hr"][None], crop_border=cfg.crop_border)["psnr_y"].item()

    args.lr = cfg.finetune_lr
    if args.as_trained:
        as_trained(system, items, psnr, cell, args)
        return
    if args.step_counts:
        step_counts(system, items, psnr, args)
        return
    if args.plus:
        plus(system, load_hypernet(args.plus, option="--plus").eval(), items, psnr, args)
        return
    if system.refine.split:
        raise SystemExit(
            f"error: {args.checkpoint} steps half of each layer's rank (hypernet.refine.split); the step probe "
            "steps whole adapters: use --as-trained or --step-counts"
        )
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
        fitted = fit_on_closeups(base, spec, item, steps=args.steps, learning_rate=args.lr)
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
