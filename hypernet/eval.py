"""`python -m hypernet.eval`: does the hypernetwork earn its keep? Every method on every
held-out video, in one table:

    bicubic    MATLAB bicubic
    base       the frozen base alone
    selfsup    base + a per-video LoRA fine-tuned on the LR video alone (ZSSR-style)
    hypernet   base + the LoRA the hypernetwork predicts from the video in one pass, reading the
               context frames as in training (data.context_frames spread over the video)
    hypernet_stream  the same, its encoder streaming every frame of the video (as specialise does)
    hypernet_guard   the hypernet's adapters at the strength the guard chooses from the LR clip alone
               (hypernet.guard, as specialise applies them by default; guard.csv says what it chose)
    oracle     base + a per-video LoRA fitted to that video's own HR frames (the upper bound)

The memory controls (issue 21; the recurrence group's items carry what they read):

    hypernet_other   the hypernet's adapters made from another video of the same group (the next
               one): what is left when the adapters know the group but not the video
    hypernet_without_closeups  the hypernet reading the video with its close-ups removed (the
               same count of context frames, spread over the wide shot alone); recurrence only
    crossscale  a per-video LoRA fitted on the video's own cross-scale pairs, from LR alone: its
               close-ups degraded once more as inputs, the close-ups as targets (internal
               learning, ZSSR-style, with the group's known degradation); recurrence only

Columns: PSNR-Y, SSIM-Y, PSNR-RGB, seconds to specialise, adapter size. Written to the run
folder as results.csv, results.md, metrics.json, a per-video bar plot and side-by-side crops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from hypernet.adaptation import finetune_adapters, fit_on_closeups
from hypernet.data.recurrence import without_closeups
from hypernet.guard import check_margin, choose_strength
from hypernet.metrics import gain_summary, video_metrics
from hypernet.models.lora import Adapters, check_strength, scale_adapters
from hypernet.runs import (
    atomic_write_text,
    check_run_folder,
    command_overrides,
    refusals,
    run_command,
    write_metrics,
    write_table_csv,
)
from hypernet.sr import adapted_sr, bicubic_upscale, side_by_side

METHODS = (
    "bicubic",
    "base",
    "selfsup",
    "hypernet",
    "hypernet_stream",
    "hypernet_guard",
    "hypernet_other",
    "hypernet_without_closeups",
    "crossscale",
    "oracle",
)
# each one's gain over the base is summarised (with its worst video and videos improved)
ADAPTED = tuple(m for m in METHODS if m not in ("bicubic", "base", "selfsup", "oracle"))
RECURRENCE_ONLY = {"hypernet_without_closeups": "context_without_closeups", "crossscale": "closeups"}


def adapter_kib(adapters: Adapters | None) -> float:
    if adapters is None:
        return 0.0
    return sum(t.numel() * t.element_size() for pair in adapters.values() for t in pair) / 1024


def evaluate_video(
    system,
    item: dict,
    cfg: DictConfig,
    *,
    every_frame: Callable[[], torch.Tensor] | None = None,
    other: Callable[[], dict] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], list[dict[str, Any]]]:
    """All methods on one video: rows for the table, each method's SR frames, and the hypernet's
    PSNR-Y at every strength of cfg.strengths (its adapters' delta scaled), with the guard's
    choice as a row of the last. `every_frame()` gives the whole LR video (T, C, h, w) that
    `hypernet_stream` reads, `other()` another video's item of the same group (hypernet_other;
    None in a group of one video). A memory control whose frames the item does not hold
    (RECURRENCE_ONLY), or hypernet_other without another video, has no row."""
    base, spec = system.base, system.spec
    lr, hr = item["lr"][None], item["hr"][None]
    rows, outputs, strength_rows = [], {}, []
    guard_row = None
    for method in cfg.methods:
        if RECURRENCE_ONLY.get(method, "lr") not in item or (method == "hypernet_other" and other is None):
            continue
        other_item = other() if method == "hypernet_other" else None  # drawn before the clock starts
        started = time.perf_counter()
        adapters = None
        if method == "selfsup":
            adapters = finetune_adapters(
                base, spec, lr, steps=cfg.selfsup_steps, learning_rate=cfg.finetune_lr, seed=cfg.seed
            )
        elif method == "crossscale":  # from LR alone: the close-ups are the targets
            adapters = fit_on_closeups(
                base, spec, item, steps=cfg.crossscale_steps, learning_rate=cfg.finetune_lr, seed=cfg.seed
            )
        elif method == "hypernet_other":
            adapters = system.adapters_for_item(other_item)
            adapters = scale_adapters(adapters, cfg.get("strength", 1.0), option="strength")
        elif method == "hypernet_without_closeups":
            adapters = system.adapters_for_item(without_closeups(item))
            adapters = scale_adapters(adapters, cfg.get("strength", 1.0), option="strength")
        elif method == "oracle":
            adapters = finetune_adapters(
                base, spec, lr, hr=hr, steps=cfg.oracle_steps, learning_rate=cfg.finetune_lr, seed=cfg.seed
            )
        elif method == "hypernet_stream":
            whole = every_frame()[None]  # (1, T, C, h, w): the video, not the scored clip
            closeups = item.get("context_closeup")
            adapters = system.adapters_from_stream(
                whole.split(32, dim=1),
                num_frames=whole.shape[1],
                refine_context=item["context"][None],
                refine_closeups=None if closeups is None else closeups[None],
            )
            adapters = scale_adapters(adapters, cfg.get("strength", 1.0), option="strength")
        elif method == "hypernet_guard":  # the LR clip alone chooses; HR only scores it below
            adapters = system.adapters_for_item(item)
            learned = system.learned_guard if cfg.get("learned_guard", True) else None
            choice = choose_strength(
                base, spec, adapters, lr, margin=cfg.get("guard_margin"), learned=learned
            )
            adapters = scale_adapters(adapters, choice.strength)
            guard_row = {
                "video_id": item["video_id"],
                "strength": choice.strength,
                **{f"over_base@{s:g}": d for s, d in choice.over_base.items()},
                "reason": choice.reason,
            }
        elif method == "hypernet":
            adapters = system.adapters_for_item(item)
        seconds = time.perf_counter() - started  # the strength sweep below is analysis, not specialising
        if method == "hypernet":
            for strength in cfg.get("strengths") or []:
                with torch.no_grad():
                    scaled = adapted_sr(
                        base, spec, scale_adapters(adapters, strength, option="strengths"), lr
                    )
                strength_rows.append(
                    {
                        "video_id": item["video_id"],
                        "strength": float(strength),
                        "psnr_y": video_metrics(scaled.clamp(0, 1), hr, crop_border=cfg.crop_border)[
                            "psnr_y"
                        ].item(),
                    }
                )
            adapters = scale_adapters(adapters, cfg.get("strength", 1.0), option="strength")
        with torch.no_grad():
            if method == "bicubic":
                sr = bicubic_upscale(lr, system.scale)
            else:
                sr = adapted_sr(base, spec, adapters, lr).clamp(0, 1)
        m = video_metrics(sr, hr, crop_border=cfg.crop_border)
        rows.append(
            {
                "video_id": item["video_id"],
                "method": method,
                "psnr_y": m["psnr_y"].item(),
                "ssim_y": m["ssim_y"].item(),
                "psnr_rgb": m["psnr_rgb"].item(),
                "seconds": seconds,
                "adapter_kib": adapter_kib(adapters),
            }
        )
        outputs[method] = sr[0, sr.shape[1] // 2]
    outputs["hr"] = hr[0, hr.shape[1] // 2]
    base_psnr = next((r["psnr_y"] for r in rows if r["method"] == "base"), None)
    for row in strength_rows:
        row["gain_y"] = row["psnr_y"] - base_psnr if base_psnr is not None else float("nan")
    if guard_row is not None:
        guarded = next(r["psnr_y"] for r in rows if r["method"] == "hypernet_guard")
        guard_row["gain_y"] = guarded - base_psnr
    return rows, outputs, strength_rows, guard_row


def summarise(
    rows: list[dict[str, Any]], methods: list[str], guard_rows: list[dict[str, Any]] = ()
) -> dict[str, float]:
    by = {m: [r for r in rows if r["method"] == m] for m in methods}
    by = {m: rs for m, rs in by.items() if rs}  # a memory control outside the recurrence group has none
    summary: dict[str, float] = {}
    for m, rs in by.items():
        for key in ("psnr_y", "ssim_y", "psnr_rgb", "seconds", "adapter_kib"):
            summary[f"test/{m}/{key}"] = sum(r[key] for r in rs) / len(rs)
    base_psnr = {r["video_id"]: r["psnr_y"] for r in by.get("base", [])}
    gains = {
        m: [r["psnr_y"] - base_psnr[r["video_id"]] for r in by[m]] for m in ADAPTED if m in by and base_psnr
    }
    for m, values in gains.items():
        summary.update({f"test/{m}_{k}": v for k, v in gain_summary(values).items()})
        summary[f"test/{m}_worst_gain_y"] = min(values)
    for control in ("hypernet_other", "hypernet_without_closeups"):  # what the video's own reading adds
        if "hypernet" in gains and control in gains:
            difference = [h - c for h, c in zip(gains["hypernet"], gains[control], strict=True)]
            name = control.removeprefix("hypernet_")
            summary.update({f"test/own_over_{name}_{k}": v for k, v in gain_summary(difference).items()})
    if "hypernet" in gains and "hypernet_stream" in gains:  # every frame read, against the spread frames
        difference = [s - g for s, g in zip(gains["hypernet_stream"], gains["hypernet"], strict=True)]
        summary.update({f"test/stream_over_spread_{k}": v for k, v in gain_summary(difference).items()})
    if "hypernet" in gains and "hypernet_guard" in gains:
        # how often the guard keeps the base, and what it costs where the adapters help
        summary["test/guard_kept_base"] = float(sum(r["strength"] == 0 for r in guard_rows))
        summary["test/guard_mean_strength"] = sum(r["strength"] for r in guard_rows) / max(len(guard_rows), 1)
        helped = [(h, g) for h, g in zip(gains["hypernet"], gains["hypernet_guard"], strict=True) if h > 0]
        summary["test/guard_cost_where_adapters_help"] = (
            sum(h - g for h, g in helped) / len(helped) if helped else float("nan")
        )
    if "hypernet" in gains:
        if "oracle" in by:
            oracle_gain = summary["test/oracle/psnr_y"] - summary["test/base/psnr_y"]
            summary["test/hypernet_fraction_of_oracle_gain"] = (
                summary["test/hypernet_gain_y"] / oracle_gain if oracle_gain > 0 else float("nan")
            )
        if "crossscale" in gains:  # the internal-learning reference: how much of it, at what cost
            reference = summary["test/crossscale_gain_y"]
            summary["test/hypernet_fraction_of_crossscale_gain"] = (
                summary["test/hypernet_gain_y"] / reference if reference > 0 else float("nan")
            )
        for other in ("selfsup", "crossscale", "oracle"):
            if other in by:
                summary[f"test/{other}_time_over_hypernet"] = summary[f"test/{other}/seconds"] / max(
                    summary["test/hypernet/seconds"], 1e-9
                )
    return summary


def markdown(
    rows: list[dict[str, Any]], summary: dict[str, float], methods: list[str], *, groups: list[str] = ()
) -> str:
    lines = [
        "| method | PSNR-Y | SSIM-Y | PSNR-RGB | seconds to specialise | adapter KiB |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        s = lambda k, m=m: summary[f"test/{m}/{k}"]  # noqa: E731
        lines.append(
            f"| {m} | {s('psnr_y'):.2f} | {s('ssim_y'):.4f} | {s('psnr_rgb'):.2f} | {s('seconds'):.2f} | {s('adapter_kib'):.1f} |"
        )
    lines.append("")
    if "test/hypernet_gain_y" in summary:
        lines.append(
            f"hypernet vs base: {summary['test/hypernet_gain_y']:+.3f} +- {summary['test/hypernet_gain_y_stderr']:.3f} dB "
            f"PSNR-Y (mean +- s.e.), {int(summary['test/hypernet_videos_improved'])} of "
            f"{len(rows) // len(methods)} videos improved"
        )
    if "test/hypernet_stream_gain_y" in summary:
        lines.append(
            f"; reading every frame (hypernet_stream): {summary['test/hypernet_stream_gain_y']:+.3f} +- "
            f"{summary['test/hypernet_stream_gain_y_stderr']:.3f} dB, "
            f"{summary['test/stream_over_spread_gain_y']:+.3f} +- {summary['test/stream_over_spread_gain_y_stderr']:.3f} "
            "against the spread frames"
        )
    if "test/hypernet_fraction_of_oracle_gain" in summary:
        lines.append(f"; {100 * summary['test/hypernet_fraction_of_oracle_gain']:.1f}% of the oracle's gain")
    for other in ("selfsup", "oracle"):
        if f"test/{other}_time_over_hypernet" in summary:
            lines.append(
                f"; {other} takes {summary[f'test/{other}_time_over_hypernet']:.0f}x the hypernet's time to specialise"
            )
    lines += group_table(summary, groups)
    lines += memory_lines(summary)
    lines += ["", "| video | " + " | ".join(methods) + " |", "|---" * (1 + len(methods)) + "|"]
    videos = list(dict.fromkeys(r["video_id"] for r in rows))
    table = {(r["video_id"], r["method"]): r["psnr_y"] for r in rows}
    for v in videos:
        lines.append(f"| {v} | " + " | ".join(f"{table[(v, m)]:.2f}" for m in methods) + " |")
    return "\n".join(lines).replace("\n;", ";") + "\n"


def group_table(summary: dict[str, float], groups: Sequence[str]) -> list[str]:
    """Every group's gains over the base, a line each (mean +- s.e., videos improved, the worst
    video), the guarded ones and how often the guard kept the base beside them."""
    adapted = [m for m in ADAPTED if any(k.endswith(f"/{m}_gain_y") for k in summary)]
    if not adapted or len(groups) < 2:
        return []
    guard = "test/guard_kept_base" in summary
    lines = [
        "",
        "| group | "
        + " | ".join(f"{m} vs base (improved, worst)" for m in adapted)
        + (" | guard kept the base |" if guard else " |"),
        "|---" * (1 + len(adapted) + guard) + "|",
    ]
    for group in groups:
        prefix = "test/" if group == "single" else f"test/{group}/"
        cells = [
            f"{summary[f'{prefix}{m}_gain_y']:+.3f} +- {summary[f'{prefix}{m}_gain_y_stderr']:.3f} "
            f"({int(summary[f'{prefix}{m}_videos_improved'])}, {summary[f'{prefix}{m}_worst_gain_y']:+.3f})"
            if f"{prefix}{m}_gain_y" in summary
            else "-"
            for m in adapted
        ]
        if guard:
            cells.append(f"{int(summary[f'{prefix}guard_kept_base'])}")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def memory_lines(summary: dict[str, float]) -> list[str]:
    """The recurrence group's memory controls: what the video's own reading adds over another
    video's adapters and over the same video without its close-ups, and how much of the
    internal-learning reference the hypernet reaches, at what share of its time."""
    prefix = "test/recurrence/"
    if f"{prefix}hypernet_gain_y" not in summary:
        return []
    lines = ["", "memory (test/recurrence, wide shots scored):"]
    for name, what in (("other", "another video's adapters"), ("without_closeups", "its close-ups removed")):
        key = f"{prefix}own_over_{name}_gain_y"
        if key in summary:
            lines.append(
                f"- own adapters over {what}: {summary[key]:+.3f} +- {summary[f'{key}_stderr']:.3f} dB, "
                f"{int(summary[f'{prefix}own_over_{name}_videos_improved'])} videos better"
            )
    if f"{prefix}crossscale_gain_y" in summary:
        lines.append(
            f"- internal-learning reference (crossscale): {summary[f'{prefix}crossscale_gain_y']:+.3f} dB; the hypernet "
            f"reaches {100 * summary[f'{prefix}hypernet_fraction_of_crossscale_gain']:.0f}% of it in "
            f"1/{summary[f'{prefix}crossscale_time_over_hypernet']:.0f} of its time"
        )
    return lines


def strength_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Gain over the base at each strength: test/hypernet_gain_y@S, its s.e. and videos improved."""
    summary = {}
    for strength in sorted({r["strength"] for r in rows}):
        gains = gain_summary([r["gain_y"] for r in rows if r["strength"] == strength])
        summary.update({f"test/hypernet_{k}@{strength:g}": v for k, v in gains.items()})
    return summary


