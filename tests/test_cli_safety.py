"""The command-line tools (specialise, finetune, adapters) against inputs that used to give a wrong
video with exit code 0, a traceback, or a misleading message: each now ends in one line `error: ...`
naming the file or option, exit code 2 (130 for Ctrl-C), nothing written, no input changed."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from hypernet.adapters import main as adapters_main
from hypernet.finetune import main as finetune_main
from hypernet.models.lora import (
    HYPERNET_PREFIX,
    LoRASpec,
    find_targets,
    init_adapters,
    merge_adapters,
    save_adapters,
)
from hypernet.specialise import main as specialise_main
from hypernet.systems.hyper_lora import load_hypernet
from tests.helpers import one_line_error, signal_mid_encode, specialise_exit

FIRST = "conv_first"  # the first LoRA target of the tiny base (checked in the test)


def tree(folder: Path) -> dict[Path, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what a refused run must not change."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def good_adapter(gated_checkpoint, tmp_path_factory) -> Path:
    """A valid adapter file for the gated checkpoint's base with a learned merge (all ones: the
    naive sum), as `finetune --merge-steps` writes it."""
    system = load_hypernet(gated_checkpoint)
    generator = torch.Generator().manual_seed(0)
    adapters = init_adapters(system.spec, generator=generator)
    adapters = {k: (a, 0.05 * torch.randn(b.shape, generator=generator)) for k, (a, b) in adapters.items()}
    columns = {t.name: torch.ones(t.out_features) for t in system.spec.targets}
    columns |= {HYPERNET_PREFIX + t.name: torch.ones(t.out_features) for t in system.spec.targets}
    path = tmp_path_factory.mktemp("adapters") / "good.safetensors"
    save_adapters(path, system.spec, adapters, base=system.base, video=0, merge_columns=columns)
    return path


def altered(
    source: Path,
    path: Path,
    *,
    spec: Callable[[dict], None] | None = None,
    tensors: Callable[[dict], None] | None = None,
) -> Path:
    """A copy of an adapter file with its stored spec and/or tensors edited in place by the
    callbacks: a file someone changed by hand, or a tool other than ours wrote."""
    with safetensors.safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    raw = json.loads(metadata["spec"])
    if spec is not None:
        spec(raw)
    metadata["spec"] = json.dumps(raw)
    if tensors is not None:
        tensors(stored)
    path.write_bytes(safetensors.torch.save(stored, metadata=metadata))
    return path


def set_all(field: str, value) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        for target in raw["targets"]:
            target[field] = value

    return edit


def set_merge(layer: str, value: torch.Tensor | float) -> Callable[[dict], None]:
    """Replace the learned merge weights of `layer` ("hypernet:<layer>" for the hypernetwork's)."""

    def edit(stored: dict) -> None:
        key = f"merge.{layer}"
        stored[key] = value if isinstance(value, torch.Tensor) else torch.full_like(stored[key], value)

    return edit


def rename_first_layer(stored: dict) -> None:
    """The first layer's tensors under the name "nope" (with `spec=rename_in_spec`), no merge."""
    stored["nope.lora_A"] = stored.pop(f"{FIRST}.lora_A")
    stored["nope.lora_B"] = stored.pop(f"{FIRST}.lora_B")
    for key in [k for k in stored if k.startswith("merge.")]:
        del stored[key]


def rename_in_spec(raw: dict) -> None:
    raw["targets"][0]["name"] = "nope"


# ----------------------------------------------------------------------------------------------
# 1. an adapter file whose numbers were altered: refused as it is read, or before anything is written

ALTERED = {
    "alpha_nan": ({"spec": set_all("alpha", float("nan"))}, ["alpha", "finite"]),
    "alpha_zero": ({"spec": set_all("alpha", 0)}, ["alpha", "> 0"]),
    "rank_zero": ({"spec": set_all("rank", 0)}, ["rank", "positive int"]),
    "rank_fraction": ({"spec": set_all("rank", 2.5)}, ["rank", "positive int", "2.5"]),
    "empty_spec": ({"spec": lambda raw: raw.__setitem__("targets", [])}, ["no target"]),
    "merge_wrong_shape": (
        {"tensors": set_merge(FIRST, torch.ones(3))},
        [f"merge.{FIRST}", "(3,)", "channels"],
    ),
    "layer_the_base_lacks": (
        {"spec": rename_in_spec, "tensors": rename_first_layer},
        ["'nope'", "does not fit this base"],
    ),
    # finite numbers, read without complaint, but the video would be black or noise
    "alpha_huge": ({"spec": set_all("alpha", 1e30)}, ["--adapter", "NaN or inf"]),
    "merge_weight_huge": ({"tensors": set_merge(FIRST, 1e30)}, ["--adapter", "saturates"]),
    "hypernet_merge_weight_huge": (
        {"tensors": set_merge(HYPERNET_PREFIX + FIRST, 1e30)},
        ["the hypernetwork's adapter (weighted by --adapter", "learned merge", "saturates"],
    ),
}


@pytest.mark.parametrize("kind", list(ALTERED))
def test_altered_adapter_file_is_refused_naming_it(
    kind, good_adapter, gated_checkpoint, video, tmp_path, capsys
):
    assert load_hypernet(gated_checkpoint).spec.names[0] == FIRST
    edits, names = ALTERED[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = altered(good_adapter, inputs / f"{kind}.safetensors", **edits)
    before = tree(tmp_path)
    out = tmp_path / "out" / "sr.mp4"
    saved = tmp_path / "out" / "predicted.safetensors"
    argv = [str(video), "-o", str(out), "--checkpoint", str(gated_checkpoint), "--no-progress"]
    assert specialise_exit([*argv, "--adapter", str(path), "--save-adapter", str(saved)]) == 2
    one_line_error(capsys, f"{kind}.safetensors", *names)
    assert tree(tmp_path) == before  # no output, no adapter saved, no folder made, the file as it was
    if kind in ("alpha_nan", "alpha_zero", "rank_zero", "rank_fraction", "empty_spec", "merge_wrong_shape"):
        assert adapters_main(["info", str(path)]) == 2  # the file alone is refused
        one_line_error(capsys, f"{kind}.safetensors", *names)


def test_the_unaltered_file_and_legitimate_strengths_still_work(
    good_adapter, gated_checkpoint, video, tmp_path
):
    """The checks refuse nothing a user applies on purpose: the file above as written, and
    strengths up to a few, the adapters visibly changing the picture."""
    argv = [
        str(video),
        "--checkpoint",
        str(gated_checkpoint),
        "--no-progress",
        "--adapter",
        str(good_adapter),
    ]
    for strength in ("0", "1", "2"):
        out = tmp_path / f"s{strength}.mp4"
        figures = specialise_main([*argv, "-o", str(out), "--strength", strength])
        assert figures["mode"] == "adapter+hypernet" and out.is_file()


@pytest.mark.parametrize("strength", ["1e9", "50"])
def test_a_strength_that_destroys_the_picture_is_refused(strength, gated_checkpoint, video, tmp_path, capsys):
    """1e9 turns the output NaN (a black video), 50 saturates it (noise): both gave exit code 0."""
    out = tmp_path / "out" / "sr.mp4"
    argv = [str(video), "-o", str(out), "--checkpoint", str(gated_checkpoint), "--no-progress"]
    argv += ["--strength", strength, "--save-adapter", str(tmp_path / "out" / "a.safetensors")]
    assert specialise_exit(argv) == 2
    problem = "NaN or inf" if strength == "1e9" else "saturates"
    one_line_error(capsys, f"--strength {float(strength):g}", "the hypernetwork's adapter", problem)
    assert list(tmp_path.iterdir()) == []  # not even the output folder


def test_merging_weights_that_overflow_leaves_the_model_as_it_was():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 3, 3))
    spec = find_targets(model, rank=2)
    adapters = {
        k: (torch.full_like(a, 1e20), torch.full_like(b, 1e20)) for k, (a, b) in init_adapters(spec).items()
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"NaN or inf values into layer '0'"):
        merge_adapters(model, spec, adapters)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_spec_is_taken_as_written_not_rounded():
    spec = find_targets(torch.nn.Sequential(torch.nn.Linear(4, 4)), rank=2).to_dict()
    assert LoRASpec.from_dict(spec).targets[0].rank == 2
    for field, value in (("rank", "2"), ("rank", True), ("alpha", float("inf")), ("kind", "conv3d")):
        bad = {**spec, "targets": [{**spec["targets"][0], field: value}]}
        with pytest.raises(ValueError, match=field):
            LoRASpec.from_dict(bad)


