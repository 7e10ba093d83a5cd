"""`python -m hypernet.specialise INPUT -o OUTPUT.mp4`: upscale any LR video with adapters made for it.

The inference line of docs/design.md: the whole LR video is streamed once through the hypernetwork's
encoder (memory independent of its length) to get one set of LoRA adapters, the adapters are
merged into the frozen base's weights (so each frame then costs exactly what the base costs), and
the video is streamed a second time through the specialised base and encoded to H.264 as it
goes. Nothing ever holds the whole video: memory is one chunk of frames, whatever the length.

Adapter files (`--adapter FILE[:STRENGTH]`, e.g. a domain adapter from `hypernet.finetune`) are
merged in order with the hypernetwork's adapter on top (`--no-hypernet` leaves it out), as one
adapter whose delta is their weighted sum (`lora.stack_adapters`). How strongly all of it applies
is the guard's choice (`hypernet.guard`): from the LR video alone, the strength (0 is the base
exactly) the checkpoint's learned guard predicts gains most (`hypernet.fit_guard`; without one,
or with adapter files stacked under the hypernetwork's, the strength whose output, degraded
again, reproduces the input best), and the base unless some strength beats it by the margin;
`--strength` applies a fixed one instead, `--no-guard` applies them as trained.
Every file is checked against the base before the video is read.

Why the pieces look the way they do:

- Every check a user can fail (input readable, frames large enough, output writable, options
  consistent) runs before the checkpoint is loaded or a frame is decoded, and fails as a
  ValueError naming the file; `main` turns those into one line `error: ...` and exit code 2.
  The checks that need the checkpoint follow it: adapter files against its base (their spec's
  numbers, tensors and learned merge are checked as they are read), and, once the adapters
  exist, that they leave a picture (`check_adapted_output`: a --strength of 1e9 or an altered
  file would give a black or noisy video with exit code 0). Nothing is written, no folder is
  made, before all of them passed.
- The output is written by `write_mp4`, which encodes into a hidden temporary file and renames it
  at the end: a failure or Ctrl-C leaves nothing under the output name, and the folders this
  run made for it are removed again when empty. `save_adapters` is atomic too. The adapter file
  is written as soon as the adapters are accepted (before upscaling), so a failure while
  upscaling keeps the expensive part. `main` turns SIGTERM (kill, timeout, SLURM's time limit)
  into the same unwinding as Ctrl-C, so the temporaries go with it, and either signal ends in
  one line and the shell's exit status for it (130, 143).
- No output may name an input (compared after resolving symlinks): `-o` or `--save-adapter` on
  the input video, the checkpoint or the adapter file would destroy it.
- A file cut short (an interrupted download) would otherwise decode into a shorter video without
  complaint; the input is read once by `probe(verify=True)` to compare its frames with what its
  container announces, before any work (`--allow-truncated` accepts it with a warning).
- Chunks are upscaled with `overlap` frames of context on each side (`upscale.upscale_frames`):
  exact for a sliding-window base whose window radius is at most `overlap`, approximate at
  chunk boundaries for a recurrent one (a larger `chunk_size` makes them rarer).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hypernet.adaptation import clip_starts
from hypernet.adapter_stack import (
    SAMPLE_FRAMES,
    AdapterFile,
    check_adapted_output,
    stack_files,
    stack_parts,
    stack_plan,
)
from hypernet.cli_checks import (
    InputError,
    check_device,
    check_frame_size,
    check_not_an_input,
    check_output,
    check_outputs_differ,
    check_reads_videos,
    error_line,
    output_folder,
    progress_bar,
    signals_end_in_one_line,
    warnings_as_lines,
)
from hypernet.data.video_io import (
    VideoInfo,
    iter_chunks,
    probe,
    read_frames,
    read_video,
    to_tensor,
    write_mp4,
)
from hypernet.guard import (
    GUARD_CLIP_LEN,
    GUARD_CLIPS,
    GUARD_MARGIN_DB,
    GuardChoice,
    check_margin,
    choose_strength,
)
from hypernet.memory import peak_rss_mib
from hypernet.models.lora import (
    Adapters,
    LoRASpec,
    check_strength,
    merge_adapters,
    save_adapters,
    scale_adapters,
)
from hypernet.runs import DEFAULT_CHECKPOINT
from hypernet.upscale import upscale_frames

MODES = ("hypernet", "adapter", "adapter+hypernet", "base-only")
MERGES = ("learned", "naive")


# ----------------------------------------------------------------------------------------------
# progress


def _counted(chunks: Iterable[np.ndarray], advance) -> Iterator[np.ndarray]:
    """Pass chunks through, telling the progress bar how many frames went by."""
    for chunk in chunks:
        yield chunk
        advance(len(chunk))


# ----------------------------------------------------------------------------------------------
# checks before any heavy work


def check_input(
    path: str | os.PathLike, *, fps: float | None = None, allow_truncated: bool = False
) -> VideoInfo:
    """Probe the input (VideoReadError, a ValueError naming the file, when it is unreadable,
    empty or cut short) and check that its frames are large enough and it has a frame rate. The
    file is demuxed once (no decoding) so that a truncated file fails now, not after the
    adapters were made; `allow_truncated` accepts it with a warning, keeping the frames there are."""
    info = probe(path, fps=fps, verify=True, allow_truncated=allow_truncated)
    check_frame_size(path, info.height, info.width)
    if not info.fps > 0:
        raise InputError(f"{path}: the file stores no frame rate; give one with --fps")
    return info


def parse_adapter(text: str | os.PathLike | tuple) -> tuple[Path, float]:
    """An --adapter value: FILE or FILE:STRENGTH (a name ending in .safetensors is a file
    whole, so a ':' inside it is not read as a strength). A (path, strength) pair passes."""
    if isinstance(text, tuple):
        path, strength = text
        return Path(path), check_strength(strength, option=f"--adapter {path}")
    text = str(text)
    if text.lower().endswith(".safetensors") or ":" not in text:
        return Path(text), 1.0
    path, _, value = text.rpartition(":")
    try:
        strength = float(value)
    except ValueError:
        raise InputError(
            f"--adapter {text}: the strength after ':' must be a number >= 0 (e.g. {path}:0.5), got {value!r}"
        ) from None
    return Path(path), check_strength(strength, option=f"--adapter {text}")


def _check_options(
    *,
    adapters: list[tuple[Path, float]],
    hypernet: bool,
    strength: float | None,
    guard: bool,
    guard_margin: float | None,
    merge: str,
    save_adapter: Path | None,
    base_only: bool,
    chunk_size: int,
    context_frames: int,
    overlap: int,
    crf: int,
    fps: float | None = None,
    device: str = "cpu",
) -> None:
    if base_only and adapters:
        raise InputError("--base-only and --adapter exclude each other: choose one")
    if base_only and save_adapter is not None:
        raise InputError("--base-only makes no adapters, so there is nothing to --save-adapter")
    if strength is not None:
        check_strength(strength, option="--strength")
    if base_only and strength is not None:
        raise InputError("--base-only applies no adapter, so there is nothing to give a --strength")
    if strength is not None and not guard:
        raise InputError(
            "--no-guard and --strength exclude each other: --strength applies that strength without the "
            "guard; --no-guard applies the adapters as trained (strength 1); give one"
        )
    if guard_margin is not None:
        check_margin(guard_margin)
    if not hypernet and not adapters:
        raise InputError("--no-hypernet leaves no adapter: give --adapter FILE, or use --base-only")
    if not hypernet and save_adapter is not None:
        raise InputError("--save-adapter saves the hypernetwork's adapter, which --no-hypernet leaves out")
    if merge not in MERGES:
        raise InputError(f"--merge {merge}: choose one of {', '.join(MERGES)}")
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1 frame, got {chunk_size}")
    if context_frames is not None and context_frames < 1:
        raise InputError(f"--context-frames must be >= 1 frame, got {context_frames}")
    if overlap < 0:
        raise InputError(f"--overlap must be >= 0 frames, got {overlap}")
    if not 0 <= crf <= 51:
        raise InputError(f"--crf must be in 0..51 (0 = lossless, 18 ~ visually lossless), got {crf}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise InputError(f"--fps {fps:g}: the frame rate must be > 0 frames per second")
    if save_adapter is not None and save_adapter.suffix.lower() != ".safetensors":
        raise InputError(f"--save-adapter {save_adapter}: adapter files end in .safetensors")
    for path, _ in adapters:
        if path.is_dir():
            raise InputError(
                f"--adapter {path}: is a folder, not an adapter file; give the .safetensors file"
            )
        if not path.is_file():
            raise InputError(
                f"--adapter {path}: no such file (make one with --save-adapter or hypernet.finetune)"
            )
    check_device(device)


# ----------------------------------------------------------------------------------------------
# reading the video (adapters, the sample the stack is checked on)


def predict_adapters(
    system: nn.Module,
    input_path: str | os.PathLike,
    *,
    num_frames: int,
    context_frames: int,
    device: torch.device | str = "cpu",
    allow_truncated: bool = False,
) -> Adapters:
    """The hypernetwork's adapters for the video, read as it trained: `context_frames` frames
    spread over the whole video (decoded once, only those frames kept), with their times."""

    def read(indices: list[int]) -> torch.Tensor:
        return to_tensor(read_frames(input_path, indices, allow_truncated=allow_truncated), device=device)

    return system.adapters_for_video(read, num_frames=num_frames, context_frames=context_frames)


def guard_clips(
    input_path: str | os.PathLike, num_frames: int, *, device: torch.device | str, allow_truncated: bool
) -> torch.Tensor:
    """The LR clips the guard checks the adapters on: GUARD_CLIPS clips of GUARD_CLIP_LEN
    consecutive frames spread over the video, (B, T, 3, h, w)."""
    clips = clip_starts(num_frames, GUARD_CLIP_LEN, GUARD_CLIPS)
    frames = to_tensor(
        read_frames(input_path, [i for clip in clips for i in clip], allow_truncated=allow_truncated),
        device=device,
    )
    return frames.view(len(clips), len(clips[0]), *frames.shape[2:])


def first_frames(
    input_path: str | os.PathLike, count: int, *, device: torch.device | str, allow_truncated: bool
) -> torch.Tensor:
    """The video's first `count` frames (fewer in a shorter video) as (1, T, 3, h, w)."""
    return to_tensor(read_video(input_path, count=count, allow_truncated=allow_truncated), device=device)


