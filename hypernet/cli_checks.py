"""What the command-line tools (specialise, finetune, adapters) share: their progress bar, and the
checks: output paths proven writable before any work (their folders created only when the tool
writes, and removed again if it fails), outputs that may not name an input, frames large enough
for the model, a device that exists, a checkpoint that can read videos, and Ctrl-C and SIGTERM
unwinding so that no temporary file stays behind, then ending in one line. Each failure is an
`InputError` (a ValueError) naming the file or option and what to do; the tools turn it into one
line `error: ...` (`error_line`) and exit code 2."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

# Smallest LR frame side, pixels. The base's 3x3 convolutions need some image around each pixel
# to mean anything, and the refine mode's self-supervised step downsamples the LR frames once
# more by the scale (x4): 8x8 becomes 2x2, the smallest image it can still upscale back.
MIN_SIZE = 8


def progress_bar(enabled: bool = True, *, status: bool = False):
    """The tools' progress bar on stderr (description, bar, done of total, time left; `status`:
    a free text field per task, e.g. the loss). Disabled, it shows nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, console=Console(stderr=True), disable=not enabled)


class InputError(ValueError):
    """A bad input, output or option of a command-line tool; the message names it and what to do."""


def check_output(
    path: str | os.PathLike, *, option: str = "-o/--output", suffix: str | None = ".mp4"
) -> Path:
    """The output path, proven writable (by writing a temporary file into its folder, or into
    the nearest folder above it that exists), so that a bad path fails now and not after an hour
    of upscaling. Nothing is created: a run refused later leaves no empty folder behind; the
    tool creates the folder with `output_folder` when it writes."""
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise InputError(f"{option} {path}: the file name must end in {suffix}")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    existing = next(a for a in (path.parent, *path.parent.parents) if a.exists())  # '/' or '.' at least
    if not existing.is_dir():
        raise InputError(f"{option} {path}: cannot be written, {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise InputError(f"{option} {path}: cannot write into the folder {existing} ({reason})") from e
    return path


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, *, option: str = "-o/--output") -> Iterator[Path]:
    """While inside: the folder of the output `path` exists. The folders this creates are
    removed again, when still empty, if the block fails (an error, Ctrl-C, SIGTERM), so that a
    failed run leaves nothing it made behind."""
    folder = Path(path).parent
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{option} {path}: cannot create the folder {folder} ({e.strerror or e})") from e
    try:
        yield folder
    except BaseException:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once symlinks and `..` are resolved, or (both
    existing) the same inode, which also catches hard links."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(
    output: str | os.PathLike | None, option: str, inputs: Mapping[str, str | os.PathLike | None]
) -> None:
    """Refuse an output path that names one of the inputs ({option: path}): writing it would
    destroy that input before (or while) it is read."""
    if output is None:
        return
    for name, path in inputs.items():
        if path is not None and same_file(output, path):
            raise InputError(
                f"{option} {output}: is the same file as {name} {path}; writing it would destroy that "
                "input: choose another name"
            )


def check_outputs_differ(outputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse two outputs ({option: path}) that name one file: the second would replace the first."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given):
        for other, other_path in given[i + 1 :]:
            if same_file(path, other_path):
                raise InputError(
                    f"{other} {other_path}: is the same file as {option} {path}; give each output its own name"
                )


def check_frame_size(path: str | os.PathLike, height: int, width: int, *, scale: int = 1) -> None:
    """LR frames (height / scale x width / scale of the video at `path`) large enough for the
    model (MIN_SIZE); `scale` > 1 where the LR video will be made from this HR one."""
    lr_height, lr_width = height // scale, width // scale
    if lr_height < MIN_SIZE or lr_width < MIN_SIZE:
        made = "" if scale == 1 else f", which makes LR frames of {lr_width}x{lr_height} at x{scale}"
        raise InputError(
            f"{path}: frames are {width}x{height} (WxH){made}, smaller than the minimum "
            f"{MIN_SIZE}x{MIN_SIZE} this model can upscale"
        )


def check_device(device: str, *, option: str = "--device") -> torch.device:
    """The torch device, refused now (not as an unreadable checkpoint later) when it does not
    exist on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"{option} {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from e
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"{option} {device}: no CUDA device is available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(
                f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0; choose one of them"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{option} {device}: no MPS device is available on this machine; use --device cpu")
    return parsed


def check_reads_videos(system: Any, checkpoint: str | os.PathLike, *, needed_by: str) -> None:
    """Refuse a stage-2 checkpoint that cannot make adapters for a real video: the
    degradation-ceiling control (hypernet.encoder.source=degradation) reads each video's true degradation
    parameters, which a real video does not come with. `needed_by` says which option needs it."""
    if system.encoder.source == "degradation":
        raise InputError(
            f"--checkpoint {checkpoint}: is the degradation-ceiling control (hypernet.encoder.source=degradation), "
            f"which reads a video's true degradation parameters instead of its frames, so it cannot make "
            f"the adapters {needed_by} needs: use a checkpoint of a blind run"
        )


def error_line(error: BaseException) -> str:
    """An error's message as the one line `error: ...` the tools print (a message from a library,
    e.g. a state_dict mismatch, may hold several lines)."""
    return "error: " + "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


# exit status of a process ended by a signal, as a shell reports it: 128 + the signal's number
SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(SIGTERM_EXIT)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside: SIGTERM raises SystemExit, so it unwinds like Ctrl-C through the `finally`
    and `except BaseException` blocks that delete temporary files (write_mp4, atomic writes),
    instead of killing the process with them on disk. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_end_in_one_line() -> Iterator[None]:
    """While inside: Ctrl-C (SIGINT) and SIGTERM unwind through the blocks that delete temporary
    files (`sigterm_unwinds`) and then end the tool with one line `error: ...` and the exit
    status a shell reports for the signal (130, 143), not Python's traceback of wherever the
    signal happened to land."""
    with sigterm_unwinds():
        try:
            yield
        except KeyboardInterrupt:
            print("error: interrupted (Ctrl-C); no partial output was left behind", file=sys.stderr)
            raise SystemExit(SIGINT_EXIT) from None
        except SystemExit as e:
            if e.code == SIGTERM_EXIT:
                print("error: terminated (SIGTERM); no partial output was left behind", file=sys.stderr)
            raise


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """While inside: the warnings a user acts on (an input cut short read with --allow-truncated,
    an option that feeds the model otherwise than it was trained) are one line `warning: ...` on
    stderr, each text shown once (every pass over a file warns again); other warnings keep
    Python's format."""
    import sys
    import warnings

    from hypernet.checkpointing import InputMismatchWarning
    from hypernet.data.video_io import TruncatedVideoWarning

    shown: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncatedVideoWarning)
        warnings.simplefilter("always", InputMismatchWarning)
        show = warnings.showwarning

        def one_line(message, category, *args, **kwargs):
            if not issubclass(category, TruncatedVideoWarning | InputMismatchWarning):
                show(message, category, *args, **kwargs)
            elif str(message) not in shown:
                shown.add(str(message))
                print(f"warning: {message}", file=sys.stderr)

        warnings.showwarning = one_line
        yield
