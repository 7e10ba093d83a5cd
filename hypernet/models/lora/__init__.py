"""The LoRA engine: per-video low-rank adapters on any `nn.Module`, without editing its code.

The hypernetwork outputs one LoRA per video for every target layer of a frozen base network.
Training it needs three things an ordinary LoRA library does not give:

- several videos in one batch, each frame using *its own video's* adapter, computed batched
  (one grouped convolution and one batched matmul per layer, never a Python loop over videos);
- adapters that are plain tensors supplied per forward call (they are the hypernetwork's
  output), so the gradient of the SR loss flows into them and on into the hypernetwork;
- nothing injected into the base: forward hooks live only inside `apply_adapters`.

Layout rule: adapters carry a leading video dimension V, and a target layer's input batch N is
video-major, sample n belonging to video n // (N // V). A sliding-window base that runs its
convolutions on rearrange(x, "b t c h w -> (b t) c h w") has N = V*T; a recurrent base that
runs them one time step at a time on (b, c, h, w) has N = V. Both work unchanged.

Conv LoRA follows the literature (and PEFT): a k x k down-convolution to rank r with the layer's
stride, padding and dilation, then a 1 x 1 up-convolution, scaled by alpha / r. Because both are
linear and the up-projection is 1 x 1, the pair folds exactly into the layer's weight
(W + scaling * B @ A over the rank), which is what `merge_adapters` does for inference.

Layout: `spec` (targets, spec, fresh adapters, the checks of adapters against a spec), `forward`
(the batched per-video forward, `apply_adapters`), `merge` (into the weights and out again),
`stack` (strength, stacking, a domain adapter under the hypernetwork's), `adapter_files` (the file format: save, load, fingerprint) and
`peft_export`. Every public name is imported from here, `hypernet.models.lora`.
"""

from hypernet.models.lora.adapter_files import (
    FORMAT,
    HYPERNET_PREFIX,
    MERGE_PREFIX,
    AdapterFileError,
    base_fingerprint,
    load_adapters,
    load_merge_columns,
    save_adapters,
)
from hypernet.models.lora.forward import apply_adapters
from hypernet.models.lora.merge import delta_weight, merge_adapters, unmerge_adapters
from hypernet.models.lora.peft_export import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, export_peft
from hypernet.models.lora.spec import (
    LINEAR_GEOMETRY,
    AdapterMismatchError,
    Adapters,
    LoRASpec,
    LoRATarget,
    find_targets,
    init_adapters,
)
from hypernet.models.lora.stack import (
    check_strength,
    merge_columns,
    merge_weight,
    parts_under_hypernet,
    scale_adapters,
    stack_adapters,
    stack_under_hypernet,
)

__all__ = [
    "FORMAT",
    "HYPERNET_PREFIX",
    "LINEAR_GEOMETRY",
    "MERGE_PREFIX",
    "PEFT_CONFIG_NAME",
    "PEFT_WEIGHTS_NAME",
    "AdapterFileError",
    "AdapterMismatchError",
    "Adapters",
    "LoRASpec",
    "LoRATarget",
    "apply_adapters",
    "base_fingerprint",
    "check_strength",
    "delta_weight",
    "export_peft",
    "find_targets",
    "init_adapters",
    "load_adapters",
    "load_merge_columns",
    "merge_adapters",
    "merge_columns",
    "merge_weight",
    "parts_under_hypernet",
    "save_adapters",
    "scale_adapters",
    "stack_adapters",
    "stack_under_hypernet",
    "unmerge_adapters",
]