# ----------------------------------------------------------------------------------------------
# the whole job


def specialise(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT,
    adapters: Iterable[str | os.PathLike | tuple] = (),
    hypernet: bool = True,
    strength: float | None = None,
    guard: bool = True,
    guard_margin: float | None = None,
    merge: str = "learned",
    save_adapter: str | os.PathLike | None = None,
    base_only: bool = False,
    chunk_size: int = 32,
    context_frames: int | None = None,
    overlap: int = 2,
    crf: int = 18,
    fps: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    allow_truncated: bool = False,
) -> dict[str, Any]:
    """Upscale `input_path` into `output_path` (an mp4) with the stage-2 `checkpoint`'s base,
    specialised by the adapter files `adapters` (FILE or FILE:STRENGTH, merged in order) with
    the adapter the hypernetwork predicts for this video on top (`hypernet`), everything at the
    strength the guard chooses from the LR video (`guard`, `guard_margin`; hypernet.guard), or at
    `strength` (0: the base exactly) when one is given, or as trained with guard=False; or by
    none (`base_only`). `merge` says how a domain
    adapter holding a learned merge adds to the hypernetwork's. Returns the figures of the run
    as a flat dict. `allow_truncated` upscales the frames there are of a file cut short, with a
    TruncatedVideoWarning, instead of refusing it."""
    started = time.perf_counter()
    adapters = [parse_adapter(a) for a in adapters]
    save_adapter = None if save_adapter is None else Path(save_adapter)
    inputs = {"the input video": input_path, "--checkpoint": checkpoint}
    inputs |= {f"--adapter {path}": path for path, _ in adapters}
    check_not_an_input(output_path, "-o/--output", inputs)
    check_not_an_input(save_adapter, "--save-adapter", inputs)
    check_outputs_differ({"-o/--output": output_path, "--save-adapter": save_adapter})
    _check_options(
        adapters=adapters,
        hypernet=hypernet,
        strength=strength,
        guard=guard,
        guard_margin=guard_margin,
        merge=merge,
        save_adapter=save_adapter,
        base_only=base_only,
        chunk_size=chunk_size,
        context_frames=context_frames,
        overlap=overlap,
        crf=crf,
        fps=fps,
        device=device,
    )
    info = check_input(input_path, fps=fps, allow_truncated=allow_truncated)
    output_path = check_output(output_path)
    if save_adapter is not None:
        check_output(save_adapter, option="--save-adapter", suffix=None)

    from hypernet.systems.hyper_lora import (  # Lightning: slow to import, so only now
        load_hypernet,
        trained_context_frames,
    )

    system = load_hypernet(checkpoint, map_location=device)
    if hypernet and not base_only:
        check_reads_videos(system, checkpoint, needed_by="specialise (or pass --no-hypernet --adapter FILE)")
        context_frames = trained_context_frames(
            system, context_frames, option="--context-frames", checkpoint=checkpoint
        )
    base, scale = system.base, system.scale
    # a sliding-window base needs its window radius as context to be exact at chunk boundaries
    overlap = max(overlap, getattr(base, "num_frames", 1) // 2)

    with progress_bar(progress) as bar:
        files = [] if base_only else [AdapterFile(p, s, base=base, device=device) for p, s in adapters]
        if files:  # two files that cannot be summed fail now, before the video is read
            stack_files(files, None)
        predicted: tuple[LoRASpec, Adapters] | None = None
        if hypernet and not base_only:
            task = bar.add_task(f"reading {context_frames} frames across the video (adapters)", total=1)
            predicted = (
                system.spec,
                predict_adapters(
                    system,
                    input_path,
                    num_frames=info.num_frames,
                    context_frames=context_frames,
                    device=device,
                    allow_truncated=allow_truncated,
                ),
            )
            bar.advance(task)
        chosen: GuardChoice | None = None
        fixed = 1.0 if strength is None else strength  # the guard chooses below the trained strength
        plan = None if base_only else stack_plan(files, predicted, strength=fixed, merge=merge)
        if plan is not None:  # the adapters leave a picture (at full strength, before the guard)
            sample = first_frames(
                input_path, min(chunk_size, SAMPLE_FRAMES), device=device, allow_truncated=allow_truncated
            )
            check_adapted_output(base, sample, plan, strength=fixed, input_path=input_path)
        if plan is not None and guard and strength is None:
            task = bar.add_task("choosing the adapters' strength from the LR video (guard)", total=1)
            clips = guard_clips(input_path, info.num_frames, device=device, allow_truncated=allow_truncated)
            # the learned guard knows the hypernetwork's adapters alone, not a stack with files
            learned = system.learned_guard if predicted is not None and not files else None
            chosen = choose_strength(base, *stack_parts(*plan), clips, margin=guard_margin, learned=learned)
            plan = stack_plan(files, predicted, strength=chosen.strength, merge=merge)
            bar.advance(task)
        mode = (
            "base-only"
            if base_only
            else "+".join((["adapter"] if files else []) + (["hypernet"] if predicted else []))
        )
        # every input accepted: only now are the output folders made (removed again, if still
        # empty, when the run fails)
        with contextlib.ExitStack() as folders:
            folders.enter_context(output_folder(output_path))
            if save_adapter is not None and predicted is not None:
                folders.enter_context(output_folder(save_adapter, option="--save-adapter"))
                spec, adapters = predicted  # before merging into the base; as the guard applies them
                made_by = {}
                if chosen is not None:
                    adapters = scale_adapters(adapters, chosen.strength)
                    made_by = {"strength": f"{chosen.strength:g}", "guard": chosen.reason}
                save_adapters(save_adapter, spec, adapters, base=base, video=0, extra_metadata=made_by)
            if plan is not None:
                merge_adapters(base, *stack_parts(*plan), video=0)

            task = bar.add_task("upscaling", total=info.num_frames)
            chunks = iter_chunks(input_path, chunk_size=chunk_size, allow_truncated=allow_truncated)
            chunks = _counted(chunks, lambda n: bar.advance(task, n))
            frames = write_mp4(
                output_path,
                upscale_frames(base, chunks, overlap=overlap, device=device),
                fps=info.fps,
                crf=crf,
            )
    return {
        "input": str(input_path),
        "output": str(output_path),
        "mode": mode,
        "strength": None if base_only else (chosen.strength if chosen is not None else fixed),
        "guard": None if chosen is None else chosen.reason,
        "frames": frames,
        "input_height": info.height,
        "input_width": info.width,
        "output_height": info.height * scale,
        "output_width": info.width * scale,
        "fps": info.fps,
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_mib(),
    }


# ----------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hypernet.specialise",
        description=(
            "Upscale an LR video file with the base network specialised to it: the hypernetwork "
            "reads the whole video once, makes LoRA adapters for it, merges them into the base, "
            "and the video is upscaled and encoded to mp4 in a stream (constant memory)."
        ),
    )
    parser.add_argument("input", type=Path, help="LR video file (anything FFmpeg reads) or frame folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="upscaled video, .mp4")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help=f"stage-2 (hypernet) checkpoint; default {DEFAULT_CHECKPOINT}, what `make quickstart` "
        "trains (relative to the current folder)",
    )
    parser.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="apply this adapter file (.safetensors, e.g. a domain adapter from hypernet.finetune) at "
        "STRENGTH (default 1); repeat to stack several, merged in order. The hypernetwork's adapter "
        "for the video goes on top unless --no-hypernet",
    )
    parser.add_argument(
        "--no-hypernet",
        dest="hypernet",
        action="store_false",
        help="leave out the hypernetwork's adapter: apply the --adapter files alone",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="apply every adapter's weight change at this fixed strength instead of the guard's "
        "choice: 0 is the base exactly, 1 as trained, above 1 extrapolates",
    )
    parser.add_argument(
        "--no-guard",
        dest="guard",
        action="store_false",
        help="apply the adapters as trained (strength 1), without the guard that otherwise chooses "
        "their strength from the LR video alone and keeps the base where they would hurt",
    )
    parser.add_argument(
        "--guard-margin",
        type=float,
        default=None,
        metavar="DB",
        help="how much the guard's evidence (dB) must favour a strength over the base: the learned "
        "guard's predicted PSNR-Y gain (default: the margin it was fitted with), or without one how "
        "much better the adapted output, degraded again, reproduces the input than the base's "
        f"(default {GUARD_MARGIN_DB:g})",
    )
    parser.add_argument(
        "--merge",
        choices=MERGES,
        default="learned",
        help="how an adapter file holding a learned merge (finetune --merge-steps) adds to the "
        "hypernetwork's adapter: its learned per-channel weights (default) or the plain sum",
    )
    parser.add_argument(
        "--base-only", action="store_true", help="upscale with the base alone, no adapters (for comparison)"
    )
    parser.add_argument(
        "--save-adapter",
        type=Path,
        help="also save the hypernetwork's adapter to this .safetensors file, at the strength the guard chose",
    )
    parser.add_argument("--chunk-size", type=int, default=32, help="frames decoded and upscaled at a time")
    parser.add_argument(
        "--context-frames",
        type=int,
        default=None,
        help="frames spread over the video that the hypernetwork reads (default: as many as it trained on)",
    )
    parser.add_argument(
        "--overlap", type=int, default=2, help="extra frames of context on each side of a chunk"
    )
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality, 0 (lossless) .. 51")
    parser.add_argument("--fps", type=float, help="frame rate of the output (default: the input's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument(
        "--allow-truncated",
        action="store_true",
        help="upscale the frames there are of an input cut short (a warning, not an error)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    try:
        with signals_end_in_one_line(), warnings_as_lines():
            figures = specialise(
                args.input,
                args.output,
                checkpoint=args.checkpoint,
                adapters=args.adapters,
                hypernet=args.hypernet,
                strength=args.strength,
                guard=args.guard,
                guard_margin=args.guard_margin,
                merge=args.merge,
                save_adapter=args.save_adapter,
                base_only=args.base_only,
                chunk_size=args.chunk_size,
                context_frames=args.context_frames,
                overlap=args.overlap,
                crf=args.crf,
                fps=args.fps,
                device=args.device,
                progress=not args.no_progress,
                allow_truncated=args.allow_truncated,
            )
    except (ValueError, OSError) as e:  # bad input, output or option: one line, no traceback
        print(error_line(e), file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"{figures['output']}: {figures['frames']} frames, "
        f"{figures['input_width']}x{figures['input_height']} -> "
        f"{figures['output_width']}x{figures['output_height']} at {figures['fps']:g} fps "
        f"({figures['mode']}), {figures['seconds']:.1f} s, peak memory {figures['peak_rss_mib']:.0f} MiB"
    )
    if figures["guard"] is not None:
        print(f"guard: {figures['guard']}")
    if args.save_adapter is not None:
        print(f"adapters: {args.save_adapter}")
    return figures


def cli() -> None:
    """Console entry point: main() returns its figures, which sys.exit would take for an error."""
    main()


if __name__ == "__main__":
    main()
