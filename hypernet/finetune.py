"""LoRA fine-tuning of the frozen base: for one video (the oracle, or a self-supervised fit), or
for a whole domain where ground truth exists (a game rendered offline at high resolution, the
later, better-filmed seasons of a series): one adapter for many videos.

    python -m hypernet.finetune --hr HR.mp4 -o adapter.safetensors            # supervised (oracle)
    python -m hypernet.finetune --lr LR.mp4 -o adapter.safetensors            # self-supervised (ZSSR-style)
    python -m hypernet.finetune --hr domain/ -o domain.safetensors            # a folder: one adapter for all
    python -m hypernet.finetune --hr domain/hr --lr domain/lr --merge-steps 200 -o domain.safetensors

Apply it with `python -m hypernet.specialise LR.mp4 -o out.mp4 --adapter FILE[:STRENGTH]`: the
hypernetwork's adapter for that video goes on top (`--no-hypernet` leaves it out).

Several videos (files, frame folders, or folders of them): a fifth of them (`--val-videos`) is
held out, or the videos given by --val-hr / --val-lr (better when the videos overlap in content:
hold out other episodes, other levels); the adapter is scored on them every `--val-every` steps,
and the best one is saved (the base itself when nothing helps). Clips are read from disk a batch at a time, so memory does not
grow with the number of videos. With --hr alone the LR frames are made by MATLAB bicubic (the BI
protocol); --lr gives the real LR videos, paired with --hr in order. `--merge-steps` also learns,
on the same training videos, how the adapter and the hypernetwork's per-video adapter add up
(one weight per output channel, ZipLoRA-style); `specialise` uses it when the hypernetwork is on.

The base is the one inside the stage-2 checkpoint, so the adapter's fingerprint matches what
`specialise` loads. Every check a user can fail runs before a training step: the options and
the output path first, then (once the checkpoint gives the scale) every video's size and length.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hypernet.adaptation import (
    VideoPair,
    clip_starts,
    fit_adapters,
    fit_merge,
    psnr_on,
    random_clips,
)
from hypernet.cli_checks import (
    InputError,
    check_frame_size,
    check_not_an_input,
    check_output,
    check_reads_videos,
    error_line,
    output_folder,
    progress_bar,
    signals_end_in_one_line,
    warnings_as_lines,
)
from hypernet.data import video_io
from hypernet.data.datasets import spread_indices
from hypernet.models.lora import save_adapters, stack_under_hypernet
from hypernet.runs import DEFAULT_CHECKPOINT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hypernet.finetune",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--hr",
        type=Path,
        nargs="+",
        help="HR videos, frame folders or folders of them: supervised fine-tuning",
    )
    parser.add_argument(
        "--lr", type=Path, nargs="+", help="the LR videos (paired with --hr in order; alone: self-supervised)"
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="adapter file to write (.safetensors)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help=f"stage-2 checkpoint whose base and LoRA targets are used (default: {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--clips", type=int, default=4, help="clips per step (one video: spread over it)")
    parser.add_argument("--clip-len", type=int, default=5, help="consecutive frames per clip")
    parser.add_argument(
        "--val-videos",
        type=int,
        help="videos held out to score the adapter and keep its best (default: a fifth of 2 or more, else 0)",
    )
    parser.add_argument(
        "--val-hr", type=Path, nargs="+", help="held-out HR videos given explicitly (instead of --val-videos)"
    )
    parser.add_argument(
        "--val-lr", type=Path, nargs="+", help="their LR videos (paired with --val-hr in order)"
    )
    parser.add_argument(
        "--val-every", type=int, default=25, help="steps between scores on the held-out videos"
    )
    parser.add_argument("--val-clips", type=int, default=2, help="clips of each held-out video scored")
    parser.add_argument(
        "--merge-steps",
        type=int,
        default=0,
        help="then learn the merge with the hypernetwork's adapter on top, for this many steps (needs --hr)",
    )
    parser.add_argument(
        "--init-from-hypernet",
        action="store_true",
        help="one video: start from the hypernetwork's prediction",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        with (
            signals_end_in_one_line(),
            warnings_as_lines(),
        ):  # Ctrl-C or a kill while saving leaves no temporary file behind
            summary = run_finetune(args)
    except (ValueError, OSError) as e:  # bad input, output or option: one line, no traceback
        print(error_line(e), file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def check_args(args: argparse.Namespace) -> None:
    """The options alone, and the output path (its folder created and proven writable), before
    any video is read: a bad one fails now, not after the training steps."""
    if args.lr is None and args.hr is None:
        raise ValueError("give --hr HR_VIDEO (supervised), --lr LR_VIDEO (self-supervised), or both")
    for option, value in (
        ("--steps", args.steps),
        ("--clips", args.clips),
        ("--clip-len", args.clip_len),
        ("--val-every", args.val_every),
        ("--val-clips", args.val_clips),
    ):
        if value < 1:
            raise ValueError(f"{option} {value}: must be >= 1")
    if args.val_videos is not None and args.val_videos < 0:
        raise ValueError(f"--val-videos {args.val_videos}: must be >= 0")
    if (args.val_hr or args.val_lr) and args.val_videos is not None:
        raise ValueError(
            "--val-videos holds videos out of --hr; --val-hr / --val-lr name them: give one or the other"
        )
    explicit = bool(args.val_hr or args.val_lr)
    if explicit and (bool(args.val_hr) != bool(args.hr) or bool(args.val_lr) != bool(args.lr)):
        raise ValueError(
            "the held-out videos come as the training ones do: --val-hr with --hr, --val-lr with --lr"
        )
    if args.merge_steps < 0:
        raise ValueError(f"--merge-steps {args.merge_steps}: must be >= 0 (0: no learned merge)")
    if args.merge_steps and args.hr is None:
        raise ValueError("--merge-steps learns from HR frames: give --hr")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"--learning-rate {args.learning_rate:g}: must be a number > 0")
    inputs = {"--checkpoint": args.checkpoint}
    for option in ("--lr", "--hr", "--val-lr", "--val-hr"):
        inputs |= {f"{option} {p}": p for p in getattr(args, option[2:].replace("-", "_")) or []}
    check_not_an_input(args.output, "-o/--output", inputs)
    check_output(args.output, option="-o/--output", suffix=".safetensors")


def check_pair(lr: Path | None, hr: Path | None, *, scale: int) -> int:
    """One video of the set is readable and whole, its LR frames large enough for the model (the
    `specialise` minimum), an LR / HR pair one video (same length, HR `scale` x the LR size),
    and HR alone divisible by the scale. Returns its number of frames."""
    hr_info = None if hr is None else video_io.probe(hr, verify=True)
    lr_info = None if lr is None else video_io.probe(lr, verify=True)
    if lr_info is not None:
        check_frame_size(lr, lr_info.height, lr_info.width)
    else:
        check_frame_size(hr, hr_info.height, hr_info.width, scale=scale)
        if hr_info.height % scale or hr_info.width % scale:
            raise ValueError(
                f"--hr {hr} is {hr_info.width}x{hr_info.height} (WxH): both sides must be divisible by "
                f"the scale {scale} to make its LR frames; crop it, or give its LR video with --lr"
            )
    if hr_info is None or lr_info is None:
        return (hr_info or lr_info).num_frames
    if hr_info.num_frames != lr_info.num_frames:
        raise ValueError(
            f"--hr {hr} has {hr_info.num_frames} frames but --lr {lr} has {lr_info.num_frames}: "
            "they must be the same video, frame for frame"
        )
    if (hr_info.height, hr_info.width) != (lr_info.height * scale, lr_info.width * scale):
        raise ValueError(
            f"--hr {hr} is {hr_info.width}x{hr_info.height} (WxH) but --lr {lr} is "
            f"{lr_info.width}x{lr_info.height}: the HR frames must be x{scale} the LR size "
            f"({lr_info.width * scale}x{lr_info.height * scale})"
        )
    return hr_info.num_frames


def video_set(
    hr_paths: list[Path] | None, lr_paths: list[Path] | None, *, scale: int, prefix: str = ""
) -> list[VideoPair]:
    """The videos named by --hr / --lr (or --val-hr / --val-lr: `prefix` "val-"), folders
    expanded, paired and checked."""
    hr = None if hr_paths is None else video_io.expand_videos(hr_paths, option=f"--{prefix}hr")
    lr = None if lr_paths is None else video_io.expand_videos(lr_paths, option=f"--{prefix}lr")
    if hr is not None and lr is not None and len(hr) != len(lr):
        raise ValueError(
            f"--{prefix}hr names {len(hr)} videos but --{prefix}lr {len(lr)}: they pair up in order, "
            "one LR video for each HR one"
        )
    count = len(hr if hr is not None else lr)
    pairs = []
    for i in range(count):
        h, low = (None if hr is None else hr[i]), (None if lr is None else lr[i])
        pairs.append(VideoPair(hr=h, lr=low, num_frames=check_pair(low, h, scale=scale)))
    return pairs


def split_videos(videos: list[VideoPair], val_videos: int | None) -> tuple[list[VideoPair], list[VideoPair]]:
    """(training, held-out): the held-out videos spread evenly over the list."""
    n = len(videos)
    count = (n // 5 if n >= 5 else int(n >= 2)) if val_videos is None else val_videos
    if count >= n:
        raise ValueError(f"--val-videos {count}: leaves no training video of the {n} given; hold out fewer")
    held = set(spread_indices(n, count, None)) if count else set()
    return [v for i, v in enumerate(videos) if i not in held], [v for i, v in enumerate(videos) if i in held]


def run_finetune(args: argparse.Namespace) -> dict:
    from hypernet.systems.hyper_lora import load_hypernet

    check_args(args)
    system = load_hypernet(args.checkpoint)
    if args.init_from_hypernet or args.merge_steps:
        option = "--init-from-hypernet" if args.init_from_hypernet else "--merge-steps"
        check_reads_videos(system, args.checkpoint, needed_by=option)
    base, spec, scale = system.base, system.spec, system.scale
    videos = video_set(args.hr, args.lr, scale=scale)
    if args.val_hr or args.val_lr:
        train, held_out = videos, video_set(args.val_hr, args.val_lr, scale=scale, prefix="val-")
    else:
        train, held_out = split_videos(videos, args.val_videos)
    if args.init_from_hypernet and len(videos) > 1:
        raise ValueError("--init-from-hypernet starts from one video's prediction: give one video")
    supervised = train[0].hr is not None
    sizes = {"clips": args.val_clips, "clip_len": args.clip_len, "scale": scale}

    def score(adapters) -> float:
        return psnr_on(base, held_out, lambda _: (spec, adapters), **sizes)

    init = None
    if args.init_from_hypernet:
        init = video_adapters(system, train[0], checkpoint=args.checkpoint)
    batches = random_clips(train, clips=args.clips, clip_len=args.clip_len, scale=scale, seed=args.seed)
    started = time.perf_counter()
    summary: dict = {"adapter": str(args.output), "videos": len(train), "held_out": len(held_out)}
    with progress_bar(not args.no_progress, status=True) as bar:
        adapters, history = fit_adapters(
            base,
            spec,
            (clips for _, clips in batches),
            steps=args.steps,
            learning_rate=args.learning_rate,
            init=init,
            seed=args.seed,
            **watched(bar, "fitting the adapter", args.steps, score=score if held_out else None, args=args),
        )
        seconds = time.perf_counter() - started
        if history:
            best = max(history, key=lambda h: h["score"])
            summary |= {
                "val_psnr_base": round(history[0]["score"], 3),
                "val_psnr": round(best["score"], 3),
                "best_step": int(best["step"]),
            }
        columns = None
        if args.merge_steps:
            columns, merge_summary = learn_merge(system, adapters, train, held_out, args, bar=bar)
            summary |= merge_summary
    metadata = {
        "method": "supervised" if supervised else "self-supervised",
        "steps": str(args.steps),
        "videos": str(len(train)),
        "held_out": str(len(held_out)),
        **({"best_step": str(summary["best_step"])} if "best_step" in summary else {}),
        "source": str(videos[0].name) if len(videos) == 1 else ", ".join(str(p) for p in args.hr or args.lr),
    }
    check_converged(adapters, columns, args)
    with output_folder(args.output):  # made only now that the adapter exists
        save_adapters(
            args.output, spec, adapters, base=base, video=0, extra_metadata=metadata, merge_columns=columns
        )
    one = train[0]  # a single video is fitted on these clips at every step (random_clips)
    frames = (
        sum(map(len, clip_starts(one.num_frames, args.clip_len, args.clips))) if len(train) == 1 else None
    )
    return (
        summary
        | {"steps": args.steps, "seconds": round(seconds, 2), "mode": metadata["method"]}
        | ({"frames": frames} if frames else {})
    )


def watched(bar, description: str, steps: int, *, score, args: argparse.Namespace) -> dict[str, Any]:
    """The options of a fit (`fit_adapters`, `fit_merge`) that show its loss on a progress-bar task
    of `steps` steps and, given `score` (held-out videos), keep its best every --val-every steps."""
    task = bar.add_task(description, total=steps, status="")
    return {
        "validate": score,
        "validate_every": args.val_every,
        "on_step": lambda step, loss: bar.update(task, completed=step, status=f"loss {loss:.4f}"),
    }


def check_converged(adapters: dict, columns: dict | None, args: argparse.Namespace) -> None:
    """Refuse to save a fit that diverged (NaN or inf in the adapter or its merge): every tool
    would refuse the file, after a run that reported success."""
    if not all(torch.isfinite(t).all() for pair in adapters.values() for t in pair):
        raise InputError(
            f"--learning-rate {args.learning_rate:g}: the fit diverged (the adapter holds NaN or inf values); "
            f"nothing was written to {args.output}: lower the learning rate"
        )
    if columns and not all(torch.isfinite(c).all() for c in columns.values()):
        raise InputError(
            f"--merge-steps {args.merge_steps}: the learned merge diverged (NaN or inf values); nothing was "
            f"written to {args.output}: fit again without --merge-steps"
        )


def video_adapters(system, video: VideoPair, *, checkpoint: Path):
    """The hypernetwork's adapters for one video, read as it trained (its checkpoint's count of
    frames spread over the video)."""
    from hypernet.systems.hyper_lora import trained_context_frames

    count = trained_context_frames(system, None, option="data.context_frames", checkpoint=checkpoint)
    read = lambda indices: video.lr_frames(indices, scale=system.scale)  # noqa: E731
    return system.adapters_for_video(read, num_frames=video.num_frames, context_frames=count)


def learn_merge(system, adapters, train, held_out, args, *, bar) -> tuple[dict, dict]:
    """The per-column merge of the fitted adapter with the hypernetwork's, learned on the
    training videos (the hypernet's adapter predicted for each from its LR video) and kept at
    its best on the held-out ones, the naive sum among the candidates."""
    base, spec, scale = system.base, system.spec, system.scale
    task = bar.add_task("reading the videos (hypernet)", total=len(train) + len(held_out), status="")

    def predict(video: VideoPair):
        predicted = video_adapters(system, video, checkpoint=args.checkpoint)
        bar.advance(task)
        return predicted

    train_predicted = [predict(v) for v in train]
    held_predicted = [predict(v) for v in held_out]
    sizes = {"clips": args.val_clips, "clip_len": args.clip_len, "scale": scale}

    def score(columns) -> float:
        def merged(i):
            return stack_under_hypernet(spec, adapters, system.spec, held_predicted[i], columns=columns)

        return psnr_on(base, held_out, merged, **sizes)

    columns, history = fit_merge(
        base,
        spec,
        adapters,
        system.spec,
        train_predicted,
        train,
        steps=args.merge_steps,
        clips=args.clips,
        clip_len=args.clip_len,
        scale=scale,
        seed=args.seed,
        **watched(bar, "learning the merge", args.merge_steps, score=score if held_out else None, args=args),
    )
    summary = {}
    if history:
        summary = {
            "val_psnr_naive_merge": round(history[0]["score"], 3),
            "val_psnr_learned_merge": round(max(h["score"] for h in history), 3),
        }
    return columns, summary


if __name__ == "__main__":
    sys.exit(main())
