"""Score a domain adapter on the domain's test videos, alone and under the hypernetwork's
per-video adapter (naive sum and the learned merge), against the base, the hypernetwork alone
and the oracle; and the gain against the domain adapter's strength.

    .venv/bin/python scripts/domain_study.py --checkpoint CKPT --adapter domain.safetensors \\
        --videos outputs/domain_adapter/videos/test -o experiments/domain_adapter/DOMAIN

Methods (PSNR-Y over every frame of each test video, each video's LR/HR read from VIDEOS/lr and
VIDEOS/hr):

    bicubic, base          the references
    domain                 base + the domain adapter (fitted on other videos of the domain)
    hypernet               base + the hypernetwork's adapter, predicted from the whole LR video
    domain+hypernet        both, their deltas summed (naive stacking)
    domain+hypernet merge  both, with the per-channel merge learned on the domain's fitting videos
    oracle                 base + a LoRA fitted for `--oracle-steps` on this video's own HR

Writes per_video.csv, strength.csv, results.md, metrics.json and plot.png. Nothing here is
chosen on the test videos: the adapter, its best step and its merge were picked on the domain's
own held-out fitting videos (`python -m hypernet.finetune`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hypernet.adaptation import clip_starts, finetune_adapters
from hypernet.data import video_io
from hypernet.metrics import gain_summary, video_metrics
from hypernet.models.lora import load_adapters, load_merge_columns, scale_adapters, stack_under_hypernet
from hypernet.runs import atomic_write_text, write_table_csv
from hypernet.sr import adapted_sr, bicubic_upscale
from hypernet.systems.hyper_lora import load_hypernet, trained_context_frames

METHODS = (
    "bicubic",
    "base",
    "domain",
    "hypernet",
    "domain+hypernet",
    "domain+hypernet merge",
    "oracle",
)


def read_video(path: Path) -> torch.Tensor:
    return video_io.to_tensor(video_io.read_video(path))


def score_video(system, spec_d, domain, columns, lr, hr, args) -> tuple[dict, list[dict]]:
    base, spec_h = system.base, system.spec
    count = trained_context_frames(system, None, option="data.context_frames", checkpoint=args.checkpoint)
    predicted = system.adapters_for_video(lambda i: lr[:, i], num_frames=lr.shape[1], context_frames=count)

    def psnr_y(spec, adapters) -> float:
        with torch.no_grad():
            sr = adapted_sr(base, spec, adapters, lr).clamp(0, 1)
        return video_metrics(sr, hr, crop_border=0)["psnr_y"].item()

    scores = {
        "bicubic": video_metrics(bicubic_upscale(lr, system.scale), hr, crop_border=0)["psnr_y"].item(),
        "base": psnr_y(spec_h, None),
        "domain": psnr_y(spec_d, domain),
        "hypernet": psnr_y(spec_h, predicted),
        "domain+hypernet": psnr_y(*stack_under_hypernet(spec_d, domain, spec_h, predicted)),
    }
    if columns is not None:
        scores["domain+hypernet merge"] = psnr_y(
            *stack_under_hypernet(spec_d, domain, spec_h, predicted, columns=columns)
        )
    clips = clip_starts(lr.shape[1], args.clip_len, lr.shape[1] // args.clip_len)
    oracle = finetune_adapters(
        base,
        spec_h,
        torch.stack([lr[0, c] for c in clips]),
        hr=torch.stack([hr[0, c] for c in clips]),
        steps=args.oracle_steps,
        learning_rate=1e-3,
        seed=args.seed,
    )
    scores["oracle"] = psnr_y(spec_h, oracle)
    strengths = []
    for s in args.strengths:
        scaled = scale_adapters(domain, s, option="--strengths")
        strengths.append({"strength": s, "method": "domain", "psnr_y": psnr_y(spec_d, scaled)})
        stacked = stack_under_hypernet(spec_d, domain, spec_h, predicted, strength=s)
        strengths.append({"strength": s, "method": "domain+hypernet", "psnr_y": psnr_y(*stacked)})
    return scores, strengths


def plot(path: Path, summary: dict, methods: list[str], strength_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [m for m in methods if m not in ("bicubic", "base")]
    left.bar(
        range(len(shown)),
        [summary[m]["gain_y"] for m in shown],
        yerr=[summary[m]["gain_y_stderr"] for m in shown],
        capsize=3,
        color=["C1" if m == "oracle" else "C0" for m in shown],
    )
    left.set_xticks(range(len(shown)), [m.replace("+", "+\n") for m in shown], fontsize=8)
    left.axhline(0, color="k", lw=0.8)
    left.set_ylabel("PSNR-Y gain over the base (dB)")
    left.set_title("test videos of the domain (mean +- s.e.)")
    for method, colour in (("domain", "C0"), ("domain+hypernet", "C2")):
        rows = [r for r in strength_rows if r["method"] == method]
        xs = sorted({r["strength"] for r in rows})
        stats = [gain_summary([r["gain_y"] for r in rows if r["strength"] == x]) for x in xs]
        right.errorbar(
            xs,
            [s["gain_y"] for s in stats],
            yerr=[s["gain_y_stderr"] for s in stats],
            marker="o",
            capsize=3,
            color=colour,
            label=f"{method} (domain at strength S)",
        )
    right.axhline(0, color="k", lw=0.8)
    right.set_xlabel("strength S of the domain adapter")
    right.set_ylabel("PSNR-Y gain over the base (dB)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="stage-2 checkpoint")
    parser.add_argument("--adapter", type=Path, required=True, help="the domain adapter (hypernet.finetune)")
    parser.add_argument("--videos", type=Path, required=True, help="folder with hr/ and lr/ test videos")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--oracle-steps", type=int, default=100)
    parser.add_argument("--clip-len", type=int, default=5)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    system = load_hypernet(args.checkpoint)
    spec_d, domain, _ = load_adapters(args.adapter, base=system.base)
    columns = load_merge_columns(args.adapter)
    methods = [m for m in METHODS if m != "domain+hypernet merge" or columns is not None]
    hr_paths = video_io.list_videos(args.videos / "hr")
    lr_paths = video_io.list_videos(args.videos / "lr")
    rows, strength_rows = [], []
    for hr_path, lr_path in zip(hr_paths, lr_paths, strict=True):
        scores, strengths = score_video(
            system, spec_d, domain, columns, read_video(lr_path), read_video(hr_path), args
        )
        rows.append({"video_id": hr_path.name} | {m: scores[m] for m in methods})
        for r in strengths:
            strength_rows.append({"video_id": hr_path.name} | r | {"gain_y": r["psnr_y"] - scores["base"]})
        print(hr_path.name, " ".join(f"{m}={scores[m]:.3f}" for m in methods), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    summary = {m: gain_summary([r[m] - r["base"] for r in rows]) for m in methods}
    for m in methods:
        summary[m]["psnr_y"] = sum(r[m] for r in rows) / len(rows)
    write_table_csv(args.output / "per_video.csv", rows)
    write_table_csv(args.output / "strength.csv", strength_rows)
    atomic_write_text(args.output / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    n = len(rows)
    lines = ["| method | PSNR-Y | gain over base (dB, mean +- s.e.) | videos improved |", "|---|---|---|---|"]
    for m in methods:
        s = summary[m]
        lines.append(
            f"| {m} | {s['psnr_y']:.3f} | {s['gain_y']:+.3f} +- {s['gain_y_stderr']:.3f} | {int(s['videos_improved'])}/{n} |"
        )
    lines += ["", "| strength S | domain at S | domain at S + hypernet (naive) |", "|---|---|---|"]
    for x in args.strengths:
        cells = []
        for method in ("domain", "domain+hypernet"):
            g = gain_summary(
                [r["gain_y"] for r in strength_rows if r["strength"] == x and r["method"] == method]
            )
            cells.append(f"{g['gain_y']:+.3f} +- {g['gain_y_stderr']:.3f} ({int(g['videos_improved'])}/{n})")
        lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    atomic_write_text(args.output / "results.md", "\n".join(lines) + "\n")
    plot(args.output / "plot.png", summary, methods, strength_rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
