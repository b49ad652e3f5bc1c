"""The fp32 reference of a run: exported and evaluated once per sweep, re-timed per job.

Every job of a sweep compares its candidate with the same fp32 model through the same
exporter. Exporting that model and evaluating it on the whole test set (tens of
seconds for MiniLM) used to be repeated in every job; now the first job of a sweep
to need it does the work under a file lock, stores the artifact, its candidate
facts and its per-item predictions under ``<sweep dir>/.fp32_reference/<key>/``, and
later jobs load the artifact back only to time it as the interleaved partner of their
candidate (timing is never cached: it belongs to the moment the candidate is timed).

The key is a sha256 over everything that decides the fp32 artifact and its
evaluation: the model, data and exporter configs, the hardware target, the seed,
the evaluation settings, and the fp32 weights themselves. Outside a sweep
(``cache_dir=None``) nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.config import ExperimentConfig
from quantexp.exporters import Exported, Exporter
from quantexp.files import atomic_write, atomic_write_json

KEY_VERSION = 1
CANDIDATE_FILE, PREDICTIONS_FILE = "candidate.json", "predictions.npy"
_LOCK_TIMEOUT_S = 3600  # a MiniLM export + evaluation on 2 busy cores takes minutes


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_key(exp: ExperimentConfig, model: torch.nn.Module) -> str:
    def plain(value: Any) -> Any:
        return asdict(value) if is_dataclass(value) else value

    parts = {"version": KEY_VERSION, "model": plain(exp.model), "exporter": plain(exp.exporter),
             "hardware": plain(exp.hardware), "eval": plain(exp.eval), "seed": exp.seed,
             "weights": weights_sha256(model)}
    canonical = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fp32_reference(exp: ExperimentConfig, model: torch.nn.Module, exporter: Exporter,
                   cache_dir: Path | None, out_dir: Path,
                   export_and_evaluate: Callable[[Path], tuple[Exported, dict[str, Any], np.ndarray | None]]
                   ) -> tuple[Exported, dict[str, Any], np.ndarray | None, bool]:
    """(exported, candidate dict, predictions, from_cache) of the fp32 reference.

    ``export_and_evaluate(folder)`` does the work (exports into ``folder``); without a
    ``cache_dir`` it runs into ``out_dir``. With one, the first caller stores its
    result and every later caller loads the stored artifact with ``exporter.load``.
    A candidate this host cannot run (no predictions) is recomputed rather than
    cached: there is nothing slow to save and no runtime to load."""
    if cache_dir is None:
        return (*export_and_evaluate(out_dir), False)
    from filelock import FileLock

    entry = Path(cache_dir) / reference_key(exp, model)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{entry}.lock", timeout=_LOCK_TIMEOUT_S):
        if (entry / CANDIDATE_FILE).is_file() and (entry / PREDICTIONS_FILE).is_file():
            cand = json.loads((entry / CANDIDATE_FILE).read_text())
            exported = exporter.load(Path(cand["artifact"]))
            preds = np.load(entry / PREDICTIONS_FILE)
            cand["artifact_load_time_s"] = exported.load_time_s
            return exported, cand, preds, True
        exported, cand, preds = export_and_evaluate(entry)
        if preds is not None:
            atomic_write(entry / PREDICTIONS_FILE, lambda f: np.save(f, preds))
            # written last: its presence says the entry is complete
            atomic_write_json(entry / CANDIDATE_FILE, cand)
        return exported, cand, preds, False


__all__ = ["fp32_reference", "reference_key", "weights_sha256"]
