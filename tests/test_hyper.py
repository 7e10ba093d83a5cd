"""Stage 2: the hypernetwork's gradient path, identity at initialisation, the refine mode's
second-order gradient, a frozen base, and the bad inputs."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hypernet.config import CONFIG_DIR
from hypernet.models.lora import apply_adapters
from hypernet.systems.hyper_lora import HyperLoRASystem
from hypernet.train import run
from tests.helpers import TINY_BASE, TINY_HYPER, compose_train, tiny_batch


@pytest.fixture(scope="module")
def base_ckpt(tiny_checkpoints) -> Path:
    return tiny_checkpoints["base"]


def tiny_system(base_ckpt: Path, **options) -> HyperLoRASystem:
    """The stage-2 system with the config's hypernet and optim options, made small."""
    hypernet = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/hypernet/default.yaml"))
    optim = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/optim/hyper.yaml"))
    small = dict(dim=16, num_latents=4, num_heads=2, num_blocks=1, conv_channels=8, rank=2)
    return HyperLoRASystem(base_ckpt=str(base_ckpt), hypernet={**hypernet, **small, **options}, optim=optim)


@pytest.mark.parametrize(
    ("source", "mode"),
    [
        ("base", "direct"),
        ("conv", "direct"),
        ("stats", "direct"),
        ("degradation", "direct"),
        ("base", "refine"),
    ],
)
def test_gradient_reaches_every_hypernet_parameter_and_not_the_base(base_ckpt, source, mode):
    system = tiny_system(base_ckpt, source=source, mode=mode).train()
    # move off the zero-initialised gates so that every head receives gradient
    with torch.no_grad():
        system.generator.gates.fill_(0.5)
    batch = tiny_batch()
    adapters = system.adapters_for(batch["context"], batch["context_times"], batch["degradation"])
    loss = torch.nn.functional.l1_loss(system.sr(batch["lr"], adapters), batch["hr"])
    loss.backward()
    missing = [
        n
        for n, p in system.named_parameters()
        if p.requires_grad
        and (p.grad is None or not p.grad.abs().sum() > 0)
        and not (n == "log_inner_lr" and mode == "direct")
        and n != "generator.static_latents"
    ]
    assert not missing
    assert all(not p.requires_grad and p.grad is None for p in system.base.parameters())
    assert not system.base.training


@pytest.mark.parametrize("mode", ["direct", "refine"])
def test_identity_at_initialisation(base_ckpt, mode):
    system = tiny_system(base_ckpt, mode="direct").eval()
    batch = tiny_batch()
    with torch.no_grad():
        adapters = system.adapters_for(batch["context"], batch["context_times"])
        assert torch.equal(system.sr(batch["lr"], adapters), system.sr(batch["lr"], None))


def test_refine_second_order_gradient_matches_finite_differences(base_ckpt):
    torch.manual_seed(0)
    system = tiny_system(base_ckpt, mode="refine", inner_steps=2, inner_lr=0.5).double().train()
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=1).items()}

    def outer_loss() -> torch.Tensor:
        adapters = system.adapters_for(batch["context"], batch["context_times"])
        return ((system.sr(batch["lr"], adapters) - batch["hr"]) ** 2).mean()

    system.zero_grad()
    outer_loss().backward()
    for param, index in ((system.log_inner_lr, 0), (system.generator.gates, 1)):
        analytic = param.grad[index].item()
        eps = 1e-5
        with torch.no_grad():
            param[index] += eps
            plus = outer_loss().item()
            param[index] -= 2 * eps
            minus = outer_loss().item()
            param[index] += eps
        numeric = (plus - minus) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    # first order drops the second-order terms: a different (approximate) gradient
    system.first_order = True
    system.zero_grad()
    outer_loss().backward()
    assert system.log_inner_lr.grad[0].item() != pytest.approx(analytic, rel=1e-6)


