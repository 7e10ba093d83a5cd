"""The LoRA engine (hypernet/models/lora.py) against independent references: PEFT's LoRA layers,
and per-video weights W + scaling * B @ A computed here by hand."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hypernet.models.lora import (
    AdapterFileError,
    AdapterMismatchError,
    LoRASpec,
    apply_adapters,
    base_fingerprint,
    export_peft,
    find_targets,
    init_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    unmerge_adapters,
)

ATOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Small bases


def conv_net() -> nn.Sequential:
    """Every conv flavour the engine must handle: plain, stride 2, dilation 2, 1x1, reflect padding."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.LeakyReLU(0.1),
        nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect"),
        nn.LeakyReLU(0.1),
        nn.Conv2d(6, 3, 1),
    )


class WindowToy(nn.Module):
    """A sliding-window style base: convs run on rearrange(x, "b t c h w -> (b t) c h w")."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(rearrange(x, "b t c h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b t c h w", b=x.shape[0])


class RecurrentToy(nn.Module):
    """A recurrent base: the same convs called once per time step on (b, c, h, w)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.cell = nn.Conv2d(3 + 4, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = x.shape
        hidden = x.new_zeros(b, 4, h, w)
        outs = []
        for i in range(t):
            hidden = torch.tanh(self.cell(torch.cat([x[:, i], hidden], dim=1)))
            outs.append(self.out(hidden))
        return torch.stack(outs, dim=1)


class TokenToy(nn.Module):
    """Linear layers on (b, tokens, d), plus a conv so a spec mixes both kinds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(self.conv(x), "n c h w -> n (h w) c")
        return self.fc2(F.gelu(self.fc1(tokens)))


def random_adapters(spec: LoRASpec, num_videos: int, seed: int = 0, requires_grad: bool = False):
    """Adapters with non-zero B (a fresh adapter's B is zero and would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    adapters = init_adapters(spec, num_videos=num_videos, generator=g)
    return {
        name: (
            a.requires_grad_(requires_grad),
            (0.3 * torch.randn(b.shape, generator=g)).requires_grad_(requires_grad),
        )
        for name, (a, b) in adapters.items()
    }


def adapted_output(model: nn.Module, spec: LoRASpec, x: torch.Tensor, num_videos: int = 1):
    """The model's output on x under random adapters (num_videos of them), and those adapters."""
    adapters = random_adapters(spec, num_videos)
    with apply_adapters(model, spec, adapters):
        return model(x), adapters


def reference_merged(model: nn.Module, spec: LoRASpec, adapters, video: int) -> nn.Module:
    """An independent reference: a copy of the model whose weights are W + (alpha/r) * B @ A for
    one video, computed here directly (conv: contraction over the rank of B (o, r) and A (r, i, kh, kw))."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for t in spec.targets:
            layer = ref.get_submodule(t.name)
            a, b = adapters[t.name][0][video], adapters[t.name][1][video]
            # conv: B (o, r) times A flattened to (r, i*kh*kw); linear: B (o, r) @ A (r, i)
            delta = (b @ a.reshape(t.rank, -1)).reshape(layer.weight.shape)
            layer.weight += (t.alpha / t.rank) * delta
    return ref


# ----------------------------------------------------------------------------------------------
# Targets and spec


def test_find_targets_lists_every_conv_with_shapes_and_budget():
    model = conv_net()
    spec = find_targets(model, rank=2, alpha=4.0)
    assert spec.names == ("0", "2", "4", "6", "8")
    t = spec["2"]
    assert (t.kind, t.in_features, t.out_features, t.kernel_size, t.stride, t.padding, t.dilation) == (
        "conv",
        8,
        8,
        (3, 3),
        (2, 2),
        (1, 1),
        (1, 1),
    )
    assert spec["4"].dilation == (2, 2)
    assert spec["6"].padding_mode == "reflect"
    assert t.scaling == 2.0
    assert t.a_shape == (2, 8, 3, 3) and t.b_shape == (8, 2)
    assert t.num_params == 2 * 8 * 9 + 8 * 2
    base_params = sum(p.numel() for p in model.parameters())
    assert spec.base_num_params == base_params
    assert spec.num_params == sum(x.num_params for x in spec.targets)
    assert math.isclose(spec.fraction, spec.num_params / base_params)
    # JSON round trip (it goes into the adapter file's metadata)
    assert LoRASpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    table = spec.summary()
    assert "4" in table and f"{spec.num_params:,}" in table


def test_find_targets_patterns_overrides_and_default_alpha():
    model = TokenToy()
    spec = find_targets(
        model, include=["fc*", "conv"], exclude=["fc2"], rank=3, overrides={"conv": {"rank": 2}}
    )
    assert spec.names == ("conv", "fc1")
    assert (spec["conv"].rank, spec["conv"].alpha) == (2, 2.0)  # alpha None -> alpha = rank
    assert (spec["fc1"].kind, spec["fc1"].a_shape, spec["fc1"].b_shape) == ("linear", (3, 6), (16, 3))
    # the first matching override wins
    spec = find_targets(model, rank=2, overrides={"fc*": {"alpha": 8.0}, "fc2": {"rank": 1}})
    assert (spec["fc2"].rank, spec["fc2"].alpha) == (2, 8.0)


def test_find_targets_errors_are_clear():
    model = TokenToy()
    with pytest.raises(ValueError, match=r"no Conv2d/Linear layer.*fc1"):
        find_targets(model, include=["nothing*"])
    with pytest.raises(ValueError, match=r"\['enc\*'\] match no Conv2d/Linear"):
        find_targets(model, include=["fc*", "enc*"])
    capped = find_targets(model, rank=7, alpha=14.0)  # the global rank is capped per layer, alpha/rank kept
    assert [(t.rank, t.alpha) for t in capped.targets] == [(6, 12.0), (6, 12.0), (5, 10.0)]
    with pytest.raises(ValueError, match=r"overrides\['fc2'\]\['rank'\]=9 .*'fc2'.*maximum allowed is 5"):
        find_targets(model, rank=2, overrides={"fc2": {"rank": 9}})
    with pytest.raises(ValueError, match=r"overrides pattern\(s\) \['typo'\] match no targeted layer"):
        find_targets(model, overrides={"typo": {"rank": 2}})
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match=r"layer '0' is a grouped Conv2d \(groups=2\).*exclude"):
        find_targets(grouped, rank=1)
    assert find_targets(grouped, exclude=["0"], rank=1).names == ("1",)
    with pytest.raises(ValueError, match=r"names layer '1', a GELU"):
        find_targets(nn.Sequential(nn.Linear(2, 2), nn.GELU()), include=["0", "1"], rank=1)


# ----------------------------------------------------------------------------------------------
# Equality with PEFT


def peft_model_with(model: nn.Module, spec: LoRASpec, adapters, video: int = 0):
    """PEFT's LoRA on the same layers, rank and alpha, its lora_A / lora_B set to our tensors."""
    peft = pytest.importorskip("peft")
    t0 = spec.targets[0]
    config = peft.LoraConfig(
        r=t0.rank, lora_alpha=t0.alpha, target_modules=list(spec.names), lora_dropout=0.0
    )
    pm = peft.get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for t in spec.targets:
            layer = pm.base_model.model.get_submodule(t.name)
            a, b = adapters[t.name][0][video], adapters[t.name][1][video]
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b.reshape(layer.lora_B["default"].weight.shape))
    return pm


@pytest.mark.parametrize(
    "conv_kwargs",
    [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1)],
    ids=["3x3", "3x3-stride2", "1x1"],
)
def test_conv_lora_equals_peft(conv_kwargs):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(5, 7, **conv_kwargs))
    spec = find_targets(model, rank=3, alpha=5.0)
    x = torch.randn(2, 5, 11, 11)
    ours, adapters = adapted_output(model, spec, x)
    pm = peft_model_with(model, spec, adapters)
    torch.testing.assert_close(ours, pm(x), atol=ATOL, rtol=0)
    assert (ours - model(x)).abs().max() > 1e-2  # the adapter does change the output