# ----------------------------------------------------------------------------------------------
# 2. a checkpoint that is not one: one line naming the file, in every tool; nothing created


@pytest.fixture(scope="module")
def not_checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("not_checkpoints")
    (folder / "notes.ckpt").write_text("not a checkpoint\n")
    (folder / "noise.ckpt").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    return {"text": folder / "notes.ckpt", "random_bytes": folder / "noise.ckpt"}


@pytest.mark.parametrize("kind", ["text", "random_bytes"])
def test_a_file_that_is_no_checkpoint_is_named_by_every_tool(
    kind, not_checkpoints, good_adapter, video, tmp_path, capsys
):
    ckpt = not_checkpoints[kind]
    out = tmp_path / "out"
    assert (
        specialise_exit([str(video), "-o", str(out / "sr.mp4"), "--checkpoint", str(ckpt), "--no-progress"])
        == 2
    )
    one_line_error(capsys, f"--checkpoint {ckpt}")
    argv = ["--lr", str(video), "-o", str(out / "a.safetensors"), "--checkpoint", str(ckpt), "--no-progress"]
    assert finetune_main(argv) == 2
    one_line_error(capsys, f"--checkpoint {ckpt}")
    assert adapters_main(["info", str(good_adapter), "--checkpoint", str(ckpt)]) == 2
    one_line_error(capsys, f"--checkpoint {ckpt}")
    assert not out.exists()


