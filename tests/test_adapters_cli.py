"""`python -m hypernet.adapters info / diff`: what an adapter file holds, whether it fits a base."""

import torch

from hypernet.adapters import main
from hypernet.models.lora import delta_weight, init_adapters, load_adapters, save_adapters
from hypernet.systems.hyper_lora import load_hypernet


def write_adapter(path, system, *, seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    adapters = init_adapters(system.spec, num_videos=1, generator=g)
    adapters = {n: (a, scale * 0.1 * torch.randn(b.shape, generator=g)) for n, (a, b) in adapters.items()}
    save_adapters(path, system.spec, adapters, base=system.base)
    return adapters


def test_info_lists_layers_norms_and_whether_the_base_fits(tiny_checkpoints, tmp_path, capsys):
    system = load_hypernet(tiny_checkpoints["hyper"])
    adapters = write_adapter(tmp_path / "a.safetensors", system, seed=0)
    assert (
        main(["info", str(tmp_path / "a.safetensors"), "--checkpoint", str(tiny_checkpoints["hyper"])]) == 0
    )
    out = capsys.readouterr().out
    first = system.spec.targets[0]
    expected = delta_weight(
        first, adapters[first.name][0][0].double(), adapters[first.name][1][0].double()
    ).norm()
    row = next(line for line in out.splitlines() if line.startswith(first.name + " "))
    assert f"{expected:.4g}" in row
    assert f"{system.spec.num_params:,} parameters per video" in out
    assert "fits" in out and ": yes" in out
    assert all(t.name in out for t in system.spec.targets)
    # the stage-1 base the stage-2 run started from is the same base
    assert main(["info", str(tmp_path / "a.safetensors"), "--checkpoint", str(tiny_checkpoints["base"])]) == 0
    assert ": yes" in capsys.readouterr().out


def test_info_says_when_the_base_differs(tiny_checkpoints, tmp_path, capsys):
    system = load_hypernet(tiny_checkpoints["hyper"])
    with torch.no_grad():
        next(system.base.parameters()).add_(0.01)  # the same architecture, other weights
    write_adapter(tmp_path / "other.safetensors", system, seed=1)
    assert (
        main(["info", str(tmp_path / "other.safetensors"), "--checkpoint", str(tiny_checkpoints["hyper"])])
        == 0
    )
    assert "NO: same architecture, other weights" in capsys.readouterr().out


def test_diff_compares_layer_by_layer(tiny_checkpoints, tmp_path, capsys):
    system = load_hypernet(tiny_checkpoints["hyper"])
    write_adapter(tmp_path / "a.safetensors", system, seed=0)
    write_adapter(
        tmp_path / "twice.safetensors", system, seed=0, scale=2.0
    )  # the same direction, twice as far
    assert main(["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "twice.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "same base   yes" in out
    first = system.spec.names[0]
    row = next(line for line in out.splitlines() if line.startswith(first + " "))
    norm_a, norm_b, norm_diff, cosine = (float(x) for x in row.split()[1:])
    assert abs(norm_b - 2 * norm_a) < 1e-3 * norm_b and abs(norm_diff - norm_a) < 1e-3 * norm_b
    assert cosine > 0.999
    spec, _, _ = load_adapters(tmp_path / "a.safetensors")
    assert [t.name for t in spec.targets] == list(system.spec.names)


def test_bad_files_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["info", str(tmp_path / "junk.safetensors")]) == 2
    assert main(["diff", str(tmp_path / "junk.safetensors"), str(tmp_path / "missing.safetensors")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "missing.safetensors" in errors[0] and "junk.safetensors" in errors[1]
