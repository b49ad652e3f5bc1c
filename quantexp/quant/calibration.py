"""Calibration data: a seeded draw from the training split, validated before use."""

from __future__ import annotations

import torch

from quantexp.config import ConfigError
from quantexp.models.base import Split


def draw_calibration(train: Split, test: Split, size: int, seed: int) -> Split:
    """``size`` training items drawn without replacement with ``seed``.

    Refuses a size larger than the training set, and proves that no calibration
    item is also a test item (by source-row id), so calibration never sees the
    data accuracy is measured on."""
    if size > len(train):
        raise ConfigError(
            f"method.calibration.size={size} is larger than the training set "
            f"({len(train)} items); choose at most {len(train)}")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=generator)[:size]
    calibration = train.subset(index)
    overlap = set(calibration.ids.tolist()) & set(test.ids.tolist())
    if overlap:
        raise ValueError(f"{len(overlap)} calibration items are also test items "
                         f"(ids {sorted(overlap)[:5]}...); the split is broken")
    for x in calibration.inputs:
        if x.shape[0] != size or (x.is_floating_point() and not torch.isfinite(x).all()):
            raise ValueError("calibration inputs have the wrong shape or non-finite values")
    return calibration


def summarize(calibration: Split) -> dict[str, float]:
    """Distribution summary of the first input, logged so that a sweep over
    calibration size/seed can relate accuracy spread to what was drawn."""
    x = calibration.inputs[0].float()
    counts = torch.bincount(calibration.labels, minlength=int(calibration.labels.max()) + 1)
    return {
        "calibration.items": float(len(calibration)),
        "calibration.input_mean": float(x.mean()),
        "calibration.input_std": float(x.std()),
        "calibration.input_min": float(x.min()),
        "calibration.input_max": float(x.max()),
        "calibration.classes_present": float((counts > 0).sum()),
    }
