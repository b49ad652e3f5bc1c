"""The deployed cascade: one ``nn.Module`` holding the low- and high-precision models and
the routing, so that the pipeline's evaluation and timing harness measure it whole.

``forward`` returns the logits a caller gets; ``decide`` also returns the low model's
logits, its confidence and which items were escalated (the report, the drift
controller and the shadow traffic read those). The threshold is a buffer: it is
saved with the artifact and can be moved in place on the loaded copy.

Both models are traced on their own (each is branch-free) and the wrapper is
scripted around them, so the TorchScript artifact keeps the data-dependent routing;
tracing the wrapper instead would freeze whichever branch the example batch took.
A low model that cannot be traced (bitsandbytes) stays eager; the wrapper then
refuses to be traced and the exporter saves the whole module with ``torch.save``.
One class per input arity (images/rows: one tensor; text: ids and mask), as
TorchScript has no varargs.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

SIGNAL_CODES = {"max_softmax": 0, "margin": 1, "entropy": 2}


def confidence(logits: Tensor, signal: int) -> Tensor:
    """Per-row confidence in [0, 1] (0 max softmax, 1 top-2 margin, 2 one minus
    normalised entropy); the same numbers as ``quantexp.serving.threshold.confidence``."""
    p = torch.softmax(logits.float(), dim=-1)
    if signal == 0:
        return p.max(dim=-1).values
    if signal == 1:
        top = p.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
    return 1.0 - entropy / math.log(float(p.shape[-1]))


class NoRouter(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)


class NoTextRouter(nn.Module):
    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)


class RangeRouter(nn.Module):
    """Escalates an input with more than ``outside_share`` of its values outside the
    range the calibration set spans: static int8 clips those to its calibrated range."""

    def __init__(self, low: float, high: float, outside_share: float):
        super().__init__()
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("high", torch.tensor(float(high)))
        self.outside_share = float(outside_share)

    def forward(self, x: Tensor) -> Tensor:
        outside = ((x < self.low) | (x > self.high)).flatten(1).float().mean(dim=1)
        return outside > self.outside_share


class TextRouter(nn.Module):
    """Escalates a text longer than ``max_len`` tokens, or with more than ``oov_share`` of
    its tokens never seen in the training split."""

    def __init__(self, seen: Tensor, max_len: int, oov_share: float):
        super().__init__()
        self.register_buffer("seen", seen.bool())
        self.register_buffer("max_len", torch.tensor(int(max_len)))
        self.oov_share = float(oov_share)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        valid = mask > 0
        length = valid.sum(dim=1)
        known = self.seen[ids.clamp(0, self.seen.shape[0] - 1)] & (ids < self.seen.shape[0])
        oov = (valid & ~known).sum(dim=1).float() / length.clamp_min(1).float()
        return (length > self.max_len) | (oov > self.oov_share)


class HalfPrecision(nn.Module):
    """The fp32 model run in fp16: float inputs cast in, fp32 logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half() if x.is_floating_point() else x).float()


class HalfPrecisionText(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model(ids, mask).float()


def _merge(low: Tensor, escalate: Tensor, high: Tensor) -> Tensor:
    out = low.clone()
    out.index_copy_(0, escalate.nonzero().squeeze(1), high.to(low.dtype))
    return out


class _Stages(nn.Module):
    """The parts both cascades hold: the two models, the router, the confidence signal
    and the escalation threshold (a buffer, so a saved cascade keeps it)."""

    def __init__(self, low: nn.Module, high: nn.Module, router: nn.Module, signal: int, threshold: float):
        super().__init__()
        self.low = low
        self.high = high
        self.router = router
        self.signal = int(signal)
        self.register_buffer("threshold", torch.tensor(float(threshold)))


class Cascade(_Stages):
    """One input tensor (images, rows)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.decide(x)[0]

    @torch.jit.export
    def decide(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(logits, low logits, confidence, escalated, routed)."""
        if torch.jit.is_tracing():
            raise RuntimeError("a cascade routes each input: script it, do not trace it")
        low = self.low(x)
        conf = confidence(low, self.signal)
        routed = self.router(x)
        escalate = (conf < self.threshold) | routed
        out = low
        if bool(escalate.any()):
            out = _merge(low, escalate, self.high(x[escalate]))
        return out, low, conf, escalate, routed


class TextCascade(_Stages):
    """Token ids and attention mask (transformers)."""

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.decide(ids, mask)[0]

    @torch.jit.export
    def decide(self, ids: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(logits, low logits, confidence, escalated, routed)."""
        if torch.jit.is_tracing():
            raise RuntimeError("a cascade routes each input: script it, do not trace it")
        low = self.low(ids, mask)
        conf = confidence(low, self.signal)
        routed = self.router(ids, mask)
        escalate = (conf < self.threshold) | routed
        out = low
        if bool(escalate.any()):
            out = _merge(low, escalate, self.high(ids[escalate], mask[escalate]))
        return out, low, conf, escalate, routed


def build(low: nn.Module, high: nn.Module, router: nn.Module, signal: str, threshold: float,
          example: tuple[Tensor, ...]) -> tuple[nn.Module, str]:
    """The cascade module and how it is built: ``"torchscript"`` (both models traced on
    ``example``, the wrapper scripted) or ``"eager"`` (a model that cannot be traced)."""
    import warnings

    cls = TextCascade if len(example) == 2 else Cascade
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on shape-dependent Python code
            traced_low = torch.jit.trace(low.eval(), example, check_trace=False)
            traced_high = torch.jit.trace(high.eval(), example, check_trace=False)
            return torch.jit.script(cls(traced_low, traced_high, router, SIGNAL_CODES[signal], threshold)), \
                "torchscript"
    except Exception as exc:  # noqa: BLE001 - any tracer/scripting failure: stay eager, say why
        return cls(low.eval(), high.eval(), router, SIGNAL_CODES[signal], threshold).eval(), \
            f"eager ({type(exc).__name__} while scripting)"


__all__ = ["Cascade", "HalfPrecision", "HalfPrecisionText", "NoRouter", "NoTextRouter", "RangeRouter",
           "SIGNAL_CODES", "TextCascade", "TextRouter", "build", "confidence"]
