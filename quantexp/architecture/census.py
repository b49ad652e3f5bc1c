"""What a model is made of, read from the model itself rather than its config name: one
row per layer (kind, parameters, MACs on an example batch), the share of parameters
and MACs per kind, and the family that follows from them.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on a real
forward pass. Fused recurrent kernels (``aten.lstm``) have no FLOP formula there, so
each recurrent layer is exported alone (``torch.export``) with PyTorch's core
decompositions, which turn it into the matmuls the counter does count, on the input
it really received. Attention matmuls (QK^T, AV) are what an attention module
computes beyond its own Linear layers; they are counted on PyTorch's math attention
kernel (the fused CPU kernel has no formula in the counter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

KINDS = ("conv", "recurrent", "linear", "attention", "embedding", "norm", "other")
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
NORM = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d)


@dataclass
class LayerRow:
    name: str
    type: str
    kind: str
    params: int
    macs: float
    shape: str  # weight shape (out, in, ...) or "-"
    depthwise: bool = False
    small_channels: bool = False  # fewer than 8 input or output channels: per-channel scales add little

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Census:
    layers: list[LayerRow]
    params_total: int
    macs_total: float
    param_share: dict[str, float] = field(default_factory=dict)  # kind -> share of parameters
    mac_share: dict[str, float] = field(default_factory=dict)  # kind -> share of MACs
    family: str = "other"  # cnn / rnn / transformer / mlp / other, from the shares
    reason: str = ""  # why that family, in numbers

    def summary(self) -> dict[str, Any]:
        return {"family": self.family, "family_reason": self.reason, "params": self.params_total,
                "macs_per_item": self.macs_total,
                **{f"param_share.{k}": v for k, v in self.param_share.items() if v},
                **{f"mac_share.{k}": v for k, v in self.mac_share.items() if v}}


def kind_of(module: nn.Module) -> str | None:
    """The census kind of a leaf layer, or None for containers and parameter-free modules."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(module, RECURRENT):
        return "recurrent"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, NORM):
        return "norm"
    if isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower():
        return "attention"
    return None


def _flops_by_module(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """{module name: FLOPs} of one forward pass (every ancestor is charged too)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    root = type(model).__name__
    # The fused CPU attention kernel has no FLOP formula in the counter; the math kernel
    # computes the same thing as matmuls it counts.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(*example)
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(root):].lstrip(".") if key.startswith(root) else key
        out[name] = float(sum(ops.values()))
    out["<total>"] = float(counter.get_total_flops())
    return out


def _recurrent_flops(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """FLOPs of each recurrent layer, counted on its decomposed export (see the docstring)."""
    from torch._decomp import core_aten_decompositions
    from torch.utils.flop_counter import FlopCounterMode

    inputs: dict[str, tuple] = {}

    def keep(name: str):
        def hook(_module, args, _output) -> None:  # returns None: the output is left as it is
            inputs.setdefault(name, args)
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if isinstance(m, RECURRENT)]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, args in inputs.items():
        module = model.get_submodule(name)
        program = torch.export.export(module, tuple(a for a in args if isinstance(a, torch.Tensor))[:1])
        decomposed = program.run_decompositions(core_aten_decompositions()).module()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            decomposed(args[0])
        out[name] = float(counter.get_total_flops())
    return out


def family_of(mac_share: dict[str, float], param_share: dict[str, float]) -> tuple[str, str]:
    conv, rec = mac_share.get("conv", 0.0), mac_share.get("recurrent", 0.0)
    attn = mac_share.get("attention", 0.0)
    dense = mac_share.get("linear", 0.0) + attn
    if rec >= max(conv, dense):
        return "rnn", f"recurrent layers do {rec:.0%} of the MACs"
    if conv >= dense:
        return "cnn", f"convolutions do {conv:.0%} of the MACs"
    if attn > 0:
        return "transformer", (f"Linear layers and attention do {dense:.0%} of the MACs (attention matmuls "
                               f"{attn:.0%}), embeddings hold {param_share.get('embedding', 0.0):.0%} of the parameters")
    return "mlp", f"Linear layers do {dense:.0%} of the MACs, no attention"


def take_census(model: nn.Module, example: tuple[torch.Tensor, ...]) -> Census:
    """The census of ``model`` on ``example`` (one batch; MACs are reported per item)."""
    model = model.eval()
    batch = int(example[0].shape[0])
    flops = _flops_by_module(model, example)
    flops.update(_recurrent_flops(model, example))
    rows: list[LayerRow] = []
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is None:
            continue
        weight = getattr(module, "weight", None)
        shape = "x".join(map(str, weight.shape)) if isinstance(weight, torch.Tensor) else "-"
        direct = sum(p.numel() for p in module.parameters(recurse=kind != "attention"))
        macs = flops.get(name, 0.0) / 2 / batch
        if kind == "attention":  # what it computes beyond its own Linear layers
            inner = sum(flops.get(f"{name}.{child}", 0.0) for child, sub in module.named_modules()
                        if child and isinstance(sub, nn.Linear))
            macs = max(0.0, flops.get(name, 0.0) - inner) / 2 / batch
        groups = getattr(module, "groups", 1)
        channels = [getattr(module, a) for a in ("in_channels", "out_channels", "in_features", "out_features")
                    if isinstance(getattr(module, a, None), int)]
        rows.append(LayerRow(name, type(module).__name__, kind, direct, macs, shape,
                             depthwise=kind == "conv" and groups > 1 and groups == getattr(module, "in_channels", 0),
                             small_channels=bool(channels) and min(channels) < 8))
    # Nested attention modules (HF: BertAttention > BertSelfAttention): the outermost counts.
    rows = [r for r in rows if not (r.kind == "attention" and any(
        o.kind == "attention" and o.name != r.name and r.name.startswith(o.name + ".") for o in rows))]
    params_total = sum(p.numel() for p in model.parameters())
    macs_total = flops["<total>"] / 2 / batch
    param_share = {k: sum(r.params for r in rows if r.kind == k) / max(params_total, 1) for k in KINDS}
    counted = sum(r.macs for r in rows)
    total = max(macs_total, counted)
    mac_share = {k: sum(r.macs for r in rows if r.kind == k) / total if total else 0.0 for k in KINDS}
    mac_share["other"] = max(0.0, 1.0 - sum(v for k, v in mac_share.items() if k != "other"))
    family, reason = family_of(mac_share, param_share)
    return Census(rows, params_total, total, param_share, mac_share, family, reason)


def layer_table(census: Census) -> list[dict[str, Any]]:
    return [row.to_dict() for row in census.layers]


__all__ = ["KINDS", "Census", "LayerRow", "family_of", "kind_of", "layer_table", "take_census"]
