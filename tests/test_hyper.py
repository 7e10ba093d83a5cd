"""Stage 2: the hypernetwork's gradient path, identity at initialisation, the refine mode's
second-order gradient, a frozen base, and the bad inputs."""

import json
import math
from pathlib import Path

import pytest
import torch

from hypernet.config import compose_config
from hypernet.models.base import WindowVSR
from hypernet.models.generator import LoRAGenerator
from hypernet.models.lora import apply_adapters, find_targets
from hypernet.sr import charbonnier
from hypernet.systems.hyper_lora import HyperLoRASystem
from hypernet.train import run
from tests.helpers import TINY_BASE, TINY_HYPER, compose_train, tiny_batch


@pytest.fixture(scope="module")
def base_ckpt(tiny_checkpoints) -> Path:
    return tiny_checkpoints["base"]


def tiny_system(base_ckpt: Path, *overrides: str) -> HyperLoRASystem:
    """The stage-2 system with the config's hypernet and optim options, made small; `overrides`
    as on the command line (hypernet.encoder.source=conv)."""
    cfg = compose_config("train", [*TINY_HYPER, *overrides])
    return HyperLoRASystem(base_ckpt=str(base_ckpt), model=None, hypernet=cfg.hypernet, optim=cfg.optim)


@pytest.mark.parametrize(
    ("source", "mode"),
    [
        ("base", "direct"),
        ("conv", "direct"),
        ("stats", "direct"),
        ("degradation", "direct"),
        ("base", "refine"),
        ("base", "crossscale"),
    ],
)
def test_gradient_reaches_every_hypernet_parameter_and_not_the_base(base_ckpt, source, mode):
    system = tiny_system(
        base_ckpt, f"hypernet.encoder.source={source}", f"hypernet.refine.mode={mode}"
    ).train()
    # move off the zero-initialised gates so that every head receives gradient
    with torch.no_grad():
        system.generator.gates.fill_(0.5)
    batch = tiny_batch()
    closeups = torch.ones(2, 3, dtype=torch.bool)  # crossscale: every context frame a close-up
    adapters = system.adapters_for(batch["context"], batch["context_times"], batch["degradation"], closeups)
    loss = torch.nn.functional.l1_loss(system.sr(batch["lr"], adapters), batch["hr"])
    loss.backward()
    missing = [
        n
        for n, p in system.named_parameters()
        if p.requires_grad
        and (p.grad is None or not p.grad.abs().sum() > 0)
        and not (n == "refine.log_lr" and mode == "direct")
        and n != "generator.static_latents"
    ]
    assert not missing
    assert all(not p.requires_grad and p.grad is None for p in system.base.parameters())
    assert not system.base.training


@pytest.mark.parametrize("mode", ["direct", "refine"])
def test_identity_at_initialisation(base_ckpt, mode):
    system = tiny_system(base_ckpt, "hypernet.refine.mode=direct").eval()
    batch = tiny_batch()
    with torch.no_grad():
        adapters = system.adapters_for(batch["context"], batch["context_times"])
        assert torch.equal(system.sr(batch["lr"], adapters), system.sr(batch["lr"], None))


# (mode, normalize, noise)
REFINED = [("refine", False, False), ("crossscale", False, False), ("crossscale", True, True)]


