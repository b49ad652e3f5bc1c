"""The data types every model family hands to the rest of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn


@dataclass
class Split:
    """A labelled set of items. ``inputs`` is a tuple of batch-first tensors (one per
    model input, e.g. ``(pixels,)`` or ``(input_ids, attention_mask)``); ``ids`` are
    stable item identifiers (row numbers in the source data set), used to prove that
    calibration and test items never overlap."""

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def unlabelled(cls, inputs: tuple[torch.Tensor, ...]) -> "Split":
        """Inputs only (a user's calibration or example batch): dummy labels, row ids.
        Quantization never reads the labels."""
        n = int(inputs[0].shape[0])
        return cls(tuple(inputs), torch.zeros(n, dtype=torch.long), torch.arange(n))

    def subset(self, index: torch.Tensor | list[int]) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(tuple(x[index] for x in self.inputs), self.labels[index], self.ids[index])

    def batches(self, batch_size: int) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield tuple(x[start:stop] for x in self.inputs), self.labels[start:stop]


@dataclass
class ModelBundle:
    """An fp32 model ready to be quantized, with its data.

    ``model`` is in eval mode on the CPU; ``model(*inputs)`` returns logits of shape
    ``[batch, num_classes]``."""

    model: nn.Module
    name: str
    family: str
    train: Split
    test: Split
    num_classes: int
    input_names: list[str]
    # Seconds spent building/loading the fp32 model (and training it on a cache miss).
    load_time_s: float
    train_time_s: float | None = None
    from_cache: bool = False
    info: dict = field(default_factory=dict)

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        return tuple(x[:batch_size] for x in self.test.inputs)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @classmethod
    def from_module(cls, module: nn.Module, *, calibration: Split | None = None,
                    test: Split | None = None, example_inputs: tuple[torch.Tensor, ...] | None = None,
                    name: str = "custom", family: str | None = None,
                    input_names: list[str] | None = None) -> "ModelBundle":
        """Wrap a user's own ``module`` (and data) for a method or the pipeline.

        ``calibration`` stands in as the training split (methods draw calibration
        items from it); ``test`` defaults to ``calibration`` or, with neither, to
        ``example_inputs`` with dummy labels (enough to trace and size the model,
        not to measure accuracy). ``family`` defaults to ``guess_family(module)``."""
        data = test if test is not None else calibration
        if data is None:
            if example_inputs is None:
                raise ValueError("ModelBundle.from_module needs calibration, test or example_inputs")
            data = Split.unlabelled(tuple(example_inputs))
        module = module.eval()
        with torch.no_grad():
            num_classes = int(module(*(x[:1] for x in data.inputs)).shape[-1])
        return cls(model=module, name=name, family=family or guess_family(module),
                   train=calibration if calibration is not None else data, test=data, num_classes=num_classes,
                   input_names=input_names or [f"input_{i}" for i in range(len(data.inputs))],
                   load_time_s=0.0)


def guess_family(module: nn.Module) -> str:
    """The model family the compatibility rules should treat ``module`` as: rnn with a
    recurrent layer, transformer with attention or an embedding, cnn otherwise."""
    kinds = {type(m).__name__ for m in module.modules()}
    if any(isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)) for m in module.modules()):
        return "rnn"
    if any(isinstance(m, (nn.MultiheadAttention, nn.Embedding)) for m in module.modules()) or any(
            "Attention" in k for k in kinds):
        return "transformer"
    return "cnn"
