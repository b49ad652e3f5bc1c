"""Re-run a model from one layer on, reusing the fp32 activations of everything before it.

The one-layer-at-a-time sensitivity analysis changes a single layer L and evaluates
the model again. Every module call that *finished* before L was first called cannot
depend on L, so its output is the fp32 pass's output: ``Replay`` records one fp32 pass
over the analysis batches, and when L is changed it swaps the forward of those
modules (the outermost ones: a whole encoder block, not its parts) for a lookup of
their recorded outputs. Only L and what comes after it are computed again: on
MiniLM a layer in block k of 6 costs about (6 - k) / 6 of a forward pass.

The call order comes from hooks on one forward pass; a module called several times
is replayed only if all its calls finish before L. Recorded outputs are handed out as
clones (a caller may modify its input in place). ``Replay`` checks itself on the
first batch (the deepest replay must reproduce the fp32 logits) and turns itself off,
with the reason, when it does not - a model with state that a replayed call would
have updated.

It also keeps each layer's own fp32 inputs: in the otherwise-fp32 model they are
exactly what the changed layer receives, so int8 observers are calibrated on them
directly instead of by forward passes of the whole model.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree


def _clone(out: Any) -> Any:
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)


class Replay:
    def __init__(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]], targets: Sequence[str],
                 keep_inputs: Sequence[str] = ()):
        self.model, self.batches, self.targets = model, list(batches), list(targets)
        self.enabled, self.reason = True, ""
        names = {m: n for n, m in model.named_modules() if n}
        spans = self._call_spans(names)
        self.skip: dict[str, list[str]] = {t: self._outermost_before(t, spans) for t in self.targets}
        needed = sorted({n for ns in self.skip.values() for n in ns})
        self.outputs: dict[str, list[list[Any]]] = {n: [[] for _ in self.batches] for n in needed}
        self.inputs: dict[str, list[torch.Tensor]] = {n: [] for n in keep_inputs}
        self.logits = self._record(needed)
        self._check()

    # -------------------------------------------------------------- recording
    def _call_spans(self, names: dict[nn.Module, str]) -> dict[str, list[tuple[int, int]]]:
        """{module name: [(start, end) event index of each call]} on the first batch."""
        counter, open_calls = [0], defaultdict(list)
        spans: dict[str, list[tuple[int, int]]] = defaultdict(list)

        def pre(module, _args):
            open_calls[module].append(counter[0])
            counter[0] += 1

        def post(module, _args, _out):
            spans[names[module]].append((open_calls[module].pop(), counter[0]))
            counter[0] += 1
        handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
        try:
            with torch.no_grad():
                self.model(*self.batches[0])
        finally:
            for h in handles:
                h.remove()
        return spans

    def _outermost_before(self, target: str, spans: dict[str, list[tuple[int, int]]]) -> list[str]:
        if target not in spans:
            return []
        start = spans[target][0][0]
        done = [n for n, calls in spans.items() if n != target and all(end < start for _, end in calls)]
        done_set = set(done)
        return [n for n in done if not any(n.startswith(p + ".") for p in done_set)]

    def _record(self, needed: list[str]) -> torch.Tensor:
        modules = dict(self.model.named_modules())
        batch = [0]
        handles = []
        for name in needed:
            handles.append(modules[name].register_forward_hook(
                lambda _m, _a, out, name=name: self.outputs[name][batch[0]].append(out)))
        for name in self.inputs:
            handles.append(modules[name].register_forward_pre_hook(
                lambda _m, args, name=name: self.inputs[name].append(args[0])))
        logits = []
        try:
            with torch.no_grad():
                for i, inputs in enumerate(self.batches):
                    batch[0] = i
                    logits.append(self.model(*inputs).float())
        finally:
            for h in handles:
                h.remove()
        return torch.cat(logits)

    def _check(self) -> None:
        deepest = max(self.targets, key=lambda t: len(self.skip[t]), default=None)
        if deepest is None or not self.skip[deepest]:
            return
        first = self.logits[: len(self.batches[0][0])]
        try:
            with self._replaying(deepest, 0), torch.no_grad():
                got = self.model(*self.batches[0]).float()
            ok = got.shape == first.shape and torch.allclose(got, first, rtol=1e-4, atol=1e-5)
            reason = "" if ok else f"replaying {deepest} changed the fp32 logits by " \
                                   f"{float((got - first).abs().max()) if got.shape == first.shape else 'shape'}"
        except Exception as exc:  # noqa: BLE001 - a model replay cannot handle: evaluate in full
            reason = f"replaying {deepest} failed: {type(exc).__name__}: {exc}"
        if reason:
            self.enabled, self.reason = False, reason

    # -------------------------------------------------------------- replaying
    @contextlib.contextmanager
    def _replaying(self, target: str, batch: int) -> Iterator[None]:
        modules = dict(self.model.named_modules())
        patched = []
        for name in self.skip[target] if self.enabled else []:
            calls = iter(self.outputs[name][batch])
            module = modules[name]
            module.forward = lambda *_a, _calls=calls, **_k: _clone(next(_calls))
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward

    def run(self, target: str) -> torch.Tensor:
        """The model's logits on every batch, with whatever is now at ``target``
        computed and everything that finished before it replayed."""
        out = []
        with torch.no_grad():
            for i, inputs in enumerate(self.batches):
                with self._replaying(target, i):
                    out.append(self.model(*inputs).float())
        return torch.cat(out)

    def replayed_share(self, target: str) -> int:
        """How many outermost modules ``target``'s evaluation replays."""
        return len(self.skip[target]) if self.enabled else 0


__all__ = ["Replay"]