@pytest.mark.parametrize(("mode", "normalize", "noise"), REFINED)
def test_refine_second_order_gradient_matches_finite_differences(base_ckpt, mode, normalize, noise):
    """The SR loss's gradient reaches the hypernetwork through the inner steps: the step sizes and
    (crossscale) the blur act on the adapters only through those steps, and match finite
    differences, as does the generator's gate; normalised steps on noisy pairs too, with the
    noise's gain."""
    torch.manual_seed(0)
    system = (
        tiny_system(
            base_ckpt,
            f"hypernet.refine.mode={mode}",
            "hypernet.refine.steps=2",
            "hypernet.refine.lr=0.5",
            f"hypernet.refine.normalize={normalize}",
            f"hypernet.refine.noise={noise}",
        )
        .double()
        .train()
    )
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=1).items()}
    closeups = torch.tensor([[True, False, True]])  # crossscale: its steps read frames 0 and 2

    def outer_loss() -> torch.Tensor:
        adapters = system.adapters_for(batch["context"], batch["context_times"], closeups=closeups)
        return ((system.sr(batch["lr"], adapters) - batch["hr"]) ** 2).mean()

    system.zero_grad()
    outer_loss().backward()
    checked = [(system.refine.log_lr, 0), (system.generator.gates, 1)]
    if mode == "crossscale":
        checked.append((system.refine.log_blur, ()))
    if noise:
        checked.append((system.refine.log_noise_gain, ()))
    for param, index in checked:
        analytic = param.grad[index].item()
        assert analytic != 0
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
    system.refine.first_order = True
    system.zero_grad()
    outer_loss().backward()
    assert system.refine.log_lr.grad[0].item() != pytest.approx(analytic, rel=1e-6)


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
        (["hypernet.lora.include=[decoder.*]"], r"decoder"),
        (
            ["hypernet.lora.overrides={conv_first:{rank:10000}}"],
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
    system = tiny_system(base_ckpt, "hypernet.encoder.source=degradation").eval()
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
    system = tiny_system(base_ckpt, "hypernet.encoder.feature_layers=[conv_first,body.0.*]")
    assert system.encoder.tokenizer.layer_names == ["conv_first", "body.0.conv1", "body.0.conv2"]
    assert len(system.spec.names) > 3  # the adapters still cover every target
    batch = tiny_batch()
    adapters = system.adapters_for(batch["context"], batch["context_times"])
    assert set(adapters) == set(system.spec.names)
    with pytest.raises(ValueError, match=r"hypernet.encoder.feature_layers=\['head\*'\] matches none"):
        tiny_system(base_ckpt, "hypernet.encoder.feature_layers=[head*]")


def test_stage2_on_the_recurrent_base_works_with_the_default_rank(tmp_path):
    """Its flow head is smaller than the default rank: the rank is capped there, not an error."""
    out = tmp_path / "recurrent"
    run(compose_train([*TINY_BASE, "model=recurrent", "model.channels=8"], out / "base"))
    cfg = compose_train(
        [*TINY_BASE, "model=recurrent", "model.channels=8", *TINY_HYPER, "hypernet.lora.rank=4",
         f"base_ckpt={out / 'base' / 'checkpoints' / 'last.ckpt'}"],
        out / "hyper",
    )  # fmt: skip
    metrics = run(cfg)
    assert "test/gain_y" in metrics
    system = HyperLoRASystem.load_from_checkpoint(out / "hyper" / "checkpoints" / "last.ckpt", base_ckpt=None)
    ranks = {t.rank for t in system.spec.targets}
    assert max(ranks) == 4 and min(ranks) < 4


def test_generator_gives_each_layer_the_adapters_its_heads_give_it_alone():
    """The generator calls each pair of heads once for all the layers of its shape (the stage-2
    step's cost): every layer's A and B, and the gradients they send back, are those of that
    layer's heads applied to its own query alone, to float rounding (1e-6)."""
    torch.manual_seed(0)
    spec = find_targets(WindowVSR(channels=8, num_blocks=2, upsampler="direct"), rank=2)
    generator = LoRAGenerator(spec=spec, dim=16, num_heads=2)
    assert len(generator.heads_a) < len(spec.targets)  # layers do share heads here
    with torch.no_grad():
        generator.gates.copy_(torch.linspace(0.5, 1.5, len(spec.targets)))
    latents = torch.randn(3, 4, 16, requires_grad=True)
    weights = {t.name: (torch.randn(3, *t.a_shape), torch.randn(3, *t.b_shape)) for t in spec.targets}

    def weighted_sum(adapters) -> torch.Tensor:
        return sum((a * weights[n][0]).sum() + (b * weights[n][1]).sum() for n, (a, b) in adapters.items())

    def one_layer_at_a_time() -> dict:
        hidden = generator.norm(generator.query(latents))
        adapters = {}
        for i, t in enumerate(spec.targets):
            group = generator.shape_of[t.name]
            a = generator.heads_a[group](hidden[:, i]).view(-1, *t.a_shape) / math.sqrt(
                math.prod(t.a_shape[1:])
            )
            b = generator.heads_b[group](hidden[:, i]).view(-1, *t.b_shape) * generator.gates[i]
            adapters[t.name] = (a, b)
        return adapters

    results = []
    for make in (generator, one_layer_at_a_time):
        adapters = make(latents) if make is generator else make()
        inputs = [latents, *generator.parameters()]
        results.append((adapters, torch.autograd.grad(weighted_sum(adapters), inputs, allow_unused=True)))
    (made, made_grads), (alone, alone_grads) = results
    assert tuple(made) == tuple(spec.names)  # in the layers' order, as before
    for name in spec.names:
        for got, expected in zip(made[name], alone[name], strict=True):
            assert got.shape == expected.shape and got.is_contiguous()
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    for got, expected in zip(made_grads, alone_grads, strict=True):
        if expected is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_stage2_optimizer_steps_the_hypernet_as_the_per_tensor_adam_does(base_ckpt, monkeypatch):
    """configure_optimizers' Adam is the fused one (a quarter of the per-tensor loop's time on
    CPU): it trains the hypernetwork's parameters alone, the base's never, with the configured
    learning rate and weight decay, and takes the steps the loop takes, to float rounding."""
    system = tiny_system(base_ckpt).train()
    monkeypatch.setattr(system, "with_schedule", lambda optimizer: optimizer)
    fused = system.configure_optimizers()
    params = [p for group in fused.param_groups for p in group["params"]]
    trained = {id(p) for p in params}
    assert params and not trained & {id(p) for p in system.base.parameters()}
    assert id(system.refine.log_lr) not in trained  # direct mode: the step sizes take no part
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    loop = torch.optim.Adam(
        copies, lr=system.optim["lr"], weight_decay=system.optim["weight_decay"], foreach=False
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for param, copy in zip(params, copies, strict=True):
            param.grad = torch.randn(param.shape, generator=generator)
            copy.grad = param.grad.clone()
        fused.step()
        loop.step()
    for param, copy in zip(params, copies, strict=True):
        torch.testing.assert_close(param.detach(), copy.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("mode", "normalize", "noise"), REFINED)
def test_a_videos_refined_adapters_do_not_depend_on_its_batch(base_ckpt, mode, normalize, noise):
    """The inner loss sums the videos' own means, and a normalised step divides by each video's own
    RMS: a video refined alone takes the steps it takes beside others (a mean over the batch
    would make its step size shrink with the batch)."""
    system = (
        tiny_system(
            base_ckpt,
            f"hypernet.refine.mode={mode}",
            "hypernet.refine.lr=0.5",
            f"hypernet.refine.normalize={normalize}",
            f"hypernet.refine.noise={noise}",
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=3).items()}
    closeups = torch.tensor([[True, False, True], [True, True, True], [False, True, False]])
    together = system.adapters_for(batch["context"], batch["context_times"], closeups=closeups)
    alone = system.adapters_for(batch["context"][1:2], batch["context_times"][1:2], closeups=closeups[1:2])
    for name, (a, b) in alone.items():
        torch.testing.assert_close(a[0], together[name][0][1], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b[0], together[name][1][1], rtol=1e-9, atol=1e-12)


def test_a_normalised_step_moves_each_layer_by_its_step_size(base_ckpt):
    """One normalised step moves each video's layer (A and B together) by a root mean square of
    exactly its step size, whatever its gradient's scale, and in the gradient's direction; a bad
    option is one error naming it."""
    system = tiny_system(
        base_ckpt, "hypernet.refine.mode=refine", "hypernet.refine.lr=0.01", "hypernet.refine.normalize=true"
    )
    system = system.double().eval()
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
        system.refine.log_lr[0] = math.log(0.002)  # one layer's step size learned apart
    batch = {k: v.double() for k, v in tiny_batch(v=2).items()}
    generated = system.generator(system.encoder.encode_context(batch["context"], batch["context_times"]))
    refined = system.adapters_for(batch["context"], batch["context_times"])
    plain = tiny_system(base_ckpt, "hypernet.refine.mode=refine", "hypernet.refine.lr=0.01").double().eval()
    plain.load_state_dict(system.state_dict())
    plain_refined = plain.adapters_for(batch["context"], batch["context_times"])
    for i, name in enumerate(system.spec.names):
        step = 0.002 if i == 0 else 0.01
        moved = torch.cat([(refined[name][f] - generated[name][f]).flatten(1) for f in range(2)], dim=1)
        rms = moved.pow(2).mean(dim=1).sqrt()
        torch.testing.assert_close(rms, torch.full_like(rms, step), rtol=1e-6, atol=0)
        plain_moved = torch.cat(
            [(plain_refined[name][f] - generated[name][f]).flatten(1) for f in range(2)], 1
        )
        assert (torch.nn.functional.cosine_similarity(moved, plain_moved) > 1 - 1e-9).all()


def test_normalised_steps_keep_the_gradient_finite_while_the_gates_are_closed(base_ckpt):
    """At initialisation every generated B is zero, so A's inner gradient is exactly zero: the
    normalised second-order step must not turn that into an exploding outer gradient (dividing a
    zero gradient by its own RMS did: 1e7 against 1e-3)."""
    sizes = {}
    for normalize in (False, True):
        torch.manual_seed(0)
        system = tiny_system(
            base_ckpt,
            "hypernet.refine.mode=crossscale",
            "hypernet.refine.steps=3",
            "hypernet.refine.lr=3e-3",
            f"hypernet.refine.normalize={normalize}",
            "hypernet.refine.noise=true",
        ).train()
        assert not system.generator.gates.any()
        batch = tiny_batch(v=2)
        closeups = torch.tensor([[True, False, True], [True, True, False]])
        adapters = system.adapters_for(batch["context"], batch["context_times"], closeups=closeups)
        ((system.sr(batch["lr"], adapters) - batch["hr"]) ** 2).mean().backward()
        grads = [p.grad.flatten() for n, p in system.named_parameters() if p.grad is not None]
        sizes[normalize] = torch.cat(grads).norm().item()
    assert math.isfinite(sizes[True]) and sizes[True] < 100 * sizes[False]


def test_refine_shape_options_are_checked(base_ckpt):
    """normalize and noise: booleans, and only where there are steps to shape."""
    for option in ("normalize", "noise"):
        with pytest.raises(ValueError, match=f"hypernet.refine.{option}=.sometimes. must be true or false"):
            tiny_system(base_ckpt, "hypernet.refine.mode=refine", f"hypernet.refine.{option}=sometimes")
        with pytest.raises(ValueError, match=f"hypernet.refine.{option}=true .* hypernet.refine.mode=direct"):
            tiny_system(base_ckpt, "hypernet.refine.mode=direct", f"hypernet.refine.{option}=true")


def test_direct_weight_is_checked(base_ckpt):
    with pytest.raises(ValueError, match=r"hypernet.refine.direct_weight=-1.0 must be a number >= 0"):
        tiny_system(base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.direct_weight=-1.0")
    with pytest.raises(ValueError, match=r"hypernet.refine.direct_weight=1.0 .* hypernet.refine.mode=direct"):
        tiny_system(base_ckpt, "hypernet.refine.mode=direct", "hypernet.refine.direct_weight=1.0")


def test_direct_weight_scores_the_generated_adapters_of_the_videos_that_take_steps(base_ckpt):
    """The training loss with hypernet.refine.direct_weight: the refined adapters' loss (as without
    it), plus, for each video that takes steps, its generated adapters' loss before the steps at
    that weight, over the batch's videos. A video without close-ups adds nothing."""
    system = (
        tiny_system(base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.lr=0.5").double().train()
    )
    system.log = lambda *args, **kwargs: None  # no trainer to log to
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=2).items()}
    batch["context_closeup"] = torch.tensor([[True, True, False], [False, False, False]])
    plain = system.training_step(batch, 0)
    adapters = system.adapters_for(
        batch["context"], batch["context_times"], batch["degradation"], batch["context_closeup"]
    )
    assert plain.item() == pytest.approx(charbonnier(system.sr(batch["lr"], adapters), batch["hr"]).item())
    system.refine.direct_weight = 0.5
    weighted = system.training_step(batch, 0)
    generated = system.generator(
        system.encoder.encode_context(batch["context"], batch["context_times"], batch["degradation"])
    )
    first = {k: (a[:1], b[:1]) for k, (a, b) in generated.items()}  # video 0 alone takes steps
    before = charbonnier(system.sr(batch["lr"][:1], first), batch["hr"][:1])
    assert (weighted - plain).item() == pytest.approx(0.5 * before.item() / 2, rel=1e-9)
    batch["context_closeup"] = torch.zeros(2, 3, dtype=torch.bool)  # no video takes steps: nothing added
    system.refine.direct_weight = 0.0
    none_plain = system.training_step(batch, 0)
    system.refine.direct_weight = 0.5
    assert system.training_step(batch, 0).item() == none_plain.item()


def test_split_is_checked(base_ckpt):
    crossscale = "hypernet.refine.mode=crossscale"
    with pytest.raises(ValueError, match=r"hypernet.refine.split=.sometimes. must be true or false"):
        tiny_system(base_ckpt, crossscale, "hypernet.refine.split=sometimes")
    with pytest.raises(ValueError, match=r"hypernet.refine.split=true .* hypernet.refine.mode=direct"):
        tiny_system(base_ckpt, "hypernet.refine.mode=direct", "hypernet.refine.split=true")
    with pytest.raises(ValueError, match=r"split=true .*direct_weight=1.0 .*: choose one"):
        tiny_system(base_ckpt, crossscale, "hypernet.refine.split=true", "hypernet.refine.direct_weight=1.0")
    with pytest.raises(
        ValueError, match=r"split=true halves each layer's rank, and '.*' has rank 1: set hypernet.lora.rank"
    ):
        tiny_system(base_ckpt, crossscale, "hypernet.refine.split=true", "hypernet.lora.rank=1")


def test_split_steps_the_second_half_with_the_first_in_place_and_drops_it_without_steps(base_ckpt):
    """hypernet.refine.split: every video keeps the generated first half of each layer's rank; the
    steps move the second half alone, scored with the first half in place; a video that takes no
    step gets its second half dropped (B zero), so its adapter is the first half alone."""
    from hypernet.systems.hyper_lora import rank_halves, rank_joined, refine_steps

    system = tiny_system(
        base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.split=true", "hypernet.refine.lr=0.5"
    ).double()
    system.eval()
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=2).items()}
    closeups = torch.tensor([[True, True, False], [False, False, False]])  # video 1 takes no step
    generated = system.generated_adapters(batch["context"], batch["context_times"])
    made = system.adapters_for(batch["context"], batch["context_times"], closeups=closeups)
    kept, start = rank_halves(generated)
    made_kept, made_moved = rank_halves(made)
    stepped = refine_steps(
        system.base, system.spec, start, batch["context"], count=system.refine.steps,
        step_sizes=system.refine.log_lr.exp(), normalize=False, second_order=False, weights=closeups,
        blur_sigma=system.refine.log_blur.exp(), under=kept,
    )  # fmt: skip
    for name in generated:
        assert torch.equal(made_kept[name][0], kept[name][0]) and torch.equal(
            made_kept[name][1], kept[name][1]
        )
        assert torch.equal(made_moved[name][1][1], torch.zeros_like(start[name][1][1]))  # dropped
        # video 0: stepped with the first half in place, both factors
        assert torch.allclose(made_moved[name][0][0], stepped[name][0][0])
        assert torch.allclose(made_moved[name][1][0], stepped[name][1][0])
    assert any(not torch.equal(made_moved[n][1][0], start[n][1][0]) for n in generated)  # the step moved it
    # the halves join back into the whole: the rank of every layer as the spec says
    whole = rank_joined(kept, start)
    assert all(
        torch.equal(whole[n][0], generated[n][0]) and torch.equal(whole[n][1], generated[n][1]) for n in whole
    )
    # no close-up marked anywhere (a user's video): the first half alone for every video
    plain = system.adapters_for(batch["context"], batch["context_times"])
    assert all(not plain[n][1][..., 1:].any() for n in plain)  # rank 2: the second half is column 1
    # trained through: every hypernet parameter gets a gradient through the steps
    system.train()
    made = system.adapters_for(batch["context"], batch["context_times"], closeups=~torch.zeros_like(closeups))
    charbonnier(system.sr(batch["lr"], made), batch["hr"]).backward()
    missing = [n for n, p in system.named_parameters() if p.requires_grad and not n.startswith("base.")
               and (p.grad is None or not p.grad.abs().sum() > 0) and n != "generator.static_latents"]  # fmt: skip
    assert not missing


