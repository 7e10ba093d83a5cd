"""The GPU path: a stage-2 training step in bf16 autocast on CUDA (skipped, with the reason said,
on a machine without a GPU), and the GPU configs building a Trainer with the precision they name
(on any machine: without a GPU the same Trainer is built on the CPU accelerator)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hypernet.checkpointing import AtomicCheckpointIO
from hypernet.train import build_system
from tests.helpers import TINY_BASE, TINY_HYPER, compose_train, tiny_batch

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(
    not CUDA, reason="no CUDA GPU here: the bf16 stage-2 step runs only on a machine with one"
)
# training_step logs its loss; without a Trainer, Lightning warns that self.log has nowhere to go
@pytest.mark.filterwarnings("ignore:.*self.trainer.* reference is not registered")
def test_stage2_training_step_in_bf16_autocast_on_cuda(tmp_path):
    device = torch.device("cuda")
    # base_ckpt stays null: the system builds a fresh base from `model`, as when restoring a checkpoint
    system = build_system(compose_train([*TINY_BASE, *TINY_HYPER], tmp_path)).to(device).train()
    with torch.no_grad():
        system.generator.gates.fill_(0.5)  # off the zero initialisation, so that every head gets gradient
    batch = {k: v.to(device) for k, v in tiny_batch().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = system.training_step(batch, 0)
    assert loss is not None and loss.device.type == "cuda" and torch.isfinite(loss), loss
    loss.backward()

    trainable = {n: p for n, p in system.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("base.") for n in trainable)
    unused = ("log_inner_lr", "generator.static_latents")  # refine mode's step sizes; the static control's
    grads = {n: p.grad for n, p in trainable.items() if n not in unused}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads
    # a fresh base has layers whose output starts at zero (a zero weight gradient behind them), so
    # the check is that gradient reaches each part of the hypernetwork, not every single weight
    for part in ("encoder.", "generator."):
        assert sum(g.abs().sum().item() for n, g in grads.items() if n.startswith(part)) > 0, part
    assert all(not p.requires_grad and p.grad is None for p in system.base.parameters())
    assert not system.base.training

    gates = system.generator.gates.detach().clone()
    torch.optim.Adam(trainable.values(), lr=1e-3).step()
    assert all(torch.isfinite(p).all() for p in trainable.values())
    assert not torch.equal(gates, system.generator.gates)  # the step moved the hypernetwork


@pytest.mark.parametrize(
    ("overrides", "precision", "large_model"),
    [
        (["experiment=base_gpu"], "bf16-mixed", True),
        (["trainer=gpu"], "bf16-mixed", False),
        (["model=recurrent_gpu"], "32-true", True),  # a model config says nothing of precision
        (["model=recurrent_gpu", "trainer=gpu"], "bf16-mixed", True),
    ],
)
def test_gpu_configs_build_a_trainer_with_the_precision_they_name(
    tmp_path, overrides, precision, large_model
):
    cfg = compose_train(overrides, tmp_path)
    trainer_cfg = cfg.trainer
    if not CUDA:  # the same Trainer on the CPU accelerator: precision is what is checked here
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"accelerator": "cpu"})
    trainer = instantiate(trainer_cfg, logger=False, callbacks=[], plugins=[AtomicCheckpointIO()])
    assert trainer.precision == precision
    if CUDA and cfg.trainer.accelerator == "gpu":
        assert trainer.strategy.root_device.type == "cuda"
    parameters = sum(p.numel() for p in build_system(cfg).parameters())
    assert (parameters > 1_000_000) == large_model, parameters
