"""scripts/convert_checkpoint.py: checkpoints of earlier layouts convert once to the same network
and adapters (and a refine run's optimiser state, so they resume); unconverted, they are one
error naming the file and the converter; a seed gives the network it gave before the hypernet
options were grouped."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hypernet.checkpointing import CheckpointError, read_checkpoint
from hypernet.config import CONFIG_DIR, compose_config
from hypernet.systems.base_sr import BaseSRSystem
from hypernet.systems.common import HYPERNET_PARTS
from hypernet.systems.hyper_lora import HyperLoRASystem, load_base, load_hypernet
from tests.helpers import one_line_error

ROOT = Path(__file__).resolve().parent.parent
# the last commit whose systems took one flat `hypernet` group (and log_inner_lr)
FLAT_LAYOUT_COMMIT = "48f93e677cddb864b9756efa3f992199a53524db"


def load_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", ROOT / "scripts" / "convert_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_checkpoint = load_script()


# ----------------------------------------------------------------------------------------------
# old layouts, written by hand from a checkpoint of today's


def flat_hypernet(parts: dict) -> dict:
    """Grouped hypernet options -> the one flat group the systems took up to FLAT_LAYOUT_COMMIT."""
    lora, encoder, generator, refine = (parts[p] for p in ("lora", "encoder", "generator", "refine"))
    return {
        "targets": lora["include"], "exclude": lora["exclude"], "rank": lora["rank"], "alpha": lora["alpha"],
        "overrides": lora["overrides"], "source": encoder["source"], "feature_layers": encoder["feature_layers"],
        "context_tile": encoder["context_tile"], "dim": encoder["dim"], "num_latents": encoder["num_latents"],
        "num_heads": encoder["num_heads"], "num_blocks": encoder["num_blocks"],
        "conv_channels": encoder["conv_channels"], "lr_stats": encoder["lr_stats"], "static": generator["static"],
        "mode": refine["mode"], "inner_steps": refine["steps"], "inner_lr": refine["lr"],
        "first_order": refine["first_order"],
    }  # fmt: skip


def before_blocks(state: dict) -> dict:
    """Today's stage-2 parameter names written as before models/blocks.py: fused q/k/v,
    nn.MultiheadAttention's names, `mlp` / `proj`."""
    old = {}
    for key, tensor in state.items():
        if key.endswith(("attention.to_kv.weight", "attention.to_kv.bias")):
            continue
        if ".attention.to_q." in key:
            kind = key.rsplit(".", 1)[1]
            fused = torch.cat([tensor, state[key.replace("to_q", "to_kv")]])
            if key.startswith("generator."):
                old[f"generator.query.attention.in_proj_{kind}"] = fused
            elif key.startswith("encoder.blocks."):
                old[key.replace("attention.to_q", "qkv")] = fused
            else:
                old[key.replace("attention.to_q", "to_q")] = tensor
                old[key.replace("attention.to_q", "to_kv")] = state[key.replace("to_q", "to_kv")]
            continue
        key = key.replace("generator.query.attention.to_out", "generator.query.attention.out_proj")
        key = key.replace("generator.query.feed_forward.norm", "generator.query.mlp.0")
        key = key.replace("generator.query.feed_forward.net.0", "generator.query.mlp.1")
        key = key.replace("generator.query.feed_forward.net.2", "generator.query.mlp.3")
        key = key.replace("pooler.attention.to_out", "pooler.out").replace("attention.to_out", "proj")
        key = key.replace("feed_forward.norm", "norm_mlp").replace("feed_forward.net", "mlp")
        old[key] = tensor
    return old