def test_detach_kept_trains_the_first_half_on_its_own_loss_alone(base_ckpt):
    """hypernet.refine.detach_kept: the steps' path does not reach the first half of a video that
    takes steps (its gradient there is zero), a video without steps trains it as it is, and the
    training loss adds each stepped video's first half scored alone."""
    from hypernet.systems.hyper_lora import rank_halves, rank_joined

    crossscale = ("hypernet.refine.mode=crossscale", "hypernet.refine.split=true", "hypernet.refine.lr=0.5")
    with pytest.raises(ValueError, match=r"detach_kept=true .* set hypernet.refine.split=true too"):
        tiny_system(base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.detach_kept=true")
    system = tiny_system(base_ckpt, *crossscale, "hypernet.refine.detach_kept=true").double().train()
    system.log = lambda *args, **kwargs: None  # no trainer to log to
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=2).items()}
    batch["context_closeup"] = torch.tensor([[True, True, False], [False, False, False]])  # video 0 steps
    generated = system.generated_adapters(batch["context"], batch["context_times"])
    leaves = {
        n: (a.detach().requires_grad_(True), b.detach().requires_grad_(True))
        for n, (a, b) in generated.items()
    }
    refined = system.refine(system.base, leaves, batch["context"], batch["context_closeup"])
    loss = charbonnier(system.sr(batch["lr"], refined), batch["hr"])
    flat = [t for pair in leaves.values() for t in pair]
    grads = dict(zip(leaves, zip(*[iter(torch.autograd.grad(loss, flat))] * 2, strict=True), strict=True))
    first, second = rank_halves(grads)
    assert all(
        not a[0].any() and not b[0].any() for a, b in first.values()
    )  # video 0's first half: no gradient
    assert any(b[1].any() for _, b in first.values())  # video 1 (no steps) trains it
    assert any(b[0].any() for _, b in second.values())  # video 0's steps train the second half
    # the loss: the refined adapters' loss plus video 0's first half scored alone, over the batch
    total = system.training_step(batch, 0)
    kept, rest = rank_halves({n: (a[:1], b[:1]) for n, (a, b) in generated.items()})
    alone = rank_joined(kept, {n: (a, torch.zeros_like(b)) for n, (a, b) in rest.items()})
    expected = loss + charbonnier(system.sr(batch["lr"][:1], alone), batch["hr"][:1]) / 2
    assert total.item() == pytest.approx(expected.item(), rel=1e-9)


