"""On-disk cache of trained fp32 weights, one entry per (model config, seed).

Owns: the cache key (sha256 of the canonical JSON of the model config + seed +
``CACHE_VERSION``), the entry layout ``<cache_dir>/<name>-<key[:16]>/{model.pt,
meta.json}``, the sha256 of ``model.pt`` recorded in meta.json and checked on every
load (weights edited, truncated or swapped behind the cache's back are a miss, never
used), and atomic writes (``quantexp.files``) so parallel sweep jobs never read a
half-written file. Only weights are cached; data is always rebuilt from its source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from quantexp.config import ModelConfig
from quantexp.files import atomic_write

log = logging.getLogger(__name__)

# Bump when the architectures, training or data change in a way that makes
# existing cached weights wrong for the same config.
CACHE_VERSION = 2  # 2: meta.json records the sha256 of model.pt

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


@contextlib.contextmanager
def entry_lock(cache_dir: Path, cfg: ModelConfig, seed: int) -> Iterator[None]:
    """Hold ``<entry>.lock`` (an flock, through filelock): the first job to need an
    entry trains and saves it while the others wait, then they find it cached."""
    from filelock import FileLock, Timeout

    path = entry_dir(cache_dir, cfg, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another job is training this fp32 model; waiting for it (%s.lock)", cfg.name, path)
        start = time.perf_counter()
        lock.acquire()
        log.info("%s: waited %.1f s for the other job", cfg.name, time.perf_counter() - start)
    try:
        yield
    finally:
        lock.release()


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
        blob = (path / WEIGHTS).read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if meta.get("weights_sha256") != digest:
            log.warning("cache entry %s: %s does not match the sha256 recorded when it was cached "
                        "(%s != %s); retraining", path, WEIGHTS, digest, meta.get("weights_sha256"))
            return None
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- a damaged pickle can fail in many ways; retraining fixes all
        log.warning("unreadable cache entry %s (%r); retraining", path, exc)
        return None
    return CacheEntry(path, state, meta)


def save(cache_dir: Path, cfg: ModelConfig, seed: int, state_dict: dict[str, torch.Tensor],
         meta: dict, fingerprint: dict) -> Path:
    """Store weights + metadata; returns the entry directory."""
    path = entry_dir(cache_dir, cfg, seed)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    meta = {**meta, "key": cache_key(cfg, seed), "seed": seed, "cache_version": CACHE_VERSION,
            "config": config_dict(cfg), "fingerprint": fingerprint,
            "weights_sha256": hashlib.sha256(blob).hexdigest()}
    # Weights first, meta last: a reader that sees meta.json also sees model.pt.
    atomic_write(path / WEIGHTS, lambda f: f.write(blob))
    payload = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
    atomic_write(path / META, lambda f: f.write(payload))
    return path
