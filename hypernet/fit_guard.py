"""`python -m hypernet.fit_guard checkpoint=PATH`: fit a stage-2 checkpoint's learned guard and
store it in that checkpoint.

The guard decides, from a video's LR frames alone, at what strength its adapters are applied
(hypernet.guard). The learned guard is a regression from what the LR frames show to what the
adapters gain, so it has to see the adapters gain and lose: it is fitted on fresh videos
(`videos`, training photographs and procedural scenes at the LR `sides`, under users'
degradations: `degradation`) where HR exists, scoring every strength against the base as the
guard sees a video (the centre of a clip of GUARD_CLIP_LEN frames; specialise reads two such
clips and averages). Nothing here touches a validation or test video.

Writes: the checkpoint, with its "guard" replaced (atomically; the rest of the file unchanged),
and in the run folder guard_fit.csv (each video's measurements and gains) and metrics.json (the
leave-one-out record: the rule's mean gain and worst video on videos it was not fitted on).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from hypernet.files import atomic_write_bytes
from hypernet.guard import (
    GUARD_CLIP_LEN,
    GUARD_CROP,
    GUARD_STRENGTHS,
    HARM_RATE,
    LearnedGuard,
    centre_crop,
    fit_learned_guard,
    guard_features,
    strength_outputs,
)
from hypernet.metrics import psnr
from hypernet.runs import check_run_folder, refusals, run_command, write_metrics, write_table_csv


def guard_example(system, item: dict) -> tuple[dict[str, float], dict[float, float]]:
    """One video's guard measurements (LR only) and its adapters' true gain (dB PSNR-Y over the
    base, on the same centre crop) at every strength of GUARD_STRENGTHS."""
    scale = system.scale
    lr = item["lr"][None]
    hr = centre_crop(item["hr"][None], GUARD_CROP, scale=scale).flatten(0, 1)
    crop = centre_crop(lr, GUARD_CROP)
    outputs = strength_outputs(
        system.base, system.spec, system.adapters_for_item(item), crop, GUARD_STRENGTHS
    )
    features = guard_features(crop, outputs, scale=scale)
    scores = {s: psnr(out.flatten(0, 1), hr, crop_border=scale).mean().item() for s, out in outputs.items()}
    return features, {s: scores[s] - scores[0.0] for s in outputs}


def store_guard(checkpoint: str | Path, guard: LearnedGuard, system) -> None:
    """Put `guard` into the checkpoint file, replacing any guard it held; atomically. Refused if
    the file no longer holds the weights the guard was fitted on (a run wrote it meanwhile)."""
    from hypernet.checkpointing import read_checkpoint

    saved = read_checkpoint(checkpoint, option="checkpoint=")
    fitted_on = system.state_dict()
    if set(saved["state_dict"]) != set(fitted_on) or any(
        not torch.equal(saved["state_dict"][k].cpu(), v.cpu()) for k, v in fitted_on.items()
    ):
        raise ValueError(
            f"checkpoint={checkpoint} changed while its guard was fitted (another run wrote it): "
            "nothing stored; fit again on the checkpoint as it is now"
        )
    saved["guard"] = guard.state()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    atomic_write_bytes(checkpoint, buffer.getvalue())


def prepare(cfg: DictConfig):
    """Every check before anything is written: the options, the run folder, the checkpoint, the
    data options; returns the config as the checkpoint feeds it, the system and the fit videos."""
    from hypernet.data.datamodule import build_datamodule, check_lr_sides, degradation_config
    from hypernet.systems.hyper_lora import fed_as_trained, load_hypernet

    if isinstance(cfg.videos, bool) or not isinstance(cfg.videos, int) or cfg.videos < 10:
        raise ValueError(f"videos={cfg.videos!r}: the guard needs an int >= 10 videos to fit on")
    if OmegaConf.is_list(cfg.sides) and not cfg.sides:
        raise ValueError("sides=[]: give the LR sides of the fit videos, e.g. [24,48,96,160]")
    if not OmegaConf.is_dict(cfg.degradation):
        raise ValueError(
            f"degradation={cfg.degradation!r}: give the options of a degradation (mode, blur_sigma, "
            "noise_sigma, clean_prob, subsample_prob, crf, codec_prob), as configs/fit_guard.yaml does"
        )
    check_run_folder(cfg.paths.output_dir, resumable=False)
    system = load_hypernet(cfg.checkpoint, option="checkpoint=")
    if not os.access(cfg.checkpoint, os.W_OK) or not os.access(Path(cfg.checkpoint).parent, os.W_OK):
        raise ValueError(
            f"checkpoint={cfg.checkpoint}: the guard is stored in the checkpoint, which is not writable"
        )
    sides = check_lr_sides(
        cfg.sides, scale=system.scale, option="sides", meaning="LR sides of the fit videos"
    )
    cfg = fed_as_trained(cfg, system)
    cfg.data.clip_len = GUARD_CLIP_LEN  # each fit video is measured on one clip as the guard reads one
    datamodule = build_datamodule(cfg)
    try:
        degradation = degradation_config(
            scale=system.scale, degradation=OmegaConf.to_container(cfg.degradation)
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"degradation: {e}") from None
    videos = datamodule.evaluation_set(datamodule.guard_fit_videos(cfg.videos, sides), degradation)
    return cfg, system, videos


def fit(cfg: DictConfig, system, videos) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    examples, rows = [], []
    for i in range(len(videos)):
        item = videos[i]
        features, gains = guard_example(system, item)
        examples.append((features, gains))
        rows.append(
            {"video_id": item["video_id"], **{f"gain@{s:g}": g for s, g in gains.items()}, **features}
        )
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(videos)} videos measured", flush=True)
    guard = fit_learned_guard(
        examples,
        fitted={
            "seed": cfg.seed,
            "sides": list(cfg.sides),
            "degradation": OmegaConf.to_container(cfg.degradation),
        },
    )
    if guard.fitted["loo_harmed"] > HARM_RATE * len(examples):
        print(
            f"warning: no penalty and margin harm at most {HARM_RATE:.0%} of the fit's videos; the guard "
            f"takes the one that harms fewest ({guard.fitted['loo_harmed']} of {len(examples)})",
            flush=True,
        )
    store_guard(cfg.checkpoint, guard, system)  # first: the record below describes a stored guard
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_table_csv(output_dir / "guard_fit.csv", rows)
    record = {k: v for k, v in guard.fitted.items() if isinstance(v, int | float)}
    write_metrics(output_dir, record)
    return record


@hydra.main(version_base="1.3", config_path="../configs", config_name="fit_guard")
def hydra_main(cfg: DictConfig) -> None:
    with refusals():
        prepared = prepare(cfg)
    record = fit(*prepared)
    print(" ".join(f"{k}={v:.4g}" for k, v in record.items()))


def main() -> None:
    run_command(hydra_main)


if __name__ == "__main__":
    main()
