"""Stage 2: train the hypernetwork that turns a whole LR video into LoRA adapters for the frozen
base, by backpropagating the base's SR loss through the generated adapters.

The system is four parts over the frozen base, each made from its `_target_` in
configs/hypernet/default.yaml: `lora` (which layers get adapters, their ranks: a LoRASpec),
`encoder` (context -> latents; what it reads is `hypernet.encoder.source`, decided in
models/encoder.py alone), `generator` (latents -> adapters) and `refine`:

direct  adapters = generator(encoder(context))
refine  then k differentiable inner gradient steps on a self-supervised loss computed from the
        LR video alone (LR frames degraded once more and upscaled back by the adapted base), with
        learned per-layer step sizes; second-order (create_graph=True) unless first_order is set.

The base comes from a stage-1 checkpoint, is frozen (requires_grad False) and always in eval
mode; validation reports base vs base+hypernet per video, plus the collapse controls of
docs/design.md: `val/psnr_y_shuffled` (adapters from another video's context) and
`val/adapter_spread`.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypernet.checkpointing import NOT_RECORDED, read_checkpoint, trained_input
from hypernet.metrics import gain_summary, video_metrics
from hypernet.models.base import build_base
from hypernet.models.encoder import frame_times
from hypernet.models.generator import adapter_spread
from hypernet.models.lora import Adapters, LoRASpec
from hypernet.sr import adapted_sr, bicubic_upscale, charbonnier, inner_inputs, inner_loss, noise_level
from hypernet.systems.base_sr import BaseSRSystem
from hypernet.systems.common import (
    HYPERNET_PARTS,
    EvaluationTables,
    SRSystem,
    check_layout,
    plain,
    split_key,
)

MODES = ("direct", "refine", "crossscale")


def load_base(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The stage-1 base network (EMA weights when the run kept them) and its model config."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"base_ckpt={path} does not exist: train stage 1 first (experiment=base_quickstart)"
        )
    check_layout(read_checkpoint(path, option="base_ckpt="), path, option="base_ckpt=")
    try:
        stage1 = BaseSRSystem.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError, TypeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"base_ckpt={path} is not a stage-1 (BaseSRSystem) checkpoint: {e}") from e
    return stage1.eval_model(), dict(stage1.hparams["model"])


def load_hypernet(
    checkpoint: str | Path,
    *,
    map_location: str = "cpu",
    option: str = "--checkpoint",
    hypernet: Mapping[str, Any] | None = None,
) -> HyperLoRASystem:
    """A trained stage-2 system (eval mode) from its checkpoint alone: the frozen base's weights
    travel inside it, so the stage-1 checkpoint need not exist any more. `hypernet`: options that
    replace the checkpoint's (e.g. {"encoder": {"context_tile": None}}) before the system is built."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train stage 2 first (make quickstart)")
    saved = read_checkpoint(path, option=option)
    check_layout(saved, path, option=option)
    try:
        options = (
            {} if not hypernet else {"hypernet": merged(saved["hyper_parameters"]["hypernet"], hypernet)}
        )
        system = HyperLoRASystem.load_from_checkpoint(
            path, map_location=map_location, base_ckpt=None, weights_only=True, **options
        )
    except (KeyError, RuntimeError, TypeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(
            f"checkpoint {path} is not a readable stage-2 (HyperLoRASystem) checkpoint: {e}"
        ) from e
    check_finite(system, path)
    if saved.get("guard") is not None:
        from hypernet.guard import LearnedGuard

        system.learned_guard = LearnedGuard.from_state(saved["guard"])
    return system.eval()


def trained_context_frames(
    system: HyperLoRASystem, given: int | None, *, option: str, checkpoint: str | Path
) -> int:
    """How many frames spread over a video the hypernetwork reads: as many as it trained on (its
    checkpoint's data.context_frames) unless `option` gives another count, then used with one
    warning naming both (checkpointing.trained_input)."""
    trained = (system.trained_data or {}).get("context_frames", NOT_RECORDED)
    return trained_input(option, given, trained, checkpoint=checkpoint, fallback=8)


def fed_as_trained(cfg: Any, system: HyperLoRASystem) -> Any:
    """A copy of an entry point's cfg (eval, fit_guard) with the model's input options filled from
    its checkpoint: `data.scale`, `data.context_frames` and `context_tile` are null unless given,
    and then the checkpoint's; a given one that differs is used and warned about once
    (checkpointing.trained_input).
    `context_tile=0` reads context frames whole whatever the checkpoint says."""
    import copy

    from omegaconf import OmegaConf

    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, False)
    if cfg.data.get("scale") is not None and cfg.data.scale != system.scale:
        raise ValueError(
            f"data.scale={cfg.data.scale}: the model of {cfg.checkpoint} upscales x{system.scale}; "
            "leave data.scale unset (the checkpoint's) or evaluate a model of that scale"
        )
    cfg.data.scale = system.scale
    cfg.data.context_frames = trained_context_frames(
        system, cfg.data.get("context_frames"), option="data.context_frames", checkpoint=cfg.checkpoint
    )
    tile = trained_input(
        "context_tile",
        cfg.get("context_tile"),
        system.hparams["hypernet"]["encoder"].get("context_tile") or 0,
        checkpoint=cfg.checkpoint,
    )
    cfg.context_tile = tile or None
    return cfg


