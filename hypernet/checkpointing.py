"""Checkpoints written atomically, and read without running code.

Written: a kill during a save never leaves a corrupt file under the final name (the previous
checkpoint stays intact and the run resumes from it). Read: every entry point (training's resume
and test checkpoint, eval, specialise, finetune, adapters) loads a checkpoint with torch's
`weights_only=True`, so a pickle carrying a payload is refused instead of run, and every failure
is one `CheckpointError` naming the file and the option it came from."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hypernet.files import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, a folder, not a checkpoint, or one holding code."""


def _inside_hint(folder: Path) -> str:
    """Where the checkpoint of a run folder is, for an error that was given the folder."""
    found = [p for p in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt") if p.is_file()]
    return f"did you mean {found[0]}?" if found else "give the .ckpt file (a run keeps them in checkpoints/)"


def read_checkpoint(path: str | Path, *, option: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at `path` as a dict holding a Lightning `state_dict`, loaded with
    `weights_only=True`: tensors, numbers, strings and containers only, never an object whose
    unpickling runs code. `option` names where the path came from: `ckpt_path=` (a Hydra
    option, written option=PATH in messages) or `--checkpoint` (a command-line flag)."""
    checkpoint = load_weights_only(path, option=option, map_location=map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{_named(option, path)}: holds no Lightning state_dict, so it is not a checkpoint this "
            "project's training wrote; give the best.ckpt or last.ckpt of a run"
        )
    return checkpoint


def _named(option: str, path: str | Path) -> str:
    return f"{option}{path}" if option.endswith("=") else f"{option} {path}"


def load_weights_only(path: str | Path, *, option: str, map_location: Any = "cpu") -> Any:
    """What torch.save wrote at `path`, loaded with `weights_only=True` (read_checkpoint's first
    half, also for Lightning's own files, e.g. the weights ddp_spawn hands back to the main
    process); a file that is missing, a folder, corrupt or holding code is one CheckpointError."""
    path = Path(path)
    option = _named(option, path)
    if path.is_dir():
        raise CheckpointError(f"{option}: is a folder, not a checkpoint file; {_inside_hint(path)}")
    if not path.is_file():
        raise CheckpointError(f"{option}: does not exist; give the path of a .ckpt file")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function to call: what a payload needs
            raise CheckpointError(
                f"{option}: refused, the file holds Python objects that loading would run as code "
                "(not a checkpoint this project wrote, or one altered since); use a checkpoint from a "
                "training run of this project"
            ) from None
        raise _not_a_checkpoint(option) from None
    except (
        EOFError,
        IndexError,
        KeyError,
        OSError,
        RuntimeError,
        UnicodeDecodeError,
        ValueError,
        zipfile.BadZipFile,
        AttributeError,
        TypeError,
    ):
        raise _not_a_checkpoint(option) from None


def _not_a_checkpoint(option: str) -> CheckpointError:
    return CheckpointError(
        f"{option}: cannot be read as a checkpoint (truncated, corrupt, or another kind of file; nothing "
        "in it was run); give the best.ckpt or last.ckpt of a run"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: Any = None) -> dict:
        """Lightning reads through here (a resume, ddp_spawn's weights): always weights_only,
        whatever it asks for."""
        return load_weights_only(path, option="ckpt_path=", map_location=map_location or "cpu")


# ----------------------------------------------------------------------------------------------
# how a checkpoint's model must be fed


class InputMismatchWarning(UserWarning):
    """An explicit option feeds a model otherwise than it was trained: used as asked, said once."""


# what a checkpoint written before inputs were recorded says about one of them
NOT_RECORDED = object()


def trained_input(
    option: str, given: Any, trained: Any, *, checkpoint: str | Path, fallback: Any = None
) -> Any:
    """The value of an input option (`data.context_frames`, `--context-frames`, ...) for a model
    whose checkpoint recorded `trained`: the checkpoint's when the option is not given (None); the
    given one otherwise, with one warning naming both values when they differ. A checkpoint written
    before inputs were recorded (`trained` is NOT_RECORDED) takes the given value, else `fallback`,
    with a warning that says so."""
    import warnings

    if trained is NOT_RECORDED:
        value = fallback if given is None else given
        warnings.warn(
            f"checkpoint {checkpoint} does not record its {option}; using {value} "
            "(convert it with scripts/convert_checkpoint.py --config RUN/config.yaml to record it)",
            InputMismatchWarning,
            stacklevel=2,
        )
        return value
    if given is None:
        return trained
    if given != trained:
        warnings.warn(
            f"{option}={given} differs from the {trained} the model of {checkpoint} was trained with; "
            f"using {given} as asked",
            InputMismatchWarning,
            stacklevel=2,
        )
    return given