def old_layout(checkpoint: dict, layout: str) -> dict:
    """A stage-2 checkpoint of today's layout rewritten in an earlier one: "main" (one flat
    hypernet group, the step sizes a parameter of the system: up to FLAT_LAYOUT_COMMIT) or
    "flat" (every option flat, the base by model.name, the parameter names before
    models/blocks.py, without the options that came later)."""
    old = dict(checkpoint)
    h = checkpoint["hyper_parameters"]
    state = {("log_inner_lr" if k == "refine.log_lr" else k): v for k, v in checkpoint["state_dict"].items()}
    hypernet = flat_hypernet(h["hypernet"])
    if layout == "main":
        old["hyper_parameters"] = {**h, "hypernet": hypernet}
    else:
        hypernet = {
            k: v for k, v in hypernet.items() if k not in ("overrides", "context_tile", "feature_layers")
        }
        model = {k: v for k, v in h["model"].items() if k != "_target_"} | {"name": "window"}
        own = {k: h[k] for k in ("base_ckpt", "crop_border", "log_images", "nonfinite_loss")}
        old["hyper_parameters"] = {**own, "model": model, **hypernet, **h["optim"]}
        state = before_blocks(state)
    old["state_dict"] = state
    return old


def adapters_of(path: Path, frames: torch.Tensor) -> dict:
    with torch.no_grad():
        return load_hypernet(path).adapters_from_stream([frames], num_frames=frames.shape[1])


def assert_same_adapters(ours: dict, theirs: dict) -> None:
    """The same adapters to float rounding (1e-6 absolute, 1e-5 relative; 1.3e-7 seen): since the
    stage-2 step was made cheaper, the encoder's statistics are taken in two passes rather than by
    torch.std and the generator calls each head once for all its layers, so the last bits differ
    from those of code that predates it. A weight a conversion lost or misplaced changes them
    wholesale."""
    assert ours.keys() == theirs.keys()
    for name in ours:
        for got, expected in zip(ours[name], theirs[name], strict=True):
            torch.testing.assert_close(
                got, expected, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
            )


# ----------------------------------------------------------------------------------------------
# conversion gives the same network


@pytest.mark.parametrize("layout", ["flat", "main"])
def test_an_old_checkpoint_converts_to_the_same_adapters(gated_checkpoint, video, tmp_path, capsys, layout):
    """A checkpoint of an earlier layout, loaded by the normal path, is one error naming it and
    the converter; converted, it predicts the very adapters of the checkpoint it was made from."""
    old = tmp_path / "old.ckpt"
    torch.save(old_layout(read_checkpoint(gated_checkpoint, option="test"), layout), old)
    with pytest.raises(CheckpointError) as refused:
        load_hypernet(old)
    message = str(refused.value)
    assert str(old) in message and "scripts/convert_checkpoint.py" in message and "\n" not in message
    if layout == "main":  # the entry points say the same: specialise's one line, eval's error
        from hypernet.eval import run as evaluate
        from hypernet.specialise import main as specialise

        with pytest.raises(SystemExit) as exit_info:
            specialise([str(video), "-o", str(tmp_path / "out.mp4"), "--checkpoint", str(old)])
        assert exit_info.value.code == 2 and not (tmp_path / "out.mp4").exists()
        one_line_error(capsys, str(old), "scripts/convert_checkpoint.py")
        cfg = compose_config("eval", [f"checkpoint={old}", f"paths.output_dir={tmp_path / 'eval'}"])
        with pytest.raises(CheckpointError, match=rf"checkpoint={old}: .*scripts/convert_checkpoint.py"):
            evaluate(cfg)

    new = tmp_path / "new.ckpt"
    assert convert_checkpoint.main([str(old), "-o", str(new)]) == 0
    assert str(new) in capsys.readouterr().out
    frames = torch.rand(1, 6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours, theirs = adapters_of(new, frames), adapters_of(gated_checkpoint, frames)
    assert any(b.abs().max() > 0 for _, b in theirs.values())  # the gates are open: B is not zero
    assert_same_adapters(ours, theirs)
    converted = read_checkpoint(new, option="test")
    assert (
        converted["hyper_parameters"] == read_checkpoint(gated_checkpoint, option="test")["hyper_parameters"]
    )


def test_an_old_stage1_checkpoint_converts_and_is_refused_unconverted(tiny_checkpoints, tmp_path):
    """Flat optimiser options and model.name: base_ckpt= and ckpt_path= name the file and the
    converter; converted, it is the same base network."""
    from hypernet.train import check_system_checkpoint

    checkpoint = read_checkpoint(tiny_checkpoints["base"], option="test")
    h = checkpoint["hyper_parameters"]
    model = {k: v for k, v in h["model"].items() if k != "_target_"} | {"name": "window"}
    old = tmp_path / "old_base.ckpt"
    flat = {k: v for k, v in h.items() if k not in ("optim", "model")} | {"model": model, **h["optim"]}
    torch.save({**checkpoint, "hyper_parameters": flat}, old)
    with pytest.raises(CheckpointError, match=rf"base_ckpt={old}: .*scripts/convert_checkpoint.py {old} -o"):
        load_base(old)
    base, _ = load_base(tiny_checkpoints["base"])
    with pytest.raises(CheckpointError, match=rf"ckpt_path={old}: .*flat options"):
        check_system_checkpoint(old, BaseSRSystem(**h), option="ckpt_path")
    new = tmp_path / "new_base.ckpt"
    assert convert_checkpoint.main([str(old), "-o", str(new)]) == 0
    converted, config = load_base(new)
    assert config == h["model"]
    ours, theirs = base.state_dict(), converted.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_converted_parts_are_the_configs_parts():
    """The converter writes every part configs/hypernet/default.yaml has, with its _target_ and
    all its options: an option added there must be added to the conversion too."""
    config = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "hypernet" / "default.yaml"))
    parts = convert_checkpoint.split_hypernet(flat_hypernet(config))
    assert list(parts) == list(HYPERNET_PARTS) == list(config)
    for part in HYPERNET_PARTS:
        assert parts[part].keys() == config[part].keys(), part
        assert parts[part]["_target_"] == config[part]["_target_"]


