"""The adapter file format: safetensors with keys "<layer>.lora_A" / "<layer>.lora_B" (leading video
dimension kept), the spec and the base's fingerprint as metadata, and optionally a learned merge
("merge.<key>"); written atomically, every part checked when read."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from hypernet.files import atomic_write_bytes
from hypernet.models.lora.peft_export import PEFT_WEIGHTS_NAME
from hypernet.models.lora.spec import (
    AdapterMismatchError,
    Adapters,
    LoRASpec,
    _layer_of,
    _num_videos,
)

FORMAT = "hypernet-lora/1"
MERGE_PREFIX = "merge."  # tensors of a learned merge stored in an adapter file
HYPERNET_PREFIX = "hypernet:"  # merge weights of the hypernetwork's adapter, beside the file's own


class AdapterFileError(ValueError):
    """An adapter file is missing, truncated, corrupt or not a hypernet adapter file."""


def base_fingerprint(model: nn.Module) -> dict[str, str]:
    """What adapters depend on: the architecture (class + ordered parameter names, shapes and
    dtypes) and the exact weights (a hash of every parameter and buffer)."""
    params = list(model.named_parameters())
    signature = type(model).__name__ + "\n" + "\n".join(f"{n} {tuple(p.shape)} {p.dtype}" for n, p in params)
    weights = hashlib.sha256()
    for name, tensor in [*params, *model.named_buffers()]:
        weights.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        weights.update(data.view(torch.uint8).numpy().tobytes())
    return {
        "architecture": hashlib.sha256(signature.encode()).hexdigest(),
        "weights": weights.hexdigest(),
        "class": type(model).__name__,
        "num_params": str(sum(p.numel() for _, p in params)),
    }


def save_adapters(
    path: str | os.PathLike,
    spec: LoRASpec,
    adapters: Adapters,
    *,
    base: nn.Module,
    video: int | None = None,
    extra_metadata: Mapping[str, str] | None = None,
    merge_columns: Mapping[str, Tensor] | None = None,
) -> None:
    """Write adapters as safetensors (keys "<layer>.lora_A" / "<layer>.lora_B", leading video dim
    kept) with the spec and the base's fingerprint as metadata, atomically. video=None saves all.
    `merge_columns` (a domain adapter's learned merge with the hypernetwork's adapter, from
    `adaptation.fit_merge`) are stored beside them as "merge.<key>"."""
    path = Path(path)
    num_videos = _num_videos(spec, adapters)
    if video is not None and not 0 <= video < num_videos:
        raise ValueError(
            f"save_adapters: video={video} is out of range: the adapters hold {num_videos} videos"
        )
    for t in spec.targets:
        _layer_of(base, t)
    metadata = {
        "format": FORMAT,
        "spec": json.dumps(spec.to_dict()),
        "fingerprint": json.dumps(base_fingerprint(base)),
    }
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"save_adapters: extra_metadata key {key!r} is reserved; choose another name")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"save_adapters: extra_metadata must map str to str, got {key!r}: {type(value).__name__}"
            )
        metadata[key] = value
    tensors = {}
    for t in spec.targets:
        a, b = adapters[t.name]
        if video is not None:
            a, b = a[video : video + 1], b[video : video + 1]
        tensors[f"{t.name}.lora_A"] = a.detach().cpu().clone().contiguous()
        tensors[f"{t.name}.lora_B"] = b.detach().cpu().clone().contiguous()
    for key, column in (merge_columns or {}).items():
        tensors[f"{MERGE_PREFIX}{key}"] = column.detach().cpu().float().clone().contiguous()
    if not path.parent.exists():
        raise ValueError(f"save_adapters: folder {str(path.parent)!r} does not exist (writing {str(path)!r})")
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def _check_fingerprint(path: Path, spec: LoRASpec, saved: Mapping[str, str], base: nn.Module) -> None:
    given = base_fingerprint(base)
    if saved.get("architecture") != given["architecture"]:
        detail = ""
        for t in spec.targets:
            try:
                _layer_of(base, t)
            except AdapterMismatchError as err:
                detail = f"; first difference: {err}"
                break
        raise AdapterMismatchError(
            f"{str(path)!r} was made for a different base architecture: the file's base is "
            f"{saved.get('class')} with {saved.get('num_params', '?')} parameters, the given base is "
            f"{given['class']} with {given['num_params']} parameters (architecture hashes differ){detail}"
        )
    if saved.get("weights") != given["weights"]:
        raise AdapterMismatchError(
            f"{str(path)!r} was made for the same architecture ({given['class']}) but different weights: "
            "load the base checkpoint the adapters were trained on (and make sure no adapters are "
            "merged into it), or pass base=None to skip the check"
        )


def load_adapters(
    path: str | os.PathLike, *, base: nn.Module | None = None, device: torch.device | str | None = None
) -> tuple[LoRASpec, Adapters, dict[str, str]]:
    """Read a file written by `save_adapters`; returns (spec, adapters, metadata as stored).
    Everything is checked before it is used, each failure an AdapterFileError naming the file:
    the spec's numbers (LoRATarget), its tensors' shapes and values (finite), and a learned
    merge's weights (one per output channel of a layer it adapts). With `base`, also the
    fingerprint (AdapterMismatchError saying what differs) and every target layer."""
    path = Path(path)
    name = f"adapter file {str(path)!r}"
    if path.is_dir():
        raise AdapterFileError(f"{name} is a folder, not an adapter file; give the .safetensors file")
    if not path.is_file():
        raise AdapterFileError(f"{name} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:
        raise AdapterFileError(f"{name} is truncated, corrupt or not a safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        hint = " (it looks like a PEFT export; load it with PEFT)" if path.name == PEFT_WEIGHTS_NAME else ""
        raise AdapterFileError(
            f"{str(path)!r} is not a hypernet adapter file: metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT!r}{hint}"
        )
    try:
        fingerprint = json.loads(metadata["fingerprint"])
        raw_spec = json.loads(metadata["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterFileError(f"{name} has unreadable 'spec'/'fingerprint' metadata ({err})") from None
    try:
        spec = LoRASpec.from_dict(raw_spec)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise AdapterFileError(
            f"{name}: its stored spec is not valid ({type(err).__name__}: {err}); the file was altered or "
            "not written by this project: make the adapter again"
        ) from None
    adapters: Adapters = {}
    for t in spec.targets:
        try:
            a, b = tensors[f"{t.name}.lora_A"], tensors[f"{t.name}.lora_B"]
        except KeyError as err:
            raise AdapterFileError(f"{name} lacks tensor {err} named in its spec") from None
        for key, tensor in ((f"{t.name}.lora_A", a), (f"{t.name}.lora_B", b)):
            if not tensor.is_floating_point():
                raise AdapterFileError(f"{name}: tensor {key!r} holds {tensor.dtype} values, not floats")
            if not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise AdapterFileError(
                    f"{name}: tensor {key!r} holds {bad} NaN or inf values "
                    f"(of {tensor.numel()}); it would turn the video black: fit or predict the adapters again"
                )
        adapters[t.name] = (
            a.to(device) if device is not None else a,
            b.to(device) if device is not None else b,
        )
    try:
        _num_videos(spec, adapters)
    except ValueError as err:
        raise AdapterFileError(f"{name} does not match its own spec: {err}") from None
    columns = {k[len(MERGE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MERGE_PREFIX)}
    _check_merge(name, spec, columns)
    if base is not None:
        _check_fingerprint(path, spec, fingerprint, base)
        for t in spec.targets:  # a fingerprint can match while the spec was edited
            try:
                _layer_of(base, t)
            except AdapterMismatchError as err:
                raise AdapterMismatchError(f"{name} does not fit this base: {err}") from None
        for key, column in columns.items():
            if key.startswith(HYPERNET_PREFIX):
                out_features = _out_features(base, key[len(HYPERNET_PREFIX) :], name)
                _check_column(name, key, column, out_features)
    return spec, adapters, metadata


def _check_merge(name: str, spec: LoRASpec, columns: Mapping[str, Tensor]) -> None:
    """A learned merge stored in a file (keys "<layer>" for its own layers, "hypernet:<layer>"
    for the hypernetwork's): none at all, or one weight per output channel of every layer the
    file adapts plus some of the hypernetwork's, every weight finite. Without this check a
    merge of the wrong length fails deep in the stacking, as a traceback."""
    if not columns:
        return
    own = {k: v for k, v in columns.items() if not k.startswith(HYPERNET_PREFIX)}
    if set(own) != set(spec.names) or len(own) == len(columns):
        raise AdapterFileError(
            f"{name}: its learned merge must weight each of its own layers and some of the hypernetwork's; "
            f"it weights {sorted(columns)[:8]} for the layers {list(spec.names)[:8]}: fit the merge again "
            "(finetune --merge-steps)"
        )
    for key, column in columns.items():  # the hypernetwork's layers: their sizes need the base
        _check_column(name, key, column, spec[key].out_features if key in own else column.numel())


def _check_column(name: str, key: str, column: Tensor, out_features: int) -> None:
    if tuple(column.shape) != (out_features,) or not column.is_floating_point():
        raise AdapterFileError(
            f"{name}: merge weights {MERGE_PREFIX + key!r} have shape {tuple(column.shape)} ({column.dtype}), "
            f"but the layer has {out_features} output channels, one float weight each: fit the merge again"
        )
    if not torch.isfinite(column).all():
        raise AdapterFileError(f"{name}: merge weights {MERGE_PREFIX + key!r} hold NaN or inf values")


def _out_features(base: nn.Module, layer_name: str, name: str) -> int:
    """Output channels of a layer of `base` that a file's learned merge weights."""
    try:
        layer = base.get_submodule(layer_name)
    except AttributeError:
        layer = None
    if not isinstance(layer, nn.Conv2d | nn.Linear):
        raise AdapterMismatchError(
            f"{name} does not fit this base: its learned merge weights the hypernetwork's adapter on layer "
            f"{layer_name!r}, which {type(base).__name__} has no Conv2d or Linear of"
        )
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def load_merge_columns(path: str | os.PathLike) -> dict[str, Tensor] | None:
    """The learned merge stored in an adapter file (see `save_adapters`), or None when it holds
    none. Read after `load_adapters`, which has checked the file."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
        keys = [k for k in f.keys() if k.startswith(MERGE_PREFIX)]  # noqa: SIM118
        columns = {k[len(MERGE_PREFIX) :]: f.get_tensor(k) for k in keys}
    return columns or None