def merged(options: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with `changes` put in, group by group (nested dicts merge, values replace)."""
    out = dict(options)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, Mapping) else value
    return out


def check_finite(module: nn.Module, path: Path) -> None:
    """Refuse weights holding NaN or inf (a diverged run saved them): they would make every
    frame black, silently. Names the file and the first bad tensor."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"checkpoint {path}: tensor {name!r} holds {bad} NaN or inf values (of {tensor.numel()}); "
                "the run that saved it diverged: use an earlier checkpoint or retrain"
            )


def build_part(config: Mapping[str, Any], **made: Any) -> Any:
    """One part of the hypernetwork from its config's `_target_` (hydra.utils.instantiate, as
    every part of a run is made), given the objects it is made over (the base, the LoRA spec):
    those go to the target as they are, never through the config."""
    from hydra.utils import instantiate

    return instantiate(dict(config), _partial_=True, _convert_="all")(**made)


def normalised_pair(
    a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's gradients for its factors A and B (each V, ...) divided by their joint root mean
    square, per video. Joint, not per factor: while a generated B is zero (the generator's gates
    start closed) A's gradient is exactly zero, and a zero divided by its own RMS has a derivative
    of 1/eps, which second-order training would carry into the hypernetwork's gradient (1e11 at
    the first step). B's gradient is not zero then, so the joint RMS is a real size."""
    squares = a.pow(2).flatten(1).sum(1) + b.pow(2).flatten(1).sum(1)
    rms = (squares / (a[0].numel() + b[0].numel()) + eps**2).sqrt()
    return a / rms.view(-1, *[1] * (a.ndim - 1)), b / rms.view(-1, *[1] * (b.ndim - 1))


def rank_halves(adapters: Adapters) -> tuple[Adapters, Adapters]:
    """Each layer's adapter split along its rank r into the first r // 2 components and the rest:
    two adapters whose sum is the whole (A (V, r, ...) rows, B (V, out, r) columns)."""
    first, second = {}, {}
    for name, (a, b) in adapters.items():
        half = a.shape[1] // 2
        first[name], second[name] = (a[:, :half], b[..., :half]), (a[:, half:], b[..., half:])
    return first, second


def rank_joined(first: Adapters, second: Adapters) -> Adapters:
    """The inverse of rank_halves: the components of both, one adapter per layer (their sum)."""
    return {
        name: (torch.cat([a, second[name][0]], dim=1), torch.cat([b, second[name][1]], dim=-1))
        for name, (a, b) in first.items()
    }


