"""Per-layer output error of a quantized PyTorch model against its fp32 original.

Both models run the same calibration inputs; forward hooks capture the output of
every quantized layer and of the fp32 module with the same qualified name, and the
table reports, per layer:

- ``sqnr_db`` = 10 log10( sum(ref^2) / sum((ref - q)^2) ) over every output element
  of every analysed item (inf when the outputs are identical);
- ``cosine`` = <ref, q> / (|ref| |q|) over the same flattened outputs;
- ``max_abs_err`` = max |ref - q|.

The error is the one the deployed model really has at that layer: the quantized
layer's input is the quantized model's own activation, so error accumulated by
earlier layers is included (it is not the layer's error in isolation).

Works for any torch-module method: bitsandbytes layers, torch.ao static (FX graph
modules keep the qualified names of the modules they convert; quantized outputs are
dequantized; a fused Conv/Linear+ReLU is compared with relu(fp32 output)), eager
``QuantWrapper`` layers (compared at the wrapper, so input quantization counts), and
dynamic quantization (Linear/LSTM: the first output tensor). Layers whose name has no
fp32 counterpart are listed as unmatched, never guessed.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from quantexp.models.base import Split

# Default budget of the check: small, it runs inside every PTQ experiment.
MAX_ITEMS = 64
BATCH_SIZE = 16

_QUANTIZED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                              "bitsandbytes.nn")
# torch.ao modules that are plumbing, not layers with an fp32 counterpart.
_NOT_LAYERS = frozenset({"Quantize", "DeQuantize", "QFunctional", "FloatFunctional",
                         "FXFloatFunctional", "LinearPackedParams", "EmbeddingPackedParams"})


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(signal power / noise power) of ``test`` as an estimate of ``reference``."""
    ref, err = reference.double(), reference.double() - test.double()
    return _sqnr(float(ref.pow(2).sum()), float(err.pow(2).sum()))


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf  # identical outputs
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosine(dot: float, ref_sq: float, q_sq: float) -> float:
    if ref_sq == 0.0 or q_sq == 0.0:
        return 1.0 if ref_sq == q_sq else 0.0
    return dot / math.sqrt(ref_sq * q_sq)


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the outermost quantized layers of ``model``: torch.ao
    quantized / fused-quantized modules, eager ``QuantWrapper``s, bitsandbytes layers.
    (Tensor-subclass methods keep ``nn.Linear`` modules: pass their names explicitly.)"""
    from torch.ao.quantization import QuantWrapper

    names: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(n + ".") for n in names):
            continue
        cls = type(module)
        if isinstance(module, QuantWrapper) or (
                cls.__module__.startswith(_QUANTIZED_MODULE_PREFIXES) and cls.__name__ not in _NOT_LAYERS):
            names.append(name)
    return names


def _post_op(module: nn.Module) -> tuple[str | None, str]:
    """How the fp32 output must be transformed to be comparable: fused torch.ao modules
    (ConvReLU2d, LinearReLU) apply the ReLU that follows the fp32 layer."""
    cls = type(module)
    if not cls.__module__.startswith("torch.ao.nn.intrinsic"):
        return None, "output"
    name = cls.__name__
    if "Add" in name or "LeakyReLU" in name or "Tanh" in name:
        return "unsupported", f"fused {name} has no single fp32 counterpart"
    if "ReLU" in name:
        return "relu", "relu(output)"
    return None, "output"


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        return None
    if out.is_quantized:
        out = out.dequantize()
    return out.detach().float().cpu()


def _device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


@dataclass
class _Acc:
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    q_sq: float = 0.0
    max_abs: float = 0.0
    elements: int = 0
    calls: int = 0


def layer_error(reference: nn.Module, quantized: nn.Module,
                batches: Iterable[Sequence[torch.Tensor]],
                names: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows ``{"layer", "type", "compared", "sqnr_db", "cosine", "max_abs_err",
    "elements"}`` for every quantized layer matched in ``reference`` (module order),
    and ``{name: reason}`` for those that could not be compared.

    ``batches`` yields tuples of model inputs; ``names`` defaults to
    ``quantized_layer_names(quantized)``."""
    names = list(names) if names is not None else quantized_layer_names(quantized)
    ref_modules, q_modules = dict(reference.named_modules()), dict(quantized.named_modules())
    unmatched: dict[str, str] = {}
    pairs: dict[str, tuple[nn.Module, nn.Module, str | None, str]] = {}
    for name in names:
        if name not in q_modules:
            unmatched[name] = "not a module of the quantized model"
        elif name not in ref_modules:
            unmatched[name] = "no fp32 module with this name"
        else:
            post, compared = _post_op(q_modules[name])
            if post == "unsupported":
                unmatched[name] = compared
            else:
                pairs[name] = (ref_modules[name], q_modules[name], post, compared)

    acc = {name: _Acc() for name in pairs}
    captured: dict[str, list[torch.Tensor]] = defaultdict(list)

    def keep(name: str, post: str | None):
        def hook(_module, _inputs, output):
            t = _first_tensor(output)
            if t is not None:
                captured[name].append(torch.relu(t) if post == "relu" else t)
        return hook

    def compare(name: str):
        def hook(_module, _inputs, output):
            q, a = _first_tensor(output), acc[name]
            refs = captured.get(name)
            if q is None or not refs:
                return
            ref = refs.pop(0)
            if ref.shape != q.shape:
                unmatched[name] = f"shape {tuple(q.shape)} vs fp32 {tuple(ref.shape)}"
                return
            ref64, q64 = ref.double(), q.double()
            err = ref64 - q64
            a.signal += float(ref64.pow(2).sum())
            a.noise += float(err.pow(2).sum())
            a.dot += float((ref64 * q64).sum())
            a.q_sq += float(q64.pow(2).sum())
            a.max_abs = max(a.max_abs, float(err.abs().max()) if err.numel() else 0.0)
            a.elements += err.numel()
            a.calls += 1
        return hook

    handles = []
    try:
        for name, (ref_m, q_m, post, _) in pairs.items():
            handles.append(ref_m.register_forward_hook(keep(name, post)))
            handles.append(q_m.register_forward_hook(compare(name)))
        ref_dev, q_dev = _device(reference), _device(quantized)
        # no_grad, not inference_mode: some layers (bitsandbytes) cast their bias in
        # place on first use, and an inference tensor would then leak into the model.
        with torch.no_grad():
            for inputs in batches:
                captured.clear()
                reference(*(x.to(ref_dev) for x in inputs))
                quantized(*(x.to(q_dev) for x in inputs))
    finally:
        for h in handles:
            h.remove()

    rows = []
    for name, (_, q_m, _, compared) in pairs.items():
        a = acc[name]
        if name in unmatched:
            continue
        if a.calls == 0:
            unmatched[name] = "layer was not called on these inputs"
            continue
        rows.append({"layer": name, "type": type(q_m).__name__, "compared": compared,
                     "sqnr_db": _sqnr(a.signal, a.noise), "cosine": _cosine(a.dot, a.signal, a.q_sq),
                     "max_abs_err": a.max_abs, "elements": a.elements})
    return rows, unmatched