def test_dilated_conv_lora_equals_peft_weights():
    """PEFT 0.21's conv LoRA builds lora_A without the layer's dilation, so its unmerged forward
    cannot run on a dilated conv. Compare against PEFT's own merged weights instead (its
    get_delta_weight), and against its unmerged forward once lora_A is given the dilation."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(5, 7, 3, padding=2, dilation=2))
    spec = find_targets(model, rank=3, alpha=6.0)
    x = torch.randn(2, 5, 12, 12)
    ours, adapters = adapted_output(model, spec, x)
    pm = peft_model_with(model, spec, adapters)
    pm.base_model.model[0].lora_A["default"].dilation = (2, 2)
    torch.testing.assert_close(ours, pm(x), atol=ATOL, rtol=0)
    merged = peft_model_with(model, spec, adapters).merge_and_unload()
    torch.testing.assert_close(ours, merged(x), atol=ATOL, rtol=0)


def test_linear_lora_equals_peft():
    model = TokenToy()
    spec = find_targets(model, include=["fc*"], rank=3, alpha=1.5)
    x = torch.randn(2, 3, 4, 4)
    ours, adapters = adapted_output(model, spec, x)
    torch.testing.assert_close(ours, peft_model_with(model, spec, adapters)(x), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------
# Per-video batching


def test_fresh_adapters_leave_the_output_unchanged():
    model = WindowToy()
    spec = find_targets(model, rank=2)
    adapters = init_adapters(spec, num_videos=3, generator=torch.Generator().manual_seed(0))
    for t in spec.targets:
        a, b = adapters[t.name]
        bound = 1 / math.sqrt(t.in_features * math.prod(t.kernel_size))
        assert a.shape == (3, *t.a_shape) and b.shape == (3, *t.b_shape)
        assert a.abs().max() <= bound and a.abs().max() > bound / 2 and b.count_nonzero() == 0
    x = torch.randn(3, 2, 3, 10, 10)
    with apply_adapters(model, spec, adapters):
        out = model(x)
    assert torch.equal(out, model(x))


@pytest.mark.parametrize("toy", [WindowToy, RecurrentToy], ids=["window", "recurrent"])
def test_batched_videos_equal_separate_calls_and_reference(toy):
    model = toy()
    spec = find_targets(model, rank=2, alpha=3.0)
    num_videos = 3
    x = torch.randn(num_videos, 4, 3, 10, 10)
    batched, adapters = adapted_output(model, spec, x, num_videos)
    for v in range(num_videos):
        single = {n: (a[v : v + 1], b[v : v + 1]) for n, (a, b) in adapters.items()}
        with apply_adapters(model, spec, single):
            alone = model(x[v : v + 1])
        torch.testing.assert_close(batched[v : v + 1], alone, atol=ATOL, rtol=0)
        reference = reference_merged(model, spec, adapters, v)(x[v : v + 1])
        torch.testing.assert_close(batched[v : v + 1], reference, atol=ATOL, rtol=0)
    # videos really differ: swapping adapters changes the answer
    assert (batched[0] - batched[1]).abs().max() > 1e-3
    with torch.no_grad():
        assert (batched[0] - model(x[:1])[0]).abs().max() > 1e-3


def test_batched_linear_videos_equal_reference():
    model = TokenToy()
    spec = find_targets(model, rank=2)
    x = torch.randn(4, 3, 5, 5)  # video-major: samples 0, 1 -> video 0; 2, 3 -> video 1
    batched, adapters = adapted_output(model, spec, x, num_videos=2)
    for v in range(2):
        torch.testing.assert_close(
            batched[2 * v : 2 * v + 2],
            reference_merged(model, spec, adapters, v)(x[2 * v : 2 * v + 2]),
            atol=ATOL,
            rtol=0,
        )


def test_layers_called_with_a_keyword_input_are_adapted():
    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(input=x)

    model = KeywordCall()
    spec = find_targets(model, rank=2)
    x = torch.randn(2, 3, 6, 6)
    out, adapters = adapted_output(model, spec, x, num_videos=2)
    torch.testing.assert_close(out[1:], reference_merged(model, spec, adapters, 1)(x[1:]), atol=ATOL, rtol=0)


def test_hooks_are_removed_on_exit_and_on_error():
    model = conv_net()
    spec = find_targets(model, rank=1)
    adapters = random_adapters(spec, num_videos=1)
    x = torch.randn(1, 3, 8, 8)
    plain = model(x)
    with pytest.raises(RuntimeError, match="boom"), apply_adapters(model, spec, adapters):
        raise RuntimeError("boom")
    assert torch.equal(model(x), plain)
    assert all(not m._forward_hooks for m in model.modules())


def test_adapters_that_do_not_fit_the_model_or_the_batch_are_rejected():
    model = conv_net()
    spec = find_targets(model, rank=2)
    adapters = random_adapters(spec, num_videos=2)
    batch = r"layer '0'.*batch of 3 samples.*2 videos"
    with pytest.raises(ValueError, match=batch), apply_adapters(model, spec, adapters):
        model(torch.randn(3, 3, 8, 8))  # not a multiple of the 2 videos
    with (
        pytest.raises(ValueError, match=r"missing \['8'\]"),
        apply_adapters(model, spec, {k: v for k, v in adapters.items() if k != "8"}),
    ):
        pass
    bad = dict(adapters, **{"0": (adapters["0"][0][:1], adapters["0"][1][:1])})
    with pytest.raises(ValueError, match="same leading video dimension"), apply_adapters(model, spec, bad):
        pass
    other = nn.Sequential(nn.Conv2d(3, 9, 3, padding=1))
    with (
        pytest.raises(AdapterMismatchError, match=r"layer '0': the spec expects Conv2d 3->8"),
        apply_adapters(other, find_targets(model, include=["0"], rank=2), {"0": adapters["0"]}),
    ):
        pass


def test_gradients_reach_the_adapters_and_not_the_base():
    model = WindowToy().requires_grad_(False)
    spec = find_targets(model, rank=2, alpha=2.0)
    adapters = random_adapters(spec, num_videos=2, requires_grad=True)
    x = torch.randn(2, 3, 3, 8, 8)
    target = torch.randn(2, 3, 3, 4, 4)  # the stride-2 conv halves the size
    with apply_adapters(model, spec, adapters):
        F.mse_loss(model(x), target).backward()
    assert all(p.grad is None for p in model.parameters())
    # the same gradient through the independent reference: per-video weights W + s * B @ A
    ref_adapters = {
        n: (a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_())
        for n, (a, b) in adapters.items()
    }
    loss = 0.0
    for v in range(2):
        out = torch.func.functional_call(model, _merged_params(model, spec, ref_adapters, v), (x[v : v + 1],))
        loss = loss + F.mse_loss(out, target[v : v + 1], reduction="sum") / target.numel()
    loss.backward()
    for name in spec.names:
        for ours, ref in zip(adapters[name], ref_adapters[name], strict=True):
            assert ours.grad is not None and ours.grad.abs().max() > 0
            torch.testing.assert_close(ours.grad, ref.grad, atol=1e-6, rtol=1e-4)


def _merged_params(model, spec, adapters, v):
    params = dict(model.named_parameters())
    for t in spec.targets:
        a, b = adapters[t.name][0][v], adapters[t.name][1][v]
        w = params[f"{t.name}.weight"]
        params[f"{t.name}.weight"] = w + t.scaling * (b @ a.reshape(t.rank, -1)).reshape(w.shape)
    return params


def test_second_order_gradients_flow_through_the_adapters():
    """Meta-learning (refinement steps inside the loss) differentiates through a gradient."""
    model = conv_net().requires_grad_(False)
    spec = find_targets(model, include=["0", "2"], rank=2)
    adapters = random_adapters(spec, num_videos=2, requires_grad=True)
    x = torch.randn(2, 3, 8, 8)
    with apply_adapters(model, spec, adapters):
        inner = model(x).square().mean()
    grads = torch.autograd.grad(inner, [adapters["0"][1]], create_graph=True)
    grads[0].square().sum().backward()
    assert adapters["0"][0].grad is not None and adapters["0"][0].grad.abs().max() > 0


# ----------------------------------------------------------------------------------------------
# Merge


def test_merge_matches_the_adapters_and_unmerge_restores_the_weights():
    model = WindowToy()
    spec = find_targets(model, rank=2, alpha=3.0)
    x = torch.randn(2, 2, 3, 9, 9)
    batched, adapters = adapted_output(model, spec, x, num_videos=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_adapters(model, spec, adapters, video=1)
    assert not torch.equal(model.net[0].weight, before["net.0.weight"])
    torch.testing.assert_close(model(x[1:]), batched[1:], atol=ATOL, rtol=0)
    unmerge_adapters(model, spec, adapters, video=1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="video=2 is out of range"):
        merge_adapters(model, spec, adapters, video=2)


# ----------------------------------------------------------------------------------------------
# Save / load


def test_save_load_round_trip(tmp_path):
    model = TokenToy()
    spec = find_targets(model, rank=2, overrides={"fc2": {"alpha": 5.0}})
    adapters = random_adapters(spec, num_videos=3)
    path = tmp_path / "video.safetensors"
    save_adapters(path, spec, adapters, base=model, extra_metadata={"video": "clip_007.mp4"})
    assert sorted(os.listdir(tmp_path)) == ["video.safetensors"]  # no temporary file left behind
    spec2, adapters2, meta = load_adapters(path, base=model)
    assert spec2 == spec and meta["video"] == "clip_007.mp4" and meta["format"] == "hypernet-lora/1"
    assert json.loads(meta["fingerprint"]) == base_fingerprint(model)
    for name in spec.names:
        assert torch.equal(adapters2[name][0], adapters[name][0]) and torch.equal(
            adapters2[name][1], adapters[name][1]
        )
    save_adapters(path, spec, adapters, base=model, video=2)
    _, one, _ = load_adapters(path, base=model)
    assert torch.equal(one["fc1"][1], adapters["fc1"][1][2:3])
    with pytest.raises(ValueError, match="'format' is reserved"):
        save_adapters(path, spec, adapters, base=model, extra_metadata={"format": "x"})


def test_loading_onto_a_different_base_says_what_differs(tmp_path):
    model = WindowToy()
    spec = find_targets(model, rank=2)
    path = tmp_path / "a.safetensors"
    save_adapters(path, spec, random_adapters(spec, 1), base=model)
    # same architecture, other weights (another checkpoint)
    other_weights = WindowToy()
    with torch.no_grad():
        other_weights.net[0].bias += 0.1
    with pytest.raises(
        AdapterMismatchError, match=r"a\.safetensors.*same architecture \(WindowToy\) but different weights"
    ):
        load_adapters(path, base=other_weights)
    # another architecture
    other = TokenToy()
    with pytest.raises(
        AdapterMismatchError, match=r"a\.safetensors.*different base architecture.*WindowToy.*TokenToy"
    ):
        load_adapters(path, base=other)
    # no base given: no check
    assert load_adapters(path)[0] == spec


def test_truncated_or_foreign_files_fail_clearly(tmp_path):
    model = conv_net()
    spec = find_targets(model, rank=2)
    path = tmp_path / "good.safetensors"
    save_adapters(path, spec, random_adapters(spec, 2), base=model)
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(AdapterFileError, match=rf"cut{cut}\.safetensors.*truncated, corrupt"):
            load_adapters(bad, base=model)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(AdapterFileError, match=r"notes\.safetensors"):
        load_adapters(text)
    with pytest.raises(AdapterFileError, match=r"missing\.safetensors.*does not exist"):
        load_adapters(tmp_path / "missing.safetensors")
    peft_dir = tmp_path / "peft"
    export_peft(
        peft_dir,
        find_targets(model, include=["0", "2", "8"], rank=2),
        random_adapters(find_targets(model, include=["0", "2", "8"], rank=2), 1),
    )
    with pytest.raises(AdapterFileError, match="not a hypernet adapter file.*PEFT"):
        load_adapters(peft_dir / "adapter_model.safetensors")


def test_fingerprint_tracks_architecture_and_weights():
    a, b = WindowToy(), WindowToy()
    assert base_fingerprint(a) == base_fingerprint(b)
    with torch.no_grad():
        b.net[2].weight[0, 0, 0, 0] += 1e-3
    fa, fb = base_fingerprint(a), base_fingerprint(b)
    assert fa["architecture"] == fb["architecture"] and fa["weights"] != fb["weights"]
    assert base_fingerprint(conv_net())["architecture"] != fa["architecture"]


# ----------------------------------------------------------------------------------------------
# PEFT export


class Nested(nn.Module):
    """Names that are suffixes of other names ("conv" and "block.conv"): the export must pick
    exactly our targets, with a different rank and alpha on some layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential()
        self.block.conv = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block.conv(F.relu(self.conv(x)))
        return self.head(y.mean(dim=(2, 3)))


