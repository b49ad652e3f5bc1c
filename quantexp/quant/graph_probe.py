"""What one forward pass says about a model's layers: run it once with hooks on
chosen modules (``forward_with_hooks``), and find the Linear/Conv layers that read an
activation's output (``layers_after``: static int8 keeps those float). Shared by
mixed precision and ptq_static."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def layers_after(model: nn.Module, activations: Iterable[str], example: tuple[torch.Tensor, ...]) -> list[str]:
    """Names of the Linear/Conv layers of ``model`` whose input is the output of an
    activation module whose class name contains one of ``activations`` (any case): one
    forward pass of ``example``, the activations' outputs matched by identity to the
    layers' inputs (an eval-mode dropout in between passes the same tensor on)."""
    wanted = [a.lower() for a in activations]
    if not wanted:
        return []
    # the tensors themselves are kept until the pass ends, so that no id is reused
    produced: dict[int, torch.Tensor] = {}
    read: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if any(a in type(module).__name__.lower() for a in wanted):
            hooks.append((module, lambda _m, _args, out: produced.__setitem__(id(out), out)))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append((module, lambda _m, args, _out, name=name: read.__setitem__(name, args[0])))
    forward_with_hooks(model, hooks, example)
    return [name for name, tensor in read.items() if produced.get(id(tensor)) is tensor]


def forward_with_hooks(model: nn.Module, hooks: Iterable[tuple[nn.Module, Callable[..., Any]]],
                        inputs: tuple[torch.Tensor, ...]) -> None:
    """One ``model(*inputs)`` without gradients, with each (module, forward hook)
    registered for that pass only."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()


__all__ = ["forward_with_hooks", "layers_after"]