def test_stage2_run_keeps_the_base_bit_identical(base_ckpt, tmp_path):
    cfg = compose_train([*TINY_BASE, *TINY_HYPER, f"base_ckpt={base_ckpt}"], tmp_path / "hyper")
    before = {k: v.clone() for k, v in torch.load(base_ckpt)["state_dict"].items()}
    metrics = run(cfg)
    saved = json.loads((tmp_path / "hyper" / "metrics.json").read_text())
    for key in ("val/psnr_y", "val/psnr_y_base", "val/psnr_y_shuffled", "val/adapter_spread", "val/gain_y"):
        assert key in saved and key in metrics
    after = torch.load(tmp_path / "hyper" / "checkpoints" / "last.ckpt")["state_dict"]
    base_after = {k.removeprefix("base."): v for k, v in after.items() if k.startswith("base.")}
    base_before = {k.removeprefix("model."): v for k, v in before.items() if k.startswith("model.")}
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_after[k], base_before[k]) for k in base_before)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hypernet.targets=[decoder.*]"], r"decoder"),
        (
            ["hypernet.overrides={conv_first:{rank:10000}}"],
            r"overrides\['conv_first'\]\['rank'\]=10000 is too large",
        ),
        (["data.context_frames=50"], r"context_frames=50 .*8 frames"),
        (["model.channels=9"], r"base_ckpt=.*model"),
    ],
)
def test_bad_stage2_inputs(base_ckpt, tmp_path, overrides, message):
    cfg = compose_train([*TINY_BASE, *TINY_HYPER, f"base_ckpt={base_ckpt}", *overrides], tmp_path / "bad")
    with pytest.raises(ValueError, match=message):
        run(cfg)


def test_adapters_are_per_video_in_one_batch(base_ckpt):
    """Two videos in one batch each get their own adapter: the batched SR equals per-video calls."""
    system = tiny_system(base_ckpt).eval()
    with torch.no_grad():
        system.generator.gates.fill_(1.0)
    batch = tiny_batch()
    with torch.no_grad():
        adapters = system.adapters_for(batch["context"], batch["context_times"])
        together = system.sr(batch["lr"], adapters)
        for v in range(2):
            single = {k: (a[v : v + 1], b[v : v + 1]) for k, (a, b) in adapters.items()}
            with apply_adapters(system.base, system.spec, single):
                alone = system.base(batch["lr"][v : v + 1])
            assert torch.allclose(together[v : v + 1], alone, atol=1e-5)


def test_adapter_spread_is_zero_for_one_shared_adapter_and_grows_with_differences(base_ckpt):
    from hypernet.models.generator import adapter_spread
    from hypernet.models.lora import init_adapters

    spec = tiny_system(base_ckpt).spec
    one = init_adapters(spec, num_videos=1, generator=torch.Generator().manual_seed(0))
    one = {k: (a, torch.ones_like(b)) for k, (a, b) in one.items()}
    shared = {k: (a.expand(3, *a.shape[1:]), b.expand(3, *b.shape[1:])) for k, (a, b) in one.items()}
    assert adapter_spread(spec, shared).item() == pytest.approx(0.0, abs=1e-6)
    varied = {k: (a, b * torch.tensor([0.5, 1.0, 1.5]).view(3, 1, 1)) for k, (a, b) in shared.items()}
    # |dW_v - mean| / |dW_v| averaged: scales 0.5, 1, 1.5 around 1 -> (0.5 + 0 + 0.5) / (0.5 + 1 + 1.5)
    assert adapter_spread(spec, varied).item() == pytest.approx(1 / 3, rel=1e-4)


def test_degradation_ceiling_reads_the_parameters_not_the_frames(base_ckpt):
    system = tiny_system(base_ckpt, source="degradation").eval()
    with torch.no_grad():
        system.generator.gates.fill_(0.5)
    batch = tiny_batch()
    adapters = system.adapters_for(batch["context"], batch["context_times"], batch["degradation"])
    other_frames = system.adapters_for(
        torch.rand_like(batch["context"]), batch["context_times"], batch["degradation"]
    )
    for name, (a, b) in adapters.items():
        assert torch.equal(a, other_frames[name][0]) and torch.equal(b, other_frames[name][1])
    a0 = adapters[system.spec.names[0]][0]
    assert not torch.allclose(a0[0], a0[1])  # two degradations, two adapters
    with pytest.raises(ValueError, match="true degradation parameters"):
        system.adapters_for(batch["context"], batch["context_times"])
    with pytest.raises(ValueError, match="degradation-ceiling control"):
        system.adapters_from_stream([batch["context"][:1]], num_frames=3)


def test_feature_layers_choose_what_the_encoder_reads(base_ckpt):
    system = tiny_system(base_ckpt, feature_layers=["conv_first", "body.0.*"])
    assert system.encoder.tokenizer.layer_names == ["conv_first", "body.0.conv1", "body.0.conv2"]
    assert len(system.spec.names) > 3  # the adapters still cover every target
    batch = tiny_batch()
    adapters = system.adapters_for(batch["context"], batch["context_times"])
    assert set(adapters) == set(system.spec.names)
    with pytest.raises(ValueError, match=r"hypernet.feature_layers=\['head\*'\] matches none"):
        tiny_system(base_ckpt, feature_layers=["head*"])