def detached_where(videos: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (V, ...) with the rows of the videos (V,) bool marks cut from the graph, the same values."""
    return torch.where(videos.view(-1, *[1] * (tensor.ndim - 1)), tensor.detach(), tensor)


class Refine(nn.Module):
    """`hypernet.refine`: direct (the generator's adapters as they are), refine (k inner gradient
    steps on the self-supervised loss over every context frame) or crossscale (the same over the
    context's close-ups alone, each blurred by a learned sigma before it is downscaled: the
    video's own cross-scale pairs, the detail a close-up shows that a wider view lacks). Each
    target layer has its learned step size, log-parametrised so it stays positive. Training
    differentiates through the steps (second order) unless first_order is set. The step sizes
    exist in direct mode too, so a direct checkpoint can be refined at inference.

    With `noise`, the pairs' inputs get noise at each video's level, estimated from the frames the
    steps read (`sr.noise_level`) times a learned gain: downscaling averages a frame's noise away,
    and steps on clean inputs taught noisy videos' adapters to upscale clean frames (on 16
    validation recurrence videos of the training family's degradations, three normalised steps
    gained -0.047 dB without noise (-0.201 on the 9 noisiest), +0.109 with the estimated noise
    and +0.130 with the true noise; experiments/content_memory, step probe).

    With `normalize`, a step moves each layer's factors by their gradients over the gradients'
    joint root mean square (per video and layer, `normalised_pair`) times the step size: a step
    of that size whatever the gradient's scale. A plain
    step is ill-conditioned here: the factors' gradients differ by orders of magnitude between
    layers, so on 8 validation recurrence videos no size gave one plain step more than +0.012
    dB over the generated adapters' +0.004, while normalised steps reached +0.053 (one), +0.118
    (three) and +0.194 (ten) of a fitted LoRA's +0.270 (experiments/content_memory, step probe).

    With `direct_weight`, training also scores the generated adapters of the videos that take
    steps as they are, before the steps, at that weight. Trained through the steps alone, a
    generator makes a start for them, not an adapter: crossscale_s0's generated adapters alone
    gained +0.077 dB on its validation recurrence videos against +0.167 for a model without steps,
    the degradation lost (experiments/content_memory). The weight keeps them an adapter.

    With `split`, each layer's rank is two adapters: the first half is the generated adapter as it
    is, never stepped, and the only one a video that takes no step gets; the second half is the
    start of the steps, taken with the first half in place, and dropped (zero) where no step is
    taken. Trained so, the first half must work alone on every video (what the generator learns
    without steps: the degradation) and the second carries what the close-ups show on top of it.
    On validation recurrence videos the sum of mixed_s0's adapters and crossscale_s1's step
    delta gained +0.210 dB where each alone gained +0.167 and +0.177, with own minus another
    video's +0.082 (experiments/content_memory). Trained together it did not: split_s0's first
    half alone gained +0.008 on those videos, the steps took the degradation too.

    With `detach_kept` (split only) the first half learns from its own loss alone: on a video that
    takes steps the steps' path does not reach it, and training scores it alone on that video
    too, so it is trained as a model without steps is (on every video, as it is), and the second
    half learns what the close-ups add on top of it."""

    def __init__(
        self,
        *,
        spec: LoRASpec,
        mode: str,
        steps: int,
        lr: float,
        first_order: bool,
        blur: float = 1.0,
        normalize: bool = False,
        noise: bool = False,
        direct_weight: float = 0.0,
        split: bool = False,
        detach_kept: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"hypernet.refine.mode={mode!r} is not known; choose one of {list(MODES)}")
        for option, value in (
            ("normalize", normalize),
            ("noise", noise),
            ("split", split),
            ("detach_kept", detach_kept),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"hypernet.refine.{option}={value!r} must be true or false")
            if value and mode == "direct":
                raise ValueError(
                    f"hypernet.refine.{option}=true shapes the refine steps, and hypernet.refine.mode=direct takes "
                    "none: set hypernet.refine.mode=refine or crossscale"
                )
        if isinstance(direct_weight, bool) or not (
            isinstance(direct_weight, int | float) and direct_weight >= 0
        ):
            raise ValueError(f"hypernet.refine.direct_weight={direct_weight!r} must be a number >= 0")
        if direct_weight and mode == "direct":
            raise ValueError(
                f"hypernet.refine.direct_weight={direct_weight} weighs the loss of the adapters before the refine "
                "steps, and hypernet.refine.mode=direct takes none: set it to 0 or choose refine or crossscale"
            )
        if split and direct_weight:
            raise ValueError(
                "hypernet.refine.split=true keeps the generated adapter's first half for the videos that take no "
                f"step, and hypernet.refine.direct_weight={direct_weight} scores the generated adapters before the "
                "steps too: choose one (set direct_weight to 0 or split to false)"
            )
        thin = [t.name for t in spec.targets if t.rank < 2]
        if split and thin:
            raise ValueError(
                f"hypernet.refine.split=true halves each layer's rank, and {thin[0]!r} has rank 1: set "
                "hypernet.lora.rank (and any overrides) to 2 or more"
            )
        if detach_kept and not split:
            raise ValueError(
                "hypernet.refine.detach_kept=true detaches the first half of a split rank from the steps: set "
                "hypernet.refine.split=true too"
            )
        self.spec = spec
        self.split, self.detach_kept = split, detach_kept
        self.mode, self.steps, self.first_order, self.normalize = mode, steps, first_order, normalize
        self.direct_weight = float(direct_weight)
        self.log_lr = nn.Parameter(torch.full((len(spec.targets),), math.log(lr)))
        if mode == "crossscale":  # only here, so the other modes' checkpoints hold what they always held
            if isinstance(blur, bool) or not (isinstance(blur, int | float) and 0.2 <= blur <= 2.0):
                raise ValueError(f"hypernet.refine.blur={blur!r} must be a sigma in [0.2, 2] LR pixels")
            log_blur = torch.tensor(math.log(blur))
            if first_order:  # the blur reaches the adapters only through the (dropped) second-order terms
                self.register_buffer("log_blur", log_blur)
            else:
                self.log_blur = nn.Parameter(log_blur)
        self.noise = noise
        if noise:  # only with it: each video's estimated noise level times a learned gain
            log_gain = torch.zeros(())
            if first_order:  # as the blur: it would get no gradient
                self.register_buffer("log_noise_gain", log_gain)
            else:
                self.log_noise_gain = nn.Parameter(log_gain)

    def stepped(self, context: torch.Tensor, closeups: torch.Tensor | None = None) -> torch.Tensor:
        """Which of the V videos whose context frames are `context` (V, K, C, h, w) take steps,
        (V,) bool: in refine mode all, in crossscale those whose context holds a close-up
        (`closeups` (V, K); None: none), in direct mode or with no steps none."""
        if self.mode == "crossscale" and closeups is not None and self.steps > 0:
            return closeups.bool().any(dim=1)
        takes = self.mode == "refine" and self.steps > 0
        return torch.full((context.shape[0],), takes, dtype=torch.bool, device=context.device)

    def forward(
        self, base: nn.Module, adapters: Adapters, context: torch.Tensor, closeups: torch.Tensor | None = None
    ) -> Adapters:
        """The adapters after the refine steps on the LR frames `context` (V, K, C, h, w) through
        `base`; in direct mode the adapters unchanged. crossscale reads the frames `closeups`
        (V, K) marks: a video with none takes no step, and so does a video that does not say
        which frames are close-ups (None: a user's), as training's videos without close-ups do.
        With `split`, the steps move each layer's second half of the rank, which a video that takes
        no step drops."""
        stepped = self.stepped(context, closeups)
        if self.split:
            kept, start = rank_halves(adapters)
            if self.detach_kept:  # the steps' path does not reach the first half of a video that takes them
                kept = {
                    n: (detached_where(stepped, a), detached_where(stepped, b)) for n, (a, b) in kept.items()
                }
            moved = (
                self.stepped_adapters(base, start, context, closeups, under=kept) if stepped.any() else start
            )
            dropped = {n: (a, b * stepped.to(b.dtype).view(-1, 1, 1)) for n, (a, b) in moved.items()}
            return rank_joined(kept, dropped)
        if not stepped.any():
            return adapters
        return self.stepped_adapters(base, adapters, context, closeups)

    def stepped_adapters(
        self,
        base: nn.Module,
        adapters: Adapters,
        context: torch.Tensor,
        closeups: torch.Tensor | None,
        under: Adapters | None = None,
    ) -> Adapters:
        """`adapters` after this module's steps (`refine_steps`), with `under` in place beside them."""
        weights = closeups if self.mode == "crossscale" else None
        return refine_steps(
            base,
            self.spec,
            adapters,
            context,
            count=self.steps,
            step_sizes=self.log_lr.exp(),
            normalize=self.normalize,
            second_order=self.training and not self.first_order,
            weights=weights,
            blur_sigma=self.log_blur.exp() if self.mode == "crossscale" else None,
            noise_sigma=noise_level(context, weights) * self.log_noise_gain.exp() if self.noise else None,
            under=under,
        )


def refine_steps(
    base: nn.Module,
    spec: LoRASpec,
    adapters: Adapters,
    context: torch.Tensor,
    *,
    count: int,
    step_sizes: torch.Tensor,
    normalize: bool,
    second_order: bool,
    weights: torch.Tensor | None = None,
    blur_sigma: torch.Tensor | None = None,
    noise_sigma: torch.Tensor | None = None,
    under: Adapters | None = None,
) -> Adapters:
    """`count` gradient steps of the adapters on `inner_loss` over the frames `context` (V, K, C,
    h, w), each target layer's factors moved by its step size (step_sizes, one per layer of
    spec.targets) times their gradient, or times the gradient over its joint RMS (`normalize`).
    The pairs' inputs (`inner_inputs`: blur_sigma, noise_sigma) are made once, every step reads
    them; `weights` (V, K) weighs the frames. `under` (Refine's split: the other half of each
    layer's rank) takes part in the loss, joined before the stepped adapters, and is not moved.
    With `second_order` the steps stay in the graph (training through them); otherwise each
    gradient is a constant."""
    names = list(spec.names)
    current = adapters
    if count < 1:
        return current
    inputs = inner_inputs(context, scale=base.scale, blur_sigma=blur_sigma, noise_sigma=noise_sigma)
    for _ in range(count):
        with torch.enable_grad():
            # tensors outside any graph (validation) become leaves the inner loss can differentiate
            current = {
                n: tuple(t if t.requires_grad else t.detach().requires_grad_(True) for t in current[n])
                for n in names
            }
            flat = [t for n in names for t in current[n]]
            scored = current if under is None else rank_joined(under, current)
            grads = torch.autograd.grad(
                inner_loss(base, spec, scored, context, inputs, weights=weights),
                flat,
                create_graph=second_order,
            )
        if not second_order:
            grads = [g.detach() for g in grads]
        if normalize:
            grads = [g for i in range(len(names)) for g in normalised_pair(grads[2 * i], grads[2 * i + 1])]
        current = {
            n: (
                current[n][0] - step_sizes[i] * grads[2 * i],
                current[n][1] - step_sizes[i] * grads[2 * i + 1],
            )
            for i, n in enumerate(names)
        }
    return current


def hypernet_parts(hypernet: Any) -> dict[str, dict[str, Any]]:
    """`hypernet` as plain dicts, one per part, each with its `_target_`; anything else (the flat
    options of an earlier layout) is one error saying what is expected."""
    options = plain(hypernet)
    if set(options) != set(HYPERNET_PARTS) or not all(
        isinstance(options[part], Mapping) and "_target_" in options[part] for part in HYPERNET_PARTS
    ):
        raise ValueError(
            f"hypernet holds {sorted(options)}; expected its parts {list(HYPERNET_PARTS)}, each with a "
            "_target_ (configs/hypernet/default.yaml). A checkpoint of an earlier layout is converted by "
            "scripts/convert_checkpoint.py"
        )
    return options


class HyperLoRASystem(SRSystem):
    """Built from configs/stage/hyper.yaml: the frozen base (`base_ckpt`, checked against
    `model`), `hypernet` (configs/hypernet/default.yaml: its parts lora, encoder, generator and
    refine, each made from its `_target_`) and `optim` (configs/optim/hyper.yaml), as plain dicts
    kept in the checkpoint so that it rebuilds the system alone. The parts are made in the order
    lora, encoder, generator, refine, the order in which they have always drawn their initial
    weights: a seed gives the network it gave before the options were grouped."""

    def __init__(
        self,
        *,
        base_ckpt: str | None,
        model: Mapping[str, Any] | None,
        hypernet: Mapping[str, Any],
        optim: Mapping[str, Any],
        crop_border: int = 0,
        log_images: bool = True,
        nonfinite_loss: str = "raise",
    ):
        super().__init__()
        parts, optim = hypernet_parts(hypernet), plain(optim)
        model = None if model is None else plain(model)
        self.save_hyperparameters(
            {
                "base_ckpt": base_ckpt,
                "model": model,
                "hypernet": parts,
                "optim": optim,
                "crop_border": crop_border,
                "log_images": log_images,
                "nonfinite_loss": nonfinite_loss,
            }
        )
        self.optim = optim
        if base_ckpt is None:  # restoring a stage-2 checkpoint: the base's weights come with its state_dict
            if model is None:
                raise ValueError(
                    "stage=hyper needs base_ckpt=PATH, the stage-1 checkpoint of the base to specialise "
                    "(or, restoring a stage-2 checkpoint, the base's model config)"
                )
            base, base_model_cfg = build_base(model), model
        else:
            base, base_model_cfg = load_base(base_ckpt)
        if model is not None and model != base_model_cfg:
            raise ValueError(
                f"base_ckpt={base_ckpt} holds a base built with {base_model_cfg}, but the config's model is "
                f"{model}: use the model config of the stage-1 run (or drop the model override)"
            )
        self.base = base.requires_grad_(False).eval()
        self.spec: LoRASpec = build_part(parts["lora"], model=self.base)
        self.encoder: nn.Module = build_part(parts["encoder"], base=self.base, target_names=self.spec.names)
        self.generator = build_part(parts["generator"], spec=self.spec, dim=self.encoder.dim)
        self.refine = build_part(parts["refine"], spec=self.spec)
        self.tables = EvaluationTables()
        self._spreads: dict[str, list[torch.Tensor]] = {}
        self.learned_guard = None  # hypernet.fit_guard fits one and stores it in the checkpoint

    # -------------------------------------------------------------- frozen base
    def train(self, mode: bool = True) -> HyperLoRASystem:
        super().train(mode)
        self.base.eval()  # never in training mode, whatever Lightning asks
        return self

    @property
    def scale(self) -> int:
        return self.base.scale

    def sr(self, lr: torch.Tensor, adapters: Adapters | None) -> torch.Tensor:
        """Training folds the adapters into per-video weights (cheaper backward); evaluation adds
        LoRA branches, exact for a zero adapter."""
        return adapted_sr(self.base, self.spec, adapters, lr, per_video_weights=self.training)

    # -------------------------------------------------------------- adapters
    def adapters_for(
        self,
        context: torch.Tensor,
        times: torch.Tensor | None = None,
        degradation: torch.Tensor | None = None,
        closeups: torch.Tensor | None = None,
    ) -> Adapters:
        """Adapters for V videos from their context frames (V, K, C, h, w) and times (V, K);
        the degradation-ceiling control reads `degradation` (V, P) instead; refine crossscale
        takes its steps on the frames `closeups` (V, K) marks."""
        return self.refine(self.base, self.generated_adapters(context, times, degradation), context, closeups)

    def generated_adapters(
        self,
        context: torch.Tensor,
        times: torch.Tensor | None = None,
        degradation: torch.Tensor | None = None,
    ) -> Adapters:
        """The generator's adapters for V videos' context frames, before any refine step."""
        return self.generator(self.encoder.encode_context(context, times, degradation))

    @torch.no_grad()
    def adapters_for_item(self, item: dict) -> Adapters:
        """The adapters for one evaluation item (a dataset's dict for one video), read as in
        training (its context frames and their times), detached."""
        closeups = item.get("context_closeup")
        adapters = self.adapters_for(
            item["context"][None],
            item["context_times"][None],
            item["degradation"][None],
            None if closeups is None else closeups[None],
        )
        return {k: (a.detach(), b.detach()) for k, (a, b) in adapters.items()}

    @torch.no_grad()
    def adapters_for_video(
        self, read_frames: Callable[[list[int]], torch.Tensor], *, num_frames: int, context_frames: int
    ) -> Adapters:
        """Adapters for one whole video, read as training read videos: `context_frames` frames
        spread over its `num_frames` (one from the middle of each equal segment, spread_indices)
        with their times in the video. `read_frames(indices)` gives those LR frames, (1, K, C, h, w).
        The way specialise, finetune and the scripts make a video's adapters: reading every frame
        instead costs 0.18 dB on the held-out videos (experiments/context_reading)."""
        from hypernet.data.datasets import spread_indices

        indices = spread_indices(num_frames, min(context_frames, num_frames), rng=None)
        context = read_frames(indices)
        times = torch.tensor(indices, dtype=context.dtype, device=context.device)[None] / max(
            num_frames - 1, 1
        )
        adapters = self.adapters_for(context, times)
        return {k: (a.detach(), b.detach()) for k, (a, b) in adapters.items()}

    @torch.no_grad()
    def adapters_from_stream(
        self,
        chunks: Iterable[torch.Tensor],
        *,
        num_frames: int,
        refine_context: torch.Tensor | None = None,
        refine_closeups: torch.Tensor | None = None,
    ) -> Adapters:
        """Adapters for one whole video given as LR chunks (1, n, C, h, w) in order: the encoder
        folds every frame, chunk after chunk (memory independent of the length). Refine mode takes
        its inner steps on `refine_context` (1, K, C, h, w), a few frames spread over the video.
        Not how the encoder trained (a few spread frames, `adapters_for_video`): eval's
        `hypernet_stream` measures what reading every frame does."""

        def timed(chunks: Iterable[torch.Tensor]):  # each chunk with its frames' times in the video
            start = 0
            for chunk in chunks:
                yield chunk, frame_times(num_frames, start=start, count=chunk.shape[1]).to(chunk)[None]
                start += chunk.shape[1]

        adapters = self.generator(self.encoder.encode_stream(timed(chunks)))
        if self.refine.mode != "direct":
            if refine_context is None:
                raise ValueError(
                    f"hypernet.refine.mode={self.refine.mode} needs refine_context: a few LR frames of the video"
                )
            adapters = self.refine(self.base, adapters, refine_context, refine_closeups)
        return {k: (a.detach(), b.detach()) for k, (a, b) in adapters.items()}

    # -------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        lr, hr, closeups = batch["lr"], batch["hr"], batch.get("context_closeup")
        generated = self.generated_adapters(batch["context"], batch["context_times"], batch["degradation"])
        loss = charbonnier(self.sr(lr, self.refine(self.base, generated, batch["context"], closeups)), hr)
        if self.refine.direct_weight or self.refine.detach_kept:
            # the videos that take steps also score, weighted, the generated adapters as they are
            # (direct_weight) or the split's first half alone (detach_kept, at weight 1), each such
            # video's loss summed over the batch's videos
            stepped = self.refine.stepped(batch["context"], closeups)
            if stepped.any():
                before = {k: (a[stepped], b[stepped]) for k, (a, b) in generated.items()}
                weight, name = self.refine.direct_weight, "train/loss_before_steps"
                if self.refine.detach_kept:
                    kept, second = rank_halves(before)
                    before = rank_joined(kept, {k: (a, torch.zeros_like(b)) for k, (a, b) in second.items()})
                    weight, name = 1.0, "train/loss_kept_alone"
                direct = charbonnier(self.sr(lr[stepped], before), hr[stepped])
                self.log(name, direct, batch_size=int(stepped.sum()))
                loss = loss + weight * direct * stepped.float().mean()
        return self.checked_loss(loss, batch, batch_idx)

    def evaluate(self, batch: dict, batch_idx: int, *, split: str, group: str) -> None:
        lr, hr = batch["lr"], batch["hr"]
        adapters = self.adapters_for(
            batch["context"], batch["context_times"], batch["degradation"], batch.get("context_closeup")
        )
        adapters = {k: (a.detach(), b.detach()) for k, (a, b) in adapters.items()}
        with torch.no_grad():
            sr = self.sr(lr, adapters).clamp(0, 1)
            base_sr = self.sr(lr, None).clamp(0, 1)
            # each video with the adapters of another video's context: equal to `sr` = not per-video
            shuffled = {k: (a.roll(1, 0), b.roll(1, 0)) for k, (a, b) in adapters.items()}
            shuffled_sr = self.sr(lr, shuffled).clamp(0, 1)
        bicubic = bicubic_upscale(lr, self.scale)
        border = self.hparams.crop_border
        ours, base, shuf, bic = (
            video_metrics(x, hr, crop_border=border) for x in (sr, base_sr, shuffled_sr, bicubic)
        )
        if lr.shape[0] > 1:
            self._spreads.setdefault(f"{split}/{group}", []).append(adapter_spread(self.spec, adapters))
        columns = {
            "psnr_y": ours["psnr_y"],
            "psnr_y_base": base["psnr_y"],
            "gain_y": ours["psnr_y"] - base["psnr_y"],
            "psnr_y_shuffled": shuf["psnr_y"],
            "psnr_y_bicubic": bic["psnr_y"],
            "ssim_y": ours["ssim_y"],
            "ssim_y_base": base["ssim_y"],
        }
        if "context_without_closeups" in batch:  # the memory control: the same video, its close-ups unread
            from hypernet.data.recurrence import without_closeups

            read = without_closeups(batch)
            without = self.adapters_for(
                read["context"], read["context_times"], read["degradation"], read["context_closeup"]
            )
            with torch.no_grad():
                without_sr = self.sr(lr, {k: (a.detach(), b.detach()) for k, (a, b) in without.items()})
            columns["psnr_y_without_closeups"] = video_metrics(
                without_sr.clamp(0, 1), hr, crop_border=border
            )["psnr_y"]
        self.add_rows(split, group, batch["video_id"], columns)
        self.log_first_images(
            split,
            batch_idx,
            key="val/bicubic_base_hyper_hr",
            images=[bicubic, base_sr, sr, hr],
            caption=f"{batch['video_id'][0]}: bicubic | base | base+hypernet | HR",
        )

    def log_tables(self, split: str) -> None:
        spreads = {k: v for k, v in self._spreads.items() if k.startswith(f"{split}/")}
        for key in spreads:
            del self._spreads[key]
        for group, rows in self.tables.finish(split).items():
            n = len(rows)
            keys = ("psnr_y", "psnr_y_base", "psnr_y_shuffled", "psnr_y_bicubic", "ssim_y", "ssim_y_base")
            self.log_means(split, group, rows, keys)
            for key, value in gain_summary([r["gain_y"] for r in rows]).items():
                self.log(split_key(split, group, key), value)
            own_over_shuffled = sum(r["psnr_y"] - r["psnr_y_shuffled"] for r in rows) / n
            self.log(split_key(split, group, "own_over_shuffled_y"), own_over_shuffled)
            if "psnr_y_without_closeups" in rows[0]:
                self.log_means(split, group, rows, ("psnr_y_without_closeups",))
                closeups = [r["psnr_y"] - r["psnr_y_without_closeups"] for r in rows]
                names = {
                    "gain_y": "closeups_over_without_y",
                    "gain_y_stderr": "closeups_over_without_y_stderr",
                }
                names["videos_improved"] = "videos_improved_by_closeups"
                for key, value in gain_summary(closeups).items():
                    self.log(split_key(split, group, names[key]), value)
            if spreads.get(f"{split}/{group}"):
                spread = torch.stack(spreads[f"{split}/{group}"]).mean().item()
                self.log(split_key(split, group, "adapter_spread"), spread)

    def configure_optimizers(self):
        trainable = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("base.")]
        if self.refine.mode == "direct":  # the step sizes take no part
            trainable = [p for p in trainable if p is not self.refine.log_lr]
        # fused: the whole update in one pass over each tensor, not ten (1 ms a step on CPU instead
        # of 4.5 for the per-tensor loop, the CPU default); the same update to float rounding (1 ulp)
        optimizer = torch.optim.Adam(
            trainable, lr=self.optim["lr"], weight_decay=self.optim["weight_decay"], fused=True
        )
        return self.with_schedule(optimizer)