def summarize(rows: Sequence[Mapping[str, Any]], unmatched: Mapping[str, str]) -> dict[str, Any]:
    """Flat facts for the run: worst layer by SQNR, median SQNR, lowest cosine."""
    facts: dict[str, Any] = {"layer_error_layers": len(rows), "layer_error_unmatched": len(unmatched)}
    if unmatched:
        facts["layer_error_unmatched_names"] = ", ".join(f"{k} ({v})" for k, v in unmatched.items())[:2000]
    if rows:
        worst = min(rows, key=lambda r: r["sqnr_db"])
        sqnrs = sorted(r["sqnr_db"] for r in rows)
        facts.update(layer_error_min_sqnr_db=worst["sqnr_db"], layer_error_worst_layer=worst["layer"],
                     layer_error_median_sqnr_db=sqnrs[len(sqnrs) // 2],
                     layer_error_min_cosine=min(r["cosine"] for r in rows))
    return facts


def layer_error_info(reference: nn.Module, quantized: nn.Module, calibration: Split | None,
                     names: Sequence[str] | None = None, *, max_items: int = MAX_ITEMS,
                     batch_size: int = BATCH_SIZE,
                     extra_columns: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """What a method adds to its info: ``{"tables": {"layer_error": rows}, <summary facts>}``,
    measured on the first ``max_items`` calibration items. ``extra_columns`` adds
    per-layer values (e.g. outlier fractions) to the rows, by layer name."""
    if calibration is None or len(calibration) == 0:
        return {"layer_error": "not measured: no calibration inputs"}
    subset = calibration.subset(torch.arange(min(max_items, len(calibration))))
    rows, unmatched = layer_error(reference, quantized,
                                  (inputs for inputs, _ in subset.batches(batch_size)), names)
    for row in rows:
        row.update((extra_columns or {}).get(row["layer"], {}))
    return {"tables": {"layer_error": rows}, "layer_error_items": len(subset),
            **summarize(rows, unmatched)}


__all__ = ["layer_error", "layer_error_info", "quantized_layer_names", "sqnr_db", "summarize"]