def test_stage2_on_the_recurrent_base_works_with_the_default_rank(tmp_path):
    """Its flow head is smaller than the default rank: the rank is capped there, not an error."""
    out = tmp_path / "recurrent"
    run(compose_train([*TINY_BASE, "model=recurrent", "model.channels=8"], out / "base"))
    cfg = compose_train(
        [*TINY_BASE, "model=recurrent", "model.channels=8", *TINY_HYPER, "hypernet.rank=4",
         f"base_ckpt={out / 'base' / 'checkpoints' / 'last.ckpt'}"],
        out / "hyper",
    )  # fmt: skip
    metrics = run(cfg)
    assert "test/gain_y" in metrics
    system = HyperLoRASystem.load_from_checkpoint(out / "hyper" / "checkpoints" / "last.ckpt", base_ckpt=None)
    ranks = {t.rank for t in system.spec.targets}
    assert max(ranks) == 4 and min(ranks) < 4


def test_checkpoint_of_the_earlier_parameter_names_loads_to_the_same_adapters(gated_checkpoint, tmp_path):
    """Checkpoints written before the encoder and generator shared one attention block and one
    feed-forward (fused q/k/v, nn.MultiheadAttention, `mlp` / `proj` names), and before the
    system took its options grouped, still load, and predict the same adapters."""
    from hypernet.systems.hyper_lora import load_hypernet

    state = torch.load(gated_checkpoint, map_location="cpu", weights_only=False)
    old = {}
    for key, tensor in state["state_dict"].items():  # today's names written the old way, by hand
        if key.endswith(("attention.to_kv.weight", "attention.to_kv.bias")):
            continue
        if ".attention.to_q." in key:
            kind = key.rsplit(".", 1)[1]
            fused = torch.cat([tensor, state["state_dict"][key.replace("to_q", "to_kv")]])
            if key.startswith("generator."):
                old[f"generator.query.attention.in_proj_{kind}"] = fused
            elif key.startswith("encoder.blocks."):
                old[key.replace("attention.to_q", "qkv")] = fused
            else:
                old[key.replace("attention.to_q", "to_q")] = tensor
                old[key.replace("attention.to_q", "to_kv")] = state["state_dict"][
                    key.replace("to_q", "to_kv")
                ]
            continue
        key = key.replace("generator.query.attention.to_out", "generator.query.attention.out_proj")
        key = key.replace("generator.query.feed_forward.norm", "generator.query.mlp.0")
        key = key.replace("generator.query.feed_forward.net.0", "generator.query.mlp.1")
        key = key.replace("generator.query.feed_forward.net.2", "generator.query.mlp.3")
        key = key.replace("pooler.attention.to_out", "pooler.out").replace("attention.to_out", "proj")
        key = key.replace("feed_forward.norm", "norm_mlp").replace("feed_forward.net", "mlp")
        old[key] = tensor
    assert old.keys() != state["state_dict"].keys() and "encoder.blocks.0.qkv.weight" in old
    state["state_dict"] = old
    # and the options as they were kept then: flat, the base by its name, without the later ones
    h = state["hyper_parameters"]
    hypernet = {k: v for k, v in h["hypernet"].items() if k not in ("overrides", "context_tile")}
    model = {k: v for k, v in h["model"].items() if k != "_target_"} | {"name": "window"}
    flat = {"base_ckpt": h["base_ckpt"], "model": model, **hypernet, **h["optim"]}
    state["hyper_parameters"] = flat | {k: h[k] for k in ("crop_border", "log_images", "nonfinite_loss")}
    legacy = tmp_path / "legacy.ckpt"
    torch.save(state, legacy)
    video = torch.rand(1, 6, 3, 16, 16)
    with torch.no_grad():
        now = load_hypernet(gated_checkpoint).adapters_from_stream([video], num_frames=6)
        before = load_hypernet(legacy).adapters_from_stream([video], num_frames=6)
    assert any(b.abs().max() > 0 for _, b in now.values())  # the gates are open: B is not zero
    for name in now:
        torch.testing.assert_close(before[name][0], now[name][0], rtol=0, atol=0)
        torch.testing.assert_close(before[name][1], now[name][1], rtol=0, atol=0)