def test_adapters_info_checks_against_a_stage_1_or_stage_2_checkpoint(tiny_checkpoints, good_adapter, capsys):
    for checkpoint in (tiny_checkpoints["base"], tiny_checkpoints["hyper"]):
        assert adapters_main(["info", str(good_adapter), "--checkpoint", str(checkpoint)]) == 0
        assert f"fits        {checkpoint}: yes" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# 3. messages that misled, and output folders left behind by refused runs


def test_a_folder_given_as_an_adapter_file_is_called_a_folder(checkpoint, video, tmp_path, capsys):
    folder = tmp_path / "adapters"
    folder.mkdir()
    assert adapters_main(["info", str(folder)]) == 2
    one_line_error(capsys, "adapters", "is a folder", ".safetensors")
    out = tmp_path / "out" / "sr.mp4"
    argv = [str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--adapter", str(folder)]
    assert specialise_exit(argv) == 2
    one_line_error(capsys, f"--adapter {folder}", "is a folder")
    assert not out.parent.exists()


def degradation_ceiling(monkeypatch) -> None:
    """load_hypernet gives the degradation-ceiling control (hypernet.encoder.source=degradation), which
    cannot read a real video (training one takes longer than this test)."""
    import hypernet.systems.hyper_lora as hyper_lora

    real = hyper_lora.load_hypernet

    def load(*args, **kwargs):
        system = real(*args, **kwargs)
        system.encoder.source = "degradation"
        return system

    monkeypatch.setattr(hyper_lora, "load_hypernet", load)


def test_refused_runs_leave_no_output_folder(
    checkpoint, not_checkpoints, video, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "new" / "deeper" / "sr.mp4"
    common = [str(video), "-o", str(out), "--no-progress", "--checkpoint"]
    assert specialise_exit([*common, str(tmp_path / "missing.ckpt")]) == 2
    one_line_error(capsys, "missing.ckpt", "does not exist")
    assert specialise_exit([*common, str(not_checkpoints["text"])]) == 2
    one_line_error(capsys, "notes.ckpt")
    degradation_ceiling(monkeypatch)
    assert specialise_exit([*common, str(checkpoint)]) == 2
    one_line_error(capsys, f"--checkpoint {checkpoint}", "degradation-ceiling", "--no-hypernet")
    adapter = tmp_path / "new" / "a.safetensors"
    argv = ["--lr", str(video), "-o", str(adapter), "--checkpoint", str(checkpoint), "--init-from-hypernet"]
    assert finetune_main(argv) == 2
    one_line_error(capsys, f"--checkpoint {checkpoint}", "degradation-ceiling", "--init-from-hypernet")
    assert list(tmp_path.iterdir()) == []


def test_finetune_that_diverges_writes_nothing(checkpoint, video, tmp_path, capsys):
    """A learning rate far too high used to write an adapter of NaN with exit code 0, which every
    tool then refused."""
    out = tmp_path / "new" / "a.safetensors"
    argv = ["--lr", str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--no-progress"]
    argv += ["--steps", "3", "--clips", "1", "--clip-len", "2", "--learning-rate", "1e9"]
    assert finetune_main(argv) == 2
    one_line_error(capsys, "--learning-rate 1e+09", "diverged", "a.safetensors")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 4. numeric options


# each tool: how it is run (its exit code), its input option and its output's name
TOOLS = {
    "specialise": (specialise_exit, [], "sr.mp4"),
    "finetune": (finetune_main, ["--lr"], "a.safetensors"),
}


@pytest.mark.parametrize(
    "tool, option, value",
    [
        ("specialise", "--context-frames", "-3"),
        ("specialise", "--context-frames", "0"),
        ("specialise", "--chunk-size", "0"),
        ("specialise", "--overlap", "-1"),
        ("specialise", "--crf", "52"),
        ("finetune", "--val-every", "0"),
        ("finetune", "--val-clips", "0"),
        ("finetune", "--val-videos", "-1"),
        ("finetune", "--merge-steps", "-1"),
        ("finetune", "--learning-rate", "inf"),
        ("finetune", "--learning-rate", "-0.1"),
    ],
)
def test_out_of_range_numbers_are_refused(tool, option, value, checkpoint, video, tmp_path, capsys):
    exit_code, input_option, name = TOOLS[tool]
    out = tmp_path / "out" / name
    argv = [*input_option, str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--no-progress"]
    assert exit_code([*argv, option, value]) == 2
    one_line_error(capsys, option, value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 5. Ctrl-C: a process behaviour, so a real process


def test_ctrl_c_mid_encode_is_one_line_exit_130_and_leaves_nothing(checkpoint, video, tmp_path):
    out = tmp_path / "new" / "sr.mp4"  # the run makes the folder, and must take it away again
    argv = [str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--no-progress"]
    code, err = signal_mid_encode(argv, out.parent, signal.SIGINT)
    assert code == 128 + signal.SIGINT, err
    assert err.splitlines() == ["error: interrupted (Ctrl-C); no partial output was left behind"], err
    assert list(tmp_path.iterdir()) == []  # no temporary, no output, no folder
