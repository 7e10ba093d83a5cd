"""A sweep folder -> a table (mean and spread over seeds) and a plot.

    .venv/bin/python scripts/collect_results.py outputs/rank_ablation/multiruns/DATE \\
        --param hypernet.lora.rank [--metric val/gain_y] [-o experiments/rank_ablation]

Every subfolder holding config.yaml (resolved, written by the run) and metrics.json is one job.
Jobs are grouped by the values of --param (several allowed); within a group the seeds are
summarised as mean, standard deviation and count. Writes results.md, results.csv and a PNG plot of
the first metric against the first parameter into the output folder."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from hypernet.metrics import mean_std


def lookup(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def load_jobs(sweep: Path) -> list[tuple[dict, dict]]:
    jobs = []
    for config_file in sorted(sweep.glob("**/config.yaml")):
        if ".hydra" in config_file.parts:
            continue
        metrics_file = config_file.parent / "metrics.json"
        if metrics_file.is_file():
            jobs.append(
                (OmegaConf.to_container(OmegaConf.load(config_file)), json.loads(metrics_file.read_text()))
            )
    if not jobs:
        raise SystemExit(f"{sweep}: no finished jobs (subfolders with config.yaml and metrics.json)")
    return jobs


def summarise(jobs, params: list[str], metrics: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for config, values in jobs:
        groups[tuple(lookup(config, p) for p in params)].append(values)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        row = dict(zip(params, key, strict=True))
        for metric in metrics:
            mean, std = mean_std([v[metric] for v in groups[key] if metric in v])
            row |= {f"{metric} mean": mean, f"{metric} std": std}
        row["seeds"] = len(groups[key])
        rows.append(row)
    return rows


def write_outputs(rows: list[dict], params: list[str], metrics: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = [*params, *(f"{m} (mean +- std)" for m in metrics), "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        cells = [str(r[p]) for p in params]
        cells += [f"{r[f'{m} mean']:.3f} +- {r[f'{m} std']:.3f}" for m in metrics]
        lines.append("| " + " | ".join([*cells, str(r["seeds"])]) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    keys = list(rows[0])
    csv = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    (out / "results.csv").write_text("\n".join(csv) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = [str(r[params[0]]) for r in rows]
    ax.errorbar(
        x,
        [r[f"{metrics[0]} mean"] for r in rows],
        yerr=[r[f"{metrics[0]} std"] for r in rows],
        marker="o",
        capsize=4,
    )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(params[0])
    ax.set_ylabel(f"{metrics[0]} (mean +- std over seeds)")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the multirun folder")
    parser.add_argument(
        "--param", action="append", required=True, help="swept config key, e.g. hypernet.lora.rank"
    )
    parser.add_argument(
        "--metric", action="append", help="metrics.json key (default: val/gain_y, val/psnr_y)"
    )
    parser.add_argument("-o", "--output", type=Path, help="output folder (default: the sweep folder)")
    args = parser.parse_args(argv)
    metrics = args.metric or ["val/gain_y", "val/psnr_y"]
    rows = summarise(load_jobs(args.sweep), args.param, metrics)
    write_outputs(rows, args.param, metrics, args.output or args.sweep)
    print((args.output or args.sweep).joinpath("results.md").read_text())
    return rows


if __name__ == "__main__":
    main()
