"""Pre-flight: what can be checked about a validated experiment before any model loads
and before an MLflow run is opened, beyond the schemas - the cache folder can be
written, the MLflow sqlite store (when there is one) is a readable MLflow store, a
model directory exists and holds its files, the calibration set fits in the training
split, a manual mixed-precision assignment names layers the model has. Each failure is
one ``ConfigError`` line.

Cheap on purpose (no training, no network): it runs at the start of every run. Only a
manual ``method.assignment`` builds the (untrained) architecture to learn its layer names.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from quantexp.config import ConfigError, ExperimentConfig


def cache_dir_of(exp: ExperimentConfig, project_root: Path) -> Path:
    return Path(exp.cache_dir).expanduser() if exp.cache_dir else project_root / ".cache" / "quantexp"


def check_writable(folder: Path, key: str) -> None:
    """``folder`` can be written, or created: an existing folder gets a scratch file
    (removed at once); otherwise its nearest existing ancestor must be a writable
    directory. Nothing is created, so a refused run leaves nothing behind."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={folder} cannot be written: {existing} is not a directory")
    try:
        if existing == folder:
            with tempfile.TemporaryFile(dir=folder):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise ConfigError(f"{key}={folder} cannot be written: {exc.strerror or exc}") from exc


def check_sqlite_store(uri: str) -> None:
    """A sqlite MLflow store that exists must open and hold MLflow's tables; read-only,
    so nothing is created or migrated here (a new file is made by the first run)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"the MLflow store {path} is not a readable sqlite database ({exc}); move it "
                          "aside or set tracking.uri to another store") from exc
    if tables and not {"alembic_version", "runs", "experiments"} <= tables:
        raise ConfigError(f"{path} is a sqlite database but not an MLflow store (no runs/experiments "
                          "tables); set tracking.uri to another file")


def train_items(model) -> int:
    """Size of the training split ``make_splits`` will draw, from the same split function
    over the dataset's labels (no features are encoded, nothing is trained)."""
    from quantexp.models.datasets import load_raw, split_positions

    train, _ = split_positions(load_raw(model.dataset).labels, model.test_fraction, model.split_seed,
                               model.n_train, model.n_test)
    return len(train)


def check_calibration(exp: ExperimentConfig) -> None:
    from quantexp.methods import get_method

    if not get_method(exp.method.name).needs_calibration:
        return
    size, available = exp.method.calibration.size, train_items(exp.model)
    if size > available:
        raise ConfigError(f"method.calibration.size={size} is larger than the training set "
                          f"({available} items); choose at most {available}")
    needed = exp.method.training_items()
    if needed > available:  # e.g. a cascade's threshold holdout on top of the calibration set
        raise ConfigError(f"method={exp.method.name} needs {needed} training items (calibration and "
                          f"held-out items) but the training set has {available}")


def check_assignment(exp: ExperimentConfig) -> None:
    assignment = getattr(exp.method, "assignment", None)
    if not assignment:
        return
    from quantexp.models.training import seeded
    from quantexp.models.zoo import family_builder
    from quantexp.quant.mixed_layers import assignable_layers, validate_assignment

    builder = family_builder(exp.model)
    _, _, raw = builder.data()
    module = seeded(exp.seed, lambda: builder.build(raw.num_classes))  # the architecture, untrained
    validate_assignment(assignable_layers(module), assignment)


def check_deployment(exp: ExperimentConfig) -> None:
    """A memory cap below what the serving process holds before it loads anything (a bare
    interpreter with numpy, measured now in a child) can serve nothing."""
    profile = exp.deployment
    if profile is None or profile.memory_mb is None:
        return
    from quantexp.deployment.runner import footprint_mb

    floor = footprint_mb()
    if profile.memory_mb < floor:
        raise ConfigError(f"deployment.memory_mb={profile.memory_mb} is below the serving process's own footprint "
                          f"({floor:.0f} MB: the interpreter and numpy, before any runtime library or model)")


def check_engine(exp: ExperimentConfig) -> None:
    """hardware.engine names kernels this torch build has."""
    engine = getattr(exp.hardware.engine, "value", exp.hardware.engine)
    if engine == "auto":
        return
    import torch

    supported = list(torch.backends.quantized.supported_engines)
    if engine not in supported:
        raise ConfigError(f"hardware.engine={engine} is not in this torch build's quantized engines "
                          f"({', '.join(e for e in supported if e != 'none')}); use auto or one of them")


def check_precision_isa(exp: ExperimentConfig) -> None:
    """bf16 (and fp16 for method=cast) compute on the CPU only where the ISA has it."""
    if exp.hardware.device != "cpu":
        return
    from quantexp.hardware.cpu import read_cpu_info
    from quantexp.hardware.engine import bf16_unsupported_reason, fp16_unsupported_reason

    cpu = read_cpu_info()
    if exp.precision.name == "bf16":
        reason = bf16_unsupported_reason(cpu)
    elif exp.precision.name == "fp16" and exp.method.name == "cast":
        reason = fp16_unsupported_reason(cpu)
    else:
        reason = None
    if reason:
        raise ConfigError(reason)


def preflight(exp: ExperimentConfig, project_root: Path) -> None:
    check_writable(cache_dir_of(exp, project_root), "cache_dir")
    if exp.tracking.enabled:
        from quantexp.tracking.store import resolve_tracking_uri

        check_sqlite_store(resolve_tracking_uri(exp.tracking.uri, project_root))
    path = getattr(exp.model, "path", None)
    if isinstance(path, str):
        from quantexp.models.transformer.family import resolve_path

        resolve_path(path)  # the directory, its config.json (ModelSourceError is a ConfigError)
    check_calibration(exp)
    check_assignment(exp)
    check_engine(exp)
    check_precision_isa(exp)
    check_deployment(exp)


__all__ = ["cache_dir_of", "check_assignment", "check_calibration", "check_deployment", "check_engine", "check_precision_isa", "check_sqlite_store", "check_writable",
           "preflight", "train_items"]
