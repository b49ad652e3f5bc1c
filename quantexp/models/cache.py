"""On-disk cache of trained fp32 weights, one entry per (model config, seed).

Owns: the cache key (sha256 of the canonical JSON of the model config + seed +
``CACHE_VERSION``), the entry layout ``<cache_dir>/<name>-<key[:16]>/{model.pt,
meta.json}``, and atomic writes (temp file in the same directory, then
``os.replace``) so parallel sweep jobs never read a half-written file. Only
weights are cached; data is always rebuilt from its source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

import torch

from quantexp.config import ModelConfig

log = logging.getLogger(__name__)

# Bump when the architectures, training or data change in a way that makes
# existing cached weights wrong for the same config.
CACHE_VERSION = 1

WEIGHTS, META = "model.pt", "meta.json"


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_dict(cfg: ModelConfig) -> dict:
    """The model config as plain JSON-able data (Enums as their values)."""
    return _plain(dataclasses.asdict(cfg))


def cache_key(cfg: ModelConfig, seed: int) -> str:
    canonical = json.dumps({"config": config_dict(cfg), "seed": seed, "version": CACHE_VERSION},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def entry_dir(cache_dir: Path, cfg: ModelConfig, seed: int) -> Path:
    return Path(cache_dir) / f"{cfg.name}-{cache_key(cfg, seed)[:16]}"


@dataclass
class CacheEntry:
    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict


def load(cache_dir: Path, cfg: ModelConfig, seed: int, fingerprint: dict) -> CacheEntry | None:
    """The cached weights, or None on a miss. An entry written for another key (a
    16-hex-digit prefix clash), for other source files (``fingerprint``) or that
    cannot be read counts as a miss; the caller retrains and overwrites it."""
    path = entry_dir(cache_dir, cfg, seed)
    meta_file = path / META
    if not meta_file.is_file():  # meta.json is written last: no meta, no entry
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("key") != cache_key(cfg, seed):
            log.warning("cache entry %s belongs to another config; retraining", path)
            return None
        if meta.get("fingerprint", {}) != fingerprint:
            log.warning("cache entry %s was trained on other source files (%s != %s); retraining",
                        path, meta.get("fingerprint"), fingerprint)
            return None
        state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- a damaged pickle can fail in many ways; retraining fixes all
        log.warning("unreadable cache entry %s (%r); retraining", path, exc)
        return None
    return CacheEntry(path, state, meta)


def _atomic_write(target: Path, write: Callable[[IO[bytes]], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; cached models are shareable
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(cache_dir: Path, cfg: ModelConfig, seed: int, state_dict: dict[str, torch.Tensor],
         meta: dict, fingerprint: dict) -> Path:
    """Store weights + metadata; returns the entry directory."""
    path = entry_dir(cache_dir, cfg, seed)
    path.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "key": cache_key(cfg, seed), "seed": seed, "cache_version": CACHE_VERSION,
            "config": config_dict(cfg), "fingerprint": fingerprint}
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    # Weights first, meta last: a reader that sees meta.json also sees model.pt.
    _atomic_write(path / WEIGHTS, lambda f: torch.save(state, f))
    payload = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
    _atomic_write(path / META, lambda f: f.write(payload))
    return path