# ----------------------------------------------------------------------------------------------
# today's code against the code of the flat layout


CHILD = """
import json, sys, types
import torch
from hypernet.systems.hyper_lora import HyperLoRASystem

cases, inputs = json.loads(open(sys.argv[1]).read()), torch.load(sys.argv[2], weights_only=True)
HyperLoRASystem.trainer = property(lambda self: types.SimpleNamespace(estimated_stepping_batches=10))
results = {}
for name, case in cases.items():
    torch.manual_seed(0)
    system = HyperLoRASystem(**case).eval()
    with torch.no_grad():
        system.generator.gates.fill_(0.5)
    adapters = system.adapters_for(inputs["context"], inputs["times"], inputs["degradation"])
    results[name] = {
        "state": {k: v.clone() for k, v in system.state_dict().items()},  # before the step below
        "adapters": {k: [a.detach(), b.detach()] for k, (a, b) in adapters.items()},
    }
    if case["hypernet"]["mode"] == "refine":  # one optimiser step, as training takes them
        optimizer = system.configure_optimizers()["optimizer"]
        system.train()
        adapters = system.adapters_for(inputs["context"], inputs["times"], inputs["degradation"])
        ((system.sr(inputs["lr"], adapters) - inputs["hr"]) ** 2).mean().backward()
        optimizer.step()
        results[name]["optimizer"] = optimizer.state_dict()
        results[name]["moments"] = {
            n: optimizer.state[p]["exp_avg"] for n, p in system.named_parameters() if p in optimizer.state
        }
torch.save(results, sys.argv[3])
"""
MODEL = {"_target_": "hypernet.models.base.WindowVSR", "scale": 4, "num_frames": 3, "channels": 8,
         "num_blocks": 1, "upsampler": "direct"}  # fmt: skip
