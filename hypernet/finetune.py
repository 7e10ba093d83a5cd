"""Per-video LoRA fine-tuning: the baselines the hypernetwork is measured against, and a tool
of its own where ground truth exists (a game rendered offline at high resolution, the later,
better-filmed seasons of a series).

    python -m hypernet.finetune --hr HR.mp4 -o adapter.safetensors            # supervised (oracle)
    python -m hypernet.finetune --lr LR.mp4 -o adapter.safetensors            # self-supervised (ZSSR-style)
    python -m hypernet.finetune --lr LR.mp4 --hr HR.mp4 --init-from-hypernet ...

The adapter file is applied with `python -m hypernet.specialise LR.mp4 -o out.mp4 --adapter FILE`.
With --hr alone, the LR video is made from it by MATLAB bicubic (the BI protocol). The base is the
one inside the stage-2 checkpoint (default: the one `make quickstart` trains), so the adapter's
fingerprint matches what `specialise` loads.

Every check a user can fail runs before a training step, with the checks `specialise` uses: the
options and the output path first, then (once the checkpoint gives the scale) the videos' sizes
and lengths.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from hypernet.cli_checks import check_frame_size, check_not_an_input, check_output, sigterm_unwinds
from hypernet.data import video_io
from hypernet.data.datasets import spread_indices
from hypernet.data.degrade import bicubic_downsample
from hypernet.data.video_io import to_tensor
from hypernet.models.lora import save_adapters
from hypernet.runs import DEFAULT_CHECKPOINT
from hypernet.systems.per_video import finetune_adapters


def load_clips(path: Path, clips: list[list[int]]) -> torch.Tensor:
    """Clips of frame indices of a video as (num_clips, clip_len, 3, H, W) float in [0, 1]."""
    frames = to_tensor(video_io.read_frames(path, [i for clip in clips for i in clip]))[0]
    return frames.view(len(clips), len(clips[0]), *frames.shape[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lr", type=Path, help="the LR video (self-supervised when --hr is not given)")
    parser.add_argument("--hr", type=Path, help="the HR video: supervised fine-tuning")
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
    parser.add_argument("--clips", type=int, default=4, help="clips spread over the video to fit on")
    parser.add_argument("--clip-len", type=int, default=5, help="consecutive frames per clip")
    parser.add_argument(
        "--init-from-hypernet", action="store_true", help="start from the hypernetwork's prediction"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        with sigterm_unwinds():  # a kill while saving leaves no temporary file behind
            summary = run_finetune(args)
    except (ValueError, OSError) as e:  # bad input, output or option: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def check_args(args: argparse.Namespace) -> None:
    """The options alone, and the output path (its folder created and proven writable), before
    any video is read: a bad one fails now, not after the training steps."""
    if args.lr is None and args.hr is None:
        raise ValueError("give --hr HR_VIDEO (supervised), --lr LR_VIDEO (self-supervised), or both")
    for option, value in (("--steps", args.steps), ("--clips", args.clips), ("--clip-len", args.clip_len)):
        if value < 1:
            raise ValueError(f"{option} {value}: must be >= 1")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"--learning-rate {args.learning_rate:g}: must be a number > 0")
    inputs = {"--lr": args.lr, "--hr": args.hr, "--checkpoint": args.checkpoint}
    check_not_an_input(args.output, "-o/--output", inputs)
    check_output(args.output, option="-o/--output", suffix=".safetensors")


def check_videos(lr: Path | None, hr: Path | None, *, scale: int) -> video_io.VideoInfo:
    """The videos are readable and whole, their LR frames large enough for the model (the
    `specialise` minimum), and an LR / HR pair is one video: same length, HR `scale` x the LR
    size. Returns the probe of the video the clips are cut from (HR when given)."""
    hr_info = None if hr is None else video_io.probe(hr, verify=True)
    lr_info = None if lr is None else video_io.probe(lr, verify=True)
    if lr_info is not None:
        check_frame_size(lr, lr_info.height, lr_info.width)
    else:
        check_frame_size(hr, hr_info.height, hr_info.width, scale=scale)
    if hr_info is None or lr_info is None:
        return hr_info or lr_info
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
    return hr_info


def run_finetune(args: argparse.Namespace) -> dict:
    from hypernet.systems.hyper_lora import load_hypernet

    check_args(args)
    system = load_hypernet(args.checkpoint)
    base, spec, scale = system.base, system.spec, system.scale
    source = args.hr if args.hr is not None else args.lr
    info = check_videos(args.lr, args.hr, scale=scale)
    clip_len = min(args.clip_len, info.num_frames)
    starts = spread_indices(
        info.num_frames - clip_len + 1, min(args.clips, info.num_frames - clip_len + 1), None
    )
    clips = [list(range(s, s + clip_len)) for s in starts]
    hr = load_clips(args.hr, clips) if args.hr is not None else None
    if args.lr is not None:
        lr = load_clips(args.lr, clips)  # same length and x`scale` sizes: check_videos
    else:
        height, width = (hr.shape[-2] // scale) * scale, (hr.shape[-1] // scale) * scale
        hr = hr[..., :height, :width]
        lr = (bicubic_downsample(hr, scale).clamp(0, 1) * 255).round() / 255
    init = None
    if args.init_from_hypernet:
        video = lr.flatten(0, 1)[None]  # the fitted frames as one stream
        init = system.adapters_from_stream([video], num_frames=info.num_frames, refine_context=video)
    started = time.perf_counter()
    adapters = finetune_adapters(
        base, spec, lr, hr=hr, steps=args.steps, learning_rate=args.learning_rate, init=init, seed=args.seed
    )
    seconds = time.perf_counter() - started
    save_adapters(
        args.output,
        spec,
        adapters,
        base=base,
        video=0,
        extra_metadata={
            "method": "supervised" if hr is not None else "self-supervised",
            "steps": str(args.steps),
            "source": str(source),
        },
    )
    return {
        "adapter": str(args.output),
        "frames": len(clips) * clip_len,
        "steps": args.steps,
        "seconds": round(seconds, 2),
        "mode": "supervised" if hr is not None else "self-supervised",
    }


if __name__ == "__main__":
    sys.exit(main())