def test_export_peft_loads_in_peft_and_reproduces_our_outputs(tmp_path):
    peft = pytest.importorskip("peft")
    model = Nested()
    spec = find_targets(
        model,
        include=["conv", "block.conv", "head"],
        rank=2,
        overrides={"block.conv": {"rank": 3, "alpha": 1.5}},
    )
    adapters = random_adapters(spec, num_videos=2)
    x = torch.randn(2, 3, 8, 8)
    export_peft(tmp_path / "peft", spec, adapters, video=1)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 2 and list(config["rank_pattern"].values()) == [3]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "peft")
    single = {n: (a[1:], b[1:]) for n, (a, b) in adapters.items()}
    with apply_adapters(model, spec, single):
        ours = model(x)
    torch.testing.assert_close(loaded(x), ours, atol=ATOL, rtol=0)
    # only our three layers carry a LoRA
    lora_layers = {n for n, m in loaded.named_modules() if hasattr(m, "lora_A")}
    assert lora_layers == {"base_model.model.conv", "base_model.model.block.conv", "base_model.model.head"}


def test_export_peft_refuses_what_peft_cannot_represent(tmp_path):
    model = conv_net()
    spec = find_targets(model, include=["4"], rank=2)  # dilation 2
    with pytest.raises(ValueError, match=r"layer '4' has dilation \(2, 2\).*cannot represent"):
        export_peft(tmp_path / "x", spec, random_adapters(spec, 1))
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# The project's own bases


