"""The QAT training loop shared by ``qat`` and ``qat_finetune``.

Adam + a learning-rate schedule (cosine / step / constant), progress bar,
per-step schedule effects (``QuantSchedule``), task loss + optional
distillation and range regulariser, a non-finite loss check that stops the
run with ``QATDiverged``, validation on a held-out part of the *training*
split every epoch (the test split is never seen), early stopping with the best
final-configuration checkpoint restored, and per-step / per-epoch metrics to
MLflow when a run logger is attached.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from quantexp.methods.qat.fake_quant import (
    QATDiverged,
    QuantSchedule,
    QuantUnit,
    distillation_loss,
    logits_of,
    range_regulariser,
    weight_stats,
)
from quantexp.models.base import Split
from quantexp.progress import track

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str = "cosine"
    patience: int = 0  # epochs without validation improvement before stopping; 0: never stop early
    seed: int = 0
    log_every: int = 10
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    range_reg: float = 0.0


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train part, validation part): a seeded random ``fraction`` of the training split."""
    n_val = max(1, round(len(train) * fraction))
    if n_val >= len(train):
        raise ValueError(f"validation fraction {fraction} leaves no training items ({len(train)} items)")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[n_val:]), train.subset(order[:n_val])


def _lr_factor(kind: str, step: int, total: int) -> float:
    if kind == "constant":
        return 1.0
    if kind == "step":  # x0.1 at 2/3 of training
        return 0.1 if step >= (2 * total) // 3 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))  # cosine


def train_qat(model: nn.Module, units: list[QuantUnit], schedule: QuantSchedule, train: Split, val: Split,
              settings: TrainSettings, *, teacher: nn.Module | None = None, run_log=None,
              desc: str = "qat") -> dict[str, Any]:
    """Train the prepared (fake-quant) ``model`` in place. Returns ``{"history":
    per-epoch rows, "ranges": per-epoch per-layer weight stats, "steps": number of
    steps, "best_epoch", "stopped_early"}``."""
    s = settings
    generator = torch.Generator().manual_seed(s.seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    steps_per_epoch = math.ceil(len(train) / s.batch_size)
    total = steps_per_epoch * s.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: _lr_factor(s.lr_schedule, k, total))
    if teacher is not None:
        teacher.eval()

    history: list[dict[str, Any]] = []
    ranges: list[dict[str, Any]] = []
    best: tuple[float, int, dict] | None = None
    bad_epochs, step, stopped_early = 0, 0, False
    for epoch in range(s.epochs):
        bits = schedule.start_epoch(epoch)
        model.train()
        order = torch.randperm(len(train), generator=generator)
        sums = {"loss": 0.0, "task_loss": 0.0, "distill_loss": 0.0, "range_loss": 0.0}
        correct = 0
        for start in track(range(0, len(train), s.batch_size), f"{desc} epoch {epoch + 1}/{s.epochs}"):
            state = schedule.apply_step(model, step)
            index = order[start:start + s.batch_size]
            inputs = tuple(x[index] for x in train.inputs)
            labels = train.labels[index]
            logits = model(*inputs)
            task = F.cross_entropy(logits, labels)
            loss = task
            parts = {"task_loss": task}
            if teacher is not None and s.distill_weight > 0:
                with torch.no_grad():
                    teacher_logits = teacher(*inputs)
                parts["distill_loss"] = distillation_loss(logits, teacher_logits, s.distill_temperature)
                loss = loss + s.distill_weight * parts["distill_loss"]
            if s.range_reg > 0:
                parts["range_loss"] = range_regulariser(units)
                loss = loss + s.range_reg * parts["range_loss"]
            if not torch.isfinite(loss):
                if run_log is not None:
                    run_log.log_metrics({"qat.step.loss_finite": 0.0}, step=step)
                raise QATDiverged(f"QAT training diverged: loss is {loss.item()} at epoch {epoch + 1}, "
                                  f"step {step} (lr {scheduler.get_last_lr()[0]:.3g}); lower method.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = len(index)
            sums["loss"] += loss.item() * n
            for key, value in parts.items():
                sums[key] += float(value.detach()) * n
            correct += int((logits.argmax(1) == labels).sum())
            if run_log is not None and step % s.log_every == 0:
                run_log.log_metrics({"qat.step.loss": loss.item(), "qat.step.lr": scheduler.get_last_lr()[0],
                                     **{f"qat.step.{k}": v for k, v in state.items()}}, step=step)
            if step == 0:  # scales right after the first step: the reference for drift
                ranges.extend({"epoch": 0, **r} for r in weight_stats(units))
            step += 1

        val_acc = float((logits_of(model, val.inputs).argmax(1) == val.labels).float().mean())
        final = schedule.final_from(step - 1, epoch)
        row = {"epoch": epoch + 1, "steps": step, "lr": scheduler.get_last_lr()[0], "weight_bits": bits,
               **{k: v / len(train) for k, v in sums.items()}, "train_accuracy": correct / len(train),
               "val_accuracy": val_acc, **{k: state[k] for k in ("groups_on", "fraction_layers_quantized",
                                                                  "observers_frozen", "bn_frozen")},
               "final_configuration": final}
        epoch_ranges = weight_stats(units)
        for r in epoch_ranges:
            ranges.append({"epoch": epoch + 1, **r})
        row["clip_fraction_mean"] = sum(r["clip_fraction"] for r in epoch_ranges) / max(len(epoch_ranges), 1)
        history.append(row)
        log.info("%s epoch %d/%d: loss %.4f, val accuracy %.4f, %d-bit weights, %d group(s) on",
                 desc, epoch + 1, s.epochs, row["loss"], val_acc, bits, row["groups_on"])
        if run_log is not None:
            run_log.log_metrics({f"qat.epoch.{k}": v for k, v in row.items() if k != "epoch"}, step=epoch + 1)

        # Early stopping only among checkpoints that are the final quantized model.
        if final:
            if best is None or val_acc > best[0]:
                best, bad_epochs = (val_acc, epoch + 1, copy.deepcopy(model.state_dict())), 0
            else:
                bad_epochs += 1
                if s.patience and bad_epochs >= s.patience:
                    stopped_early = True
                    log.info("%s: early stop after epoch %d (no validation gain for %d epochs)",
                             desc, epoch + 1, bad_epochs)
                    break
    if best is not None:
        model.load_state_dict(best[2])
    return {"history": history, "ranges": ranges, "steps": step,
            "best_epoch": best[1] if best else None, "best_val_accuracy": best[0] if best else None,
            "stopped_early": stopped_early}
