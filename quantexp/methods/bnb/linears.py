"""What the two bitsandbytes methods share: finding the Linear layers to replace,
swapping them for bitsandbytes modules, the weight-storage accounting, and the
per-layer quality check.

bitsandbytes is imported only inside functions (``import_bnb``): importing this
module costs nothing, and the library loads only when a bnb method runs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantexp.config import ConfigError

if TYPE_CHECKING:
    from quantexp.models.base import ModelBundle, Split

# Per-call warning of MatMul8bitLt ("inputs will be cast from torch.float32 to
# float16 during quantization"): true and expected for LLM.int8 (it quantizes fp16
# activations), but logged on every forward of every layer.
_CAST_WARNING = "MatMul8bitLt: inputs will be cast"


class _DropCastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CAST_WARNING)


def import_bnb():
    """``import bitsandbytes`` (slow: loads its native library and registers its
    torch ops), with the per-forward fp16-cast warning filtered out."""
    import bitsandbytes as bnb

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastWarning) for f in logger.filters):
        logger.addFilter(_DropCastWarning())
    return bnb


def is_plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose ``forward`` is what runs. Excluded: modules that are
    already bitsandbytes layers (they subclass nn.Linear), and
    ``NonDynamicallyQuantizableLinear`` (MultiheadAttention's out_proj, whose weight
    is read directly by the attention function, never through ``forward``)."""
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    return (isinstance(module, nn.Linear)
            and not isinstance(module, NonDynamicallyQuantizableLinear)
            and not type(module).__module__.startswith("bitsandbytes"))


def linear_targets(model: nn.Module, skip_modules: Sequence[str]) -> tuple[list[str], list[str]]:
    """(names to replace, names of Linear layers kept in fp32 by ``skip_modules``)."""
    targets, skipped = [], []
    for name, module in model.named_modules():
        if is_plain_linear(module):
            (skipped if any(s in name for s in skip_modules) else targets).append(name)
    return targets, skipped


def check_has_linear(method: str, bundle: ModelBundle,
                     skip_modules: Sequence[str]) -> tuple[list[str], list[str]]:
    """``linear_targets`` of the model; refuses (one-line ConfigError) a model with no
    Linear layer left to replace."""
    targets, skipped = linear_targets(bundle.model, skip_modules)
    if targets:
        return targets, skipped
    if skipped:
        raise ConfigError(
            f"method={method} has nothing to quantize in model {bundle.name}: all {len(skipped)} "
            f"Linear layers match method.skip_modules={list(skip_modules)}")
    raise ConfigError(
        f"method={method} cannot quantize model {bundle.name}: it has no nn.Linear layers "
        "(bitsandbytes replaces Linear layers only)")


def replace_linears(model: nn.Module, names: Iterable[str],
                    make: Callable[[nn.Linear], nn.Module]) -> None:
    """Swap each named Linear for ``make(old)`` in place."""
    modules = dict(model.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, make(modules[name]))


def quantize_linears(method: str, bundle: ModelBundle, skip_modules: Sequence[str], device: str,
                     make: Callable[[nn.Linear], nn.Module]) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """A copy of the model with every target Linear swapped for ``make(linear)``, moved to
    ``device`` (where bitsandbytes quantizes), its target names, and the facts every
    bitsandbytes method reports (version, device, layer counts, stored weight bits)."""
    targets, skipped = check_has_linear(method, bundle, skip_modules)
    bnb = import_bnb()
    model = copy.deepcopy(bundle.model).eval()
    replace_linears(model, targets, make)
    model = move_to(model, device).eval()
    return model, targets, {
        "bitsandbytes_version": bnb.__version__,
        "device": device,
        "replaced_layers": len(targets),
        "quantized_layers": len(targets),
        "linear_layers_kept_fp32": len(skipped),
        **weight_storage(model, targets),
    }


def frozen_bias(linear: nn.Linear) -> nn.Parameter | None:
    if linear.bias is None:
        return None
    return nn.Parameter(linear.bias.detach().clone(), requires_grad=False)


# ------------------------------------------------------------------ storage
def weight_storage(model: nn.Module, names: Sequence[str]) -> dict[str, float]:
    """Bits of the stored weights of the replaced layers (packed weight + every
    quantization statistic the layer keeps in its state_dict: absmax, quant maps,
    nested absmax, SCB ...; biases excluded) per original weight element - the
    QLoRA accounting - read from the real tensors with ``storage_bits``."""
    from quantexp.bench.size import storage_bits

    modules = dict(model.named_modules())
    bits, numel = 0, 0
    for name in names:
        module = modules[name]
        state = {k: v for k, v in module.state_dict().items() if k != "bias"}
        bits += storage_bits(state).param_bits
        numel += module.in_features * module.out_features
    return {"weight_bits_per_param": bits / numel, "quantized_weight_params": numel}


def memory_facts(model: nn.Module, num_fp32_params: int) -> dict[str, float]:
    """Bytes of every stored parameter of the deployed model (quantized layers with
    their statistics, plus what stays fp32) vs the same parameters in fp32."""
    from quantexp.bench.size import storage_bits

    param_bytes = storage_bits(model.state_dict()).param_bits / 8
    fp32_bytes = 4 * num_fp32_params
    return {"weight_memory_bytes": int(param_bytes), "weight_memory_fp32_bytes": fp32_bytes,
            "weight_memory_ratio_vs_fp32": param_bytes / fp32_bytes}


# ----------------------------------------------------------------- quality
def quality_facts(bundle: ModelBundle, quantized: nn.Module, names: Sequence[str],
                  calibration: Split | None, batch_size: int,
                  extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-layer error table (+ optional extra per-layer columns) and its summary."""
    from quantexp.quant.layer_error import layer_error_info

    return layer_error_info(bundle.model, quantized, calibration, names=names,
                            batch_size=batch_size, extra_columns=extra)


def move_to(model: nn.Module, device: str) -> nn.Module:
    """``.to(device)`` is where bitsandbytes quantizes (also to "cpu")."""
    return model.to(torch.device(device))