@pytest.mark.parametrize("per_video_weights", [False, True])
@pytest.mark.parametrize("name", ["window", "recurrent"])
def test_project_bases_batched_equal_separate(name, per_video_weights):
    """Each video of a batch, by LoRA branches or by per-video weights (the training path, which
    folds W + scaling * B @ A in one batched matmul-add), equals that video alone on the base
    with its adapter folded into the weights independently (`reference_merged`)."""
    base_module = pytest.importorskip("hypernet.models.base")
    model = base_module.BASE_MODELS[name]().requires_grad_(False)
    spec = find_targets(model, rank=1)
    adapters = random_adapters(spec, num_videos=2)
    for _, b in adapters.values():
        b.mul_(0.1)
    x = torch.rand(2, 3, 3, 8, 8)
    with apply_adapters(model, spec, adapters, per_video_weights=per_video_weights):
        batched = model(x)
    for v in range(2):
        torch.testing.assert_close(
            batched[v : v + 1], reference_merged(model, spec, adapters, v)(x[v : v + 1]), atol=1e-4, rtol=0
        )


# ----------------------------------------------------------------------------------------------
# Per-video weights: the training path


@pytest.mark.parametrize("toy", [WindowToy, RecurrentToy, TokenToy])
def test_per_video_weights_equal_the_lora_branches_values_and_gradients(toy):
    """Folding each video's adapter into its own weight (one grouped conv / batched matmul) gives
    the same outputs and the same adapter gradients as hooks adding the LoRA branch; the layers'
    own forward comes back on exit."""
    model = toy().requires_grad_(False)
    spec = find_targets(model, rank=2, alpha=3.0)
    x = torch.randn(3, 4, 3, 10, 10) if toy is not TokenToy else torch.randn(3 * 2, 3, 5, 5)
    results = []
    for per_video in (False, True):
        adapters = random_adapters(spec, 3, requires_grad=True)
        with apply_adapters(model, spec, adapters, per_video_weights=per_video):
            y = model(x)
        (y**2).mean().backward()
        results.append((y.detach(), [t.grad for pair in adapters.values() for t in pair]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=ATOL, rtol=0)
    for g_hooks, g_weights in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g_weights, g_hooks, atol=1e-4, rtol=1e-4)
    assert all("forward" not in vars(model.get_submodule(t.name)) for t in spec.targets)
    adapters = random_adapters(spec, 2)
    with (
        pytest.raises(ValueError, match="not a multiple of the 2 videos"),
        apply_adapters(model, spec, adapters, per_video_weights=True),
    ):
        model(x[:3] if toy is TokenToy else x[:1, :3])
    assert all("forward" not in vars(model.get_submodule(t.name)) for t in spec.targets)
