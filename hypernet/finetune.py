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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hypernet.data import video_io
from hypernet.data.datasets import spread_indices
from hypernet.data.degrade import bicubic_downsample
from hypernet.models.lora import Adapters, LoRASpec, init_adapters, save_adapters
from hypernet.specialise import to_tensor
from hypernet.systems.common import adapted_sr, charbonnier, self_supervised_loss

DEFAULT_CHECKPOINT = Path("outputs/quickstart/hyper/checkpoints/last.ckpt")


def finetune_adapters(
    base: nn.Module,
    spec: LoRASpec,
    lr: torch.Tensor,
    *,
    hr: torch.Tensor | None = None,
    steps: int = 100,
    learning_rate: float = 1e-3,
    init: Adapters | None = None,
    seed: int = 0,
) -> Adapters:
    """Adapters for ONE video fitted with Adam: lr (B, T, C, h, w) holds B clips of that video,
    hr (B, T, C, sh, sw) or None.

    With hr: the SR loss on those frames (the oracle: it sees the answer). Without: the
    self-supervised loss on the LR frames alone. The base stays frozen; only A and B move."""
    if lr.ndim != 5:
        raise ValueError(f"finetune_adapters takes clips (B, T, C, h, w), got {tuple(lr.shape)}")
    generator = torch.Generator().manual_seed(seed)
    start = (
        init if init is not None else init_adapters(spec, num_videos=1, generator=generator, dtype=lr.dtype)
    )
    leaves = {
        k: (a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
        for k, (a, b) in start.items()
    }
    optimizer = torch.optim.Adam([t for pair in leaves.values() for t in pair], lr=learning_rate)
    for _ in range(steps):
        with torch.enable_grad():
            if hr is not None:
                loss = charbonnier(adapted_sr(base, spec, leaves, lr), hr)
            else:
                loss = self_supervised_loss(base, spec, leaves, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
    return {k: (a.detach(), b.detach()) for k, (a, b) in leaves.items()}


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
        summary = run_finetune(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def run_finetune(args: argparse.Namespace) -> dict:
    from hypernet.systems.hyper_lora import load_hypernet

    if args.lr is None and args.hr is None:
        raise ValueError("give --hr HR_VIDEO (supervised), --lr LR_VIDEO (self-supervised), or both")
    if args.output.suffix != ".safetensors":
        raise ValueError(f"-o {args.output}: adapter files end in .safetensors")
    system = load_hypernet(args.checkpoint)
    base, spec, scale = system.base, system.spec, system.scale
    source = args.hr if args.hr is not None else args.lr
    info = video_io.probe(source)
    clip_len = min(args.clip_len, info.num_frames)
    starts = spread_indices(
        info.num_frames - clip_len + 1, min(args.clips, info.num_frames - clip_len + 1), None
    )
    clips = [list(range(s, s + clip_len)) for s in starts]
    hr = load_clips(args.hr, clips) if args.hr is not None else None
    if args.lr is not None:
        lr = load_clips(args.lr, clips)
        if hr is not None and tuple(hr.shape[-2:]) != (lr.shape[-2] * scale, lr.shape[-1] * scale):
            raise ValueError(
                f"--hr {args.hr} is {tuple(hr.shape[-2:])}, not x{scale} the LR size {tuple(lr.shape[-2:])}"
            )
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