def test_noise_level_reads_white_noise_and_not_smooth_structure():
    """sr.noise_level: a smooth ramp reads (almost) nothing, the same ramp with white noise of
    sigma 0.03 reads 0.03 within 5%, and the weights choose the frames averaged."""
    from hypernet.sr import noise_level

    ramp = torch.linspace(0, 1, 48)[None, :].expand(48, 48)
    clean = ramp.expand(1, 2, 3, 48, 48).double()
    noisy = clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)).double()
    assert noise_level(clean).item() < 1e-6
    assert noise_level(noisy).item() == pytest.approx(0.03, rel=0.05)
    mixed = torch.stack([clean[0, 0], noisy[0, 1]])[None]  # frame 0 clean, frame 1 noisy
    assert noise_level(mixed, torch.tensor([[True, False]])).item() < 1e-6
    assert noise_level(mixed, torch.tensor([[False, True]])).item() == pytest.approx(0.03, rel=0.05)


def test_crossscale_takes_no_step_on_a_video_without_closeups(base_ckpt):
    system = (
        tiny_system(base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.lr=0.5").double().eval()
    )
    with torch.no_grad():
        system.generator.gates.fill_(0.3)
    batch = {k: v.double() for k, v in tiny_batch(v=2).items()}
    none = torch.zeros(2, 3, dtype=torch.bool)
    generated = system.generator(system.encoder.encode_context(batch["context"], batch["context_times"]))
    some = system.adapters_for(batch["context"], batch["context_times"], closeups=~none)
    assert any(not torch.equal(some[name][1], b) for name, (_, b) in generated.items())
    # no close-up marked, or no marks at all (a user's video): the generated adapters as they are
    for closeups in (none, None):
        refined = system.adapters_for(batch["context"], batch["context_times"], closeups=closeups)
        for name, (a, b) in generated.items():
            assert torch.equal(refined[name][1], b) and torch.equal(refined[name][0], a)
    # first order: the blur is a fixed buffer (it would get no gradient), the step sizes still learn
    first = tiny_system(base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.first_order=true")
    assert "refine.log_blur" in first.state_dict() and "refine.log_blur" not in dict(first.named_parameters())


def test_crossscale_without_closeups_in_the_data_is_refused_before_training(base_ckpt, tmp_path):
    from hypernet.train import check_config

    cfg = compose_train(
        [*TINY_BASE, *TINY_HYPER, f"base_ckpt={base_ckpt}", "hypernet.refine.mode=crossscale"],
        tmp_path / "run",
    )
    with pytest.raises(ValueError, match=r"hypernet.refine.mode=crossscale .* data.source=stills draws none"):
        check_config(cfg)
    # on several processes DDP must be told that a batch without close-ups leaves parameters unused
    memory = [*TINY_BASE, *TINY_HYPER, f"base_ckpt={base_ckpt}", "hypernet.refine.mode=crossscale"]
    memory += [
        "data.source={procedural: 0.5, recurrence: 0.5}",
        "data.val_source=procedural",
        "data.num_frames=15",
    ]
    cfg = compose_train([*memory, "trainer=ddp_cpu"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"trainer.strategy=ddp_find_unused_parameters_true"):
        check_config(cfg)
    check_config(
        compose_train(
            [*memory, "trainer=ddp_cpu", "trainer.strategy=ddp_find_unused_parameters_true"], tmp_path / "run"
        )
    )
    check_config(compose_train(memory, tmp_path / "run"))
    with pytest.raises(ValueError, match=r"hypernet.refine.blur=5"):
        tiny_system(base_ckpt, "hypernet.refine.mode=crossscale", "hypernet.refine.blur=5")
