"""What the command-line tools (specialise, finetune) share: their progress bar, and the checks:
output paths proven writable
before any work, outputs that may not name an input, frames large enough for the model, a device
that exists, and SIGTERM unwinding like Ctrl-C so that no temporary file stays behind. Each
failure is an `InputError` (a ValueError) naming the file or option and what to do; the tools turn
it into one line `error: ...` and exit code 2."""

from __future__ import annotations

import contextlib
import os
import signal
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
    """The output path, with its folder created and proven writable (by writing a temporary file
    there), so that a bad path fails now and not after an hour of upscaling."""
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise InputError(f"{option} {path}: the file name must end in {suffix}")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    folder = path.parent
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise InputError(f"{option} {path}: cannot be written, {ancestor} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise InputError(f"{option} {path}: cannot write into the folder {folder} ({reason})") from e
    return path


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


# exit status of a process ended by a signal, as a shell reports it: 128 + the signal's number
SIGTERM_EXIT = 128 + signal.SIGTERM


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