def plot_strength(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = strength_summary(rows)
    strengths = sorted({r["strength"] for r in rows})
    means = [summary[f"test/hypernet_gain_y@{s:g}"] for s in strengths]
    errors = [summary[f"test/hypernet_gain_y_stderr@{s:g}"] for s in strengths]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(strengths, means, yerr=errors, marker="o", capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("adapter strength (0: the base, 1: as trained)")
    ax.set_ylabel("PSNR-Y gain over the base (dB)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(path: Path, rows: list[dict[str, Any]], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = list(dict.fromkeys(r["video_id"] for r in rows))
    table = {(r["video_id"], r["method"]): r["psnr_y"] for r in rows}
    shown = [m for m in methods if m != "base"]
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(videos)), 4))
    width = 0.8 / len(shown)
    for i, m in enumerate(shown):
        gains = [table[(v, m)] - table[(v, "base")] for v in videos]
        ax.bar([j + i * width for j in range(len(videos))], gains, width, label=m)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(videos))], videos, rotation=70, fontsize=7)
    ax.set_ylabel("PSNR-Y gain over the base (dB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_options(cfg: DictConfig) -> None:
    """eval's own options, before anything is read or written."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods={list(cfg.methods)}: {unknown} not known; choose from {list(METHODS)}")
    if "base" not in cfg.methods:
        raise ValueError("methods must include 'base': every gain is measured against it")
    for strength in cfg.get("strengths") or []:
        check_strength(strength, option="strengths")  # a bad strength fails before any work
    check_strength(cfg.get("strength", 1.0), option="strength")
    if cfg.get("guard_margin") is not None:
        check_margin(cfg.guard_margin, option="guard_margin")
    if not isinstance(cfg.get("learned_guard", True), bool):
        raise ValueError(f"learned_guard={cfg.learned_guard!r} must be true or false")
    for option, minimum in (
        ("selfsup_steps", 1),
        ("oracle_steps", 1),
        ("crossscale_steps", 1),
        ("crop_border", 0),
        ("crop_videos", 0),
    ):
        value = cfg.get(option)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{option}={value!r} must be an int >= {minimum}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an int, got {cfg.seed!r}")
    steps = cfg.get("refine_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"refine_steps={steps!r} must be null (the checkpoint's) or an int >= 0")


def prepare(cfg: DictConfig) -> tuple[DictConfig, Any, dict[str, Any]]:
    """Every check before anything is written: the options, the output folder (not another run's
    or evaluation's), the checkpoint, then the data options and folders (the data module's
    `check_data`) once the checkpoint has filled in how its model is fed (`hyper_lora.fed_as_trained`).
    Returns that config, the system and the groups of videos to evaluate: the test videos
    (data.test_source, every group), or the validation videos when there are none."""
    from hypernet.data.datamodule import check_data
    from hypernet.systems.hyper_lora import fed_as_trained, load_hypernet

    check_options(cfg)
    check_run_folder(cfg.paths.output_dir, resumable=False)
    system = load_hypernet(cfg.checkpoint, option="checkpoint=")
    cfg = fed_as_trained(cfg, system)
    changes = {}  # another reading or another count of refine steps, asked for
    if cfg.context_tile != system.hparams["hypernet"]["encoder"].get("context_tile"):
        changes["encoder"] = {"context_tile": cfg.context_tile}
    if cfg.get("refine_steps") is not None:
        mode = system.hparams["hypernet"]["refine"]["mode"]
        if mode == "direct" and cfg.refine_steps > 0:
            raise ValueError(
                f"refine_steps={cfg.refine_steps}: the model of {cfg.checkpoint} was trained in "
                "hypernet.refine.mode=direct and takes no refine steps; leave refine_steps unset"
            )
        changes["refine"] = {"steps": cfg.refine_steps}
    if changes:
        system = load_hypernet(cfg.checkpoint, option="checkpoint=", hypernet=changes)
    datamodule = check_data(cfg, stages=("test", "validate"))  # data.scale and context_frames filled
    groups = dict(datamodule.test_sets) or {"single": datamodule.val_set}
    return cfg, system, groups


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate cfg.checkpoint against every method of cfg.methods; a bad option, folder or
    checkpoint raises its error (naming it) before anything is written."""
    return evaluate(*prepare(cfg))


def evaluate(cfg: DictConfig, system: Any, groups: dict[str, Any]) -> dict[str, float]:
    """Every method on every video of every group; writes the tables, plots and metrics.json."""
    torch.manual_seed(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    rows, crops, strength_rows, guard_rows = [], [], [], []
    for group, videos in groups.items():
        for i in range(len(videos)):
            video_rows, outputs, video_strengths, guard_row = evaluate_video(
                system,
                videos[i],
                cfg,
                every_frame=lambda videos=videos, i=i: videos.every_frame(i),
                other=(lambda videos=videos, i=i: videos[(i + 1) % len(videos)]) if len(videos) > 1 else None,
            )
            rows += [{**row, "group": group} for row in video_rows]
            strength_rows += [{**row, "group": group} for row in video_strengths]
            if guard_row is not None:
                guard_rows.append({"group": group, **guard_row})
            if group == "single" and i < cfg.crop_videos:
                crops.append(
                    side_by_side(
                        *[outputs[m] for m in ("bicubic", "base", "hypernet", "oracle") if m in outputs],
                        outputs["hr"],
                    )
                )
    methods = list(cfg.methods)
    main_rows = [r for r in rows if r["group"] == "single"]
    main_methods = [m for m in methods if any(r["method"] == m for r in main_rows)]
    summary = summarise(main_rows, methods, [r for r in guard_rows if r["group"] == "single"])
    for group in groups:  # other groups reported apart: test/multishot/..., test/real_bi/...
        if group != "single":
            grouped = summarise(
                [r for r in rows if r["group"] == group],
                methods,
                [r for r in guard_rows if r["group"] == group],
            )
            summary.update({k.replace("test/", f"test/{group}/", 1): v for k, v in grouped.items()})
    output_dir.mkdir(parents=True, exist_ok=True)
    write_table_csv(output_dir / "results.csv", rows)
    if guard_rows:
        write_table_csv(output_dir / "guard.csv", guard_rows)
    atomic_write_text(
        output_dir / "results.md", markdown(main_rows, summary, main_methods, groups=list(groups))
    )
    write_metrics(output_dir, summary)
    plot_bars(output_dir / "gains.png", main_rows, main_methods)
    if strength_rows:
        write_table_csv(output_dir / "strength.csv", strength_rows)
        summary.update(strength_summary([r for r in strength_rows if r["group"] == "single"]))
        write_metrics(output_dir, summary)
        plot_strength(output_dir / "strength.png", [r for r in strength_rows if r["group"] == "single"])
    if crops:
        import torchvision

        width = max(c.shape[-1] for c in crops)
        padded = [torch.nn.functional.pad(c, (0, width - c.shape[-1]), value=1.0) for c in crops]
        torchvision.utils.save_image(
            torch.stack(padded), output_dir / "crops.png", nrow=1, padding=4, pad_value=1.0
        )
    atomic_write_text(
        output_dir / "eval.json",
        json.dumps(
            {
                "checkpoint": str(cfg.checkpoint),
                "methods": methods,
                "context_frames": int(cfg.data.context_frames),  # how the model was fed, as used
                "context_tile": cfg.context_tile,
                "learned_guard": bool(cfg.get("learned_guard", True) and system.learned_guard is not None),
                "overrides": command_overrides(),
            }
        ),
    )
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    """The task Hydra runs: a refusal in `prepare` ends the command with one line (RunRefused)
    before anything is written."""
    with refusals():
        prepared = prepare(cfg)
    evaluate(*prepared)
    print((Path(cfg.paths.output_dir) / "results.md").read_text())


def main() -> None:
    """`python -m hypernet.eval ...` and the hypernet-eval script (runs.run_command)."""
    run_command(hydra_main)


if __name__ == "__main__":
    main()