OPTIM = {"lr": 2e-4, "weight_decay": 0.0, "warmup_steps": 20, "min_lr_ratio": 0.1}
FLAT = {"targets": ["*"], "exclude": [], "rank": 2, "alpha": None, "overrides": None, "source": "base",
        "feature_layers": None, "context_tile": None, "dim": 16, "num_latents": 4, "num_heads": 2,
        "num_blocks": 1, "conv_channels": 8, "lr_stats": True, "static": False, "mode": "direct",
        "inner_steps": 1, "inner_lr": 1e-2, "first_order": False}  # fmt: skip
VARIANTS = {
    "base": {},
    "conv_refine": {"source": "conv", "mode": "refine", "inner_steps": 2},
    "stats_static": {"source": "stats", "static": True},
    "degradation": {"source": "degradation"},
    "chosen_layers": {"feature_layers": ["conv_first"], "overrides": {"upsampler.*": {"rank": 1}}},
}


@pytest.fixture(scope="module")
def flat_layout_code(tmp_path_factory) -> Path:
    """The package as it was at FLAT_LAYOUT_COMMIT, from the repository's history."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{FLAT_LAYOUT_COMMIT}^{{commit}}"], capture_output=True
    )
    if found.returncode != 0:
        pytest.skip(f"needs the repository's history (commit {FLAT_LAYOUT_COMMIT[:7]})")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", FLAT_LAYOUT_COMMIT, "hypernet", "configs"],
        capture_output=True,
        check=True,
    ).stdout
    folder = tmp_path_factory.mktemp("flat_layout_code")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def test_a_seed_gives_the_network_and_adapters_it_gave_before(flat_layout_code, tmp_path, monkeypatch):
    """The same seed and options build, in the code of the flat layout and in today's (options
    converted), identical parameters that give identical adapters for the same input; a refine
    run's optimiser state, converted, holds every parameter's own moments (it resumes)."""
    cases = {
        name: {"base_ckpt": None, "model": MODEL, "optim": OPTIM, "hypernet": FLAT | variant}
        for name, variant in VARIANTS.items()
    }
    g = torch.Generator().manual_seed(1)
    # one video: the refine steps' loss was a mean over the batch then, so a video's steps shrank
    # with its batch; it is each video's own mean now (summed), the same for a video alone
    inputs = {
        "context": torch.rand(1, 3, 3, 8, 8, generator=g),
        "times": torch.tensor([[0.1, 0.5, 0.9]]),
        "degradation": torch.tensor([[4.0, 1.5, 0.01, -1.0]]),
        "lr": torch.rand(1, 3, 3, 8, 8, generator=g),
        "hr": torch.rand(1, 3, 3, 32, 32, generator=g),
    }
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "child.py").write_text(CHILD)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), *(str(tmp_path / f) for f in ("cases.json", "inputs.pt", "out.pt"))],
        env=os.environ | {"PYTHONPATH": str(flat_layout_code), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    before = torch.load(tmp_path / "out.pt", weights_only=True)
    monkeypatch.setattr(
        HyperLoRASystem,
        "trainer",
        property(lambda self: types.SimpleNamespace(estimated_stepping_batches=10)),
    )
    for name, case in cases.items():
        old = {"state_dict": before[name]["state"], "hyper_parameters": case}
        if "optimizer" in before[name]:
            old["optimizer_states"] = [before[name]["optimizer"]]
        converted = convert_checkpoint.convert(old)
        torch.manual_seed(0)
        system = HyperLoRASystem(**converted["hyper_parameters"]).eval()
        with torch.no_grad():
            system.generator.gates.fill_(0.5)
        state = system.state_dict()
        assert state.keys() == converted["state_dict"].keys(), name
        assert all(torch.equal(state[k], converted["state_dict"][k]) for k in state), name
        adapters = system.adapters_for(inputs["context"], inputs["times"], inputs["degradation"])
        assert_same_adapters(adapters, {k: tuple(v) for k, v in before[name]["adapters"].items()})
        if "optimizer" in before[name]:
            optimizer = system.configure_optimizers()["optimizer"]
            optimizer.load_state_dict(converted["optimizer_states"][0])
            moments = before[name]["moments"]
            resumed = {
                n: optimizer.state[p]["exp_avg"] for n, p in system.named_parameters() if p in optimizer.state
            }
            assert len(resumed) == len(moments) and "refine.log_lr" in resumed
            for n, moment in resumed.items():
                assert torch.equal(moment, moments["log_inner_lr" if n == "refine.log_lr" else n]), n


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, nothing written, the input unchanged


def test_refusals_write_nothing(gated_checkpoint, tmp_path, capsys):
    old = tmp_path / "old.ckpt"
    torch.save(old_layout(read_checkpoint(gated_checkpoint, option="test"), "main"), old)
    before = old.read_bytes()
    assert convert_checkpoint.main([str(old), "-o", str(old)]) == 2
    one_line_error(capsys, str(old), "is the input itself")
    link = tmp_path / "link.ckpt"
    link.symlink_to(old)
    assert convert_checkpoint.main([str(old), "-o", str(link)]) == 2
    one_line_error(capsys, "is the input itself")
    assert old.read_bytes() == before and link.is_symlink()
    out = tmp_path / "out.ckpt"
    assert convert_checkpoint.main([str(gated_checkpoint), "-o", str(out)]) == 2
    one_line_error(capsys, str(gated_checkpoint), "already in the current layout")
    assert convert_checkpoint.main([str(tmp_path / "missing.ckpt"), "-o", str(out)]) == 2
    one_line_error(capsys, "missing.ckpt", "does not exist")
    broken = old_layout(read_checkpoint(gated_checkpoint, option="test"), "main")
    broken["hyper_parameters"]["hypernet"]["unheard_of"] = 1
    torch.save(broken, tmp_path / "broken.ckpt")
    assert convert_checkpoint.main([str(tmp_path / "broken.ckpt"), "-o", str(out)]) == 2
    one_line_error(capsys, "broken.ckpt", "unheard_of")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.ckpt",
        "link.ckpt",
        "old.ckpt",
    ]


def test_a_checkpoint_without_its_inputs_gets_them_from_its_runs_config(tiny_checkpoints, tmp_path, capsys):
    """A checkpoint written before the data options were kept: --check says so (exit 1); with the
    run's config.yaml the converted one feeds the model as trained (eval reads its 3 context
    frames without being told, and without a warning)."""
    import warnings

    from hypernet import eval as evaluation
    from hypernet.checkpointing import InputMismatchWarning

    checkpoint = read_checkpoint(tiny_checkpoints["hyper"], option="--checkpoint")
    del checkpoint["datamodule_hyper_parameters"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    run_config = tiny_checkpoints["hyper"].parent.parent / "config.yaml"
    assert convert_checkpoint.main(["--check", str(old)]) == 1
    assert "no record of its data options" in capsys.readouterr().out
    new = tmp_path / "new.ckpt"
    assert convert_checkpoint.main([str(old), "-o", str(new), "--config", str(run_config)]) == 0
    assert convert_checkpoint.main(["--check", str(new)]) == 0
    recorded = read_checkpoint(new, option="--checkpoint")["datamodule_hyper_parameters"]
    assert recorded["context_frames"] == 3 and recorded["scale"] == 4
    small = ["data.hr_size=32", "data.num_frames=8", "data.val_videos_per_image=1", "methods=[base,hypernet]"]
    cfg = compose_config("eval", [*small, f"checkpoint={new}", f"paths.output_dir={tmp_path / 'eval'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputMismatchWarning)
        evaluation.run(cfg)
    cfg.checkpoint, cfg.paths.output_dir = str(old), str(tmp_path / "eval_old")
    with pytest.warns(InputMismatchWarning, match="does not record its data.context_frames"):
        evaluation.run(cfg)
