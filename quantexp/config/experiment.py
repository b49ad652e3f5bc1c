"""The top-level schema (``ExperimentConfig``) and the settings every run has beside
the five groups: benchmark, evaluation, tracking, objectives and the precision search."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from quantexp.config.enums import MIXED_DTYPES, DType
from quantexp.config.errors import ConfigError, require_positive, require_safe_name


@dataclass
class BudgetConfig:
    """What the user accepts: null = no limit on that quantity."""

    max_accuracy_drop: Optional[float] = None  # points (0-100) vs the fp32 model
    max_size_mb: Optional[float] = None
    max_latency_ms: Optional[float] = None

    def validate(self, prefix: str) -> None:
        for key in ("max_accuracy_drop", "max_size_mb", "max_latency_ms"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{prefix}.{key} must be >= 0 or null, got {value}")


@dataclass
class BenchConfig:
    batch_size: int = 16
    warmup: int = 5
    min_iters: int = 30
    # The fp32 reference and the candidate are timed in alternating rounds (ABBA...);
    # at least this many, each of ceil(min_iters / min_rounds) calls per side. The
    # speed-up's confidence interval resamples rounds, so more rounds, tighter CI.
    min_rounds: int = 10
    min_seconds: float = 2.0
    # Hard stop so a pathologically slow model cannot hang a sweep.
    max_seconds: float = 60.0
    # Coefficient of variation (%) above which a measurement is flagged noisy.
    noisy_cv_pct: float = 10.0
    # The speed-up's CI also covers drift within the timing: the rounds are cut into
    # this many contiguous stretches (batch means, bench/interleaved.py); 0 = the
    # bootstrap over single rounds alone, which is overconfident on a shared VM.
    drift_stretches: int = 4
    # The timing runs in this many processes - this one and processes-1 forked from a
    # clean copy of it made when the run starts - each for 1/processes of min_seconds;
    # the CI then spans the level each process holds (bench/forks.py). 1 = this one only.
    # On the CPU only; 2 gives a wide interval (a t quantile with 1 degree of freedom).
    processes: int = 5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require_positive(self, "batch_size", "min_iters", prefix="bench")
        if self.min_rounds < 2:
            raise ConfigError(f"bench.min_rounds must be >= 2 (the speed-up's CI resamples rounds), "
                              f"got {self.min_rounds}")
        if self.processes < 1:
            raise ConfigError(f"bench.processes must be >= 1 (1 = time in the run's own process), "
                              f"got {self.processes}")
        if self.drift_stretches < 0 or self.drift_stretches == 1:
            raise ConfigError(f"bench.drift_stretches must be 0 (off) or >= 2, got {self.drift_stretches}")
        if self.warmup < 0 or self.min_seconds < 0 or self.max_seconds <= 0:
            raise ConfigError("bench.warmup and bench.min_seconds must be >= 0, bench.max_seconds > 0")

    def interleaved_timing(self) -> dict[str, float]:
        """The keyword arguments of ``bench.interleaved.measure_interleaved`` these
        settings fix (everything but the batch and the statistics)."""
        return {"warmup": self.warmup, "min_rounds": self.min_rounds, "min_iters": self.min_iters,
                "min_seconds": self.min_seconds, "max_seconds": self.max_seconds,
                "drift_stretches": self.drift_stretches}


@dataclass
class EvalConfig:
    batch_size: int = 256
    bootstrap: int = 2000
    confidence: float = 0.95
    # Quality gate: a run whose accuracy drops more than this (in points, 0-100)
    # is marked as failing the gate; its numbers are still reported.
    max_accuracy_drop: Optional[float] = None
    # The gate decides on the drop's confidence interval (passed / FAILED / inconclusive).
    # true: a FAILED gate ends the process with exit code 4 (for CI); inconclusive does not.
    gate_fails_run: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require_positive(self, "batch_size", "bootstrap", prefix="eval")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"eval.confidence must be in [0.5, 1), got {self.confidence}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise ConfigError(f"eval.max_accuracy_drop is in points and must be in [0, 100] or null, "
                              f"got {self.max_accuracy_drop}")


@dataclass
class TrackingConfig:
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<project>/mlflow.db
    uri: Optional[str] = None
    experiment: str = "quantexp"
    enabled: bool = True
    log_model: bool = True

    def validate(self) -> None:
        """The URI's shape and the experiment name; whether the store opens is checked
        by the pre-flight (quantexp.preflight) before any model loads."""
        if not self.experiment or not self.experiment.strip():
            raise ConfigError("tracking.experiment must be a non-empty name")
        if self.uri is not None:
            # "postgresql+psycopg2://" is SQLAlchemy's dialect+driver form of "postgresql://"
            scheme = self.uri.split(":", 1)[0].split("+")[0].lower() if ":" in self.uri else ""
            if scheme not in TRACKING_SCHEMES:
                raise ConfigError(f"tracking.uri={self.uri!r} is not an MLflow tracking URI; use one of "
                                  f"{', '.join(s + '://' for s in TRACKING_SCHEMES)} (or null for the project's sqlite store)")
            if scheme == "sqlite" and not self.uri.lower().startswith("sqlite:///"):
                raise ConfigError(f"tracking.uri={self.uri!r}: a sqlite URI is sqlite:///<path>")


SEED_MAX = 2**32 - 1
# Store schemes MLflow's client accepts as a tracking URI (databricks: a workspace profile)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


# Objective names run.py can return: accuracy (0-1), accuracy_drop (points vs fp32),
# latency_ms (p50 of the deployed artifact), size_mb (artifact on disk).
OBJECTIVES = ("accuracy", "accuracy_drop", "latency_ms", "size_mb")


@dataclass
class SearchConfig:
    """Settings of a precision search (conf/search/*.yaml) read by the search space
    and the end-of-sweep report (quantexp/search)."""

    # Total trials the study should end with: a rerun of an interrupted search runs
    # only the ones still missing (hydra.sweeper.n_trials resolves to the rest).
    n_trials: int = 20
    # The budget the Pareto front is checked against at the end of the sweep.
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # Layer dtypes the search space may offer (each layer only gets those it supports).
    choices: list[DType] = field(default_factory=lambda: list(MIXED_DTYPES))
    # Optional sensitivity.csv (method=mixed method.sensitivity=true): with
    # budget.max_accuracy_drop, (layer, dtype) pairs that alone exceed it are pruned.
    sensitivity_table: Optional[str] = None
    # Offer a layer only the dtypes this host runs fast (quantexp.quant.kernels:
    # ISA check + cached micro-benchmark); a resumed study keeps its first space.
    kernel_filter: bool = True


class Isolation(str, Enum):
    process = "process"  # each job of a sweep in a fresh process (quantexp.launch)
    inline = "inline"    # in the launcher's process, as Hydra runs a job by itself


@dataclass
class LaunchConfig:
    """How the jobs of a sweep run (quantexp/launch): the launcher itself is Hydra's
    (hydra/launcher=basic|joblib|ray)."""

    # process: a crash, an OOM kill or a leaked thread pool ends one job only, and
    # per-job figures (peak RSS) are the job's own. Single runs are one process anyway.
    isolation: Isolation = Isolation.process


@dataclass
class ExperimentConfig:
    """The top-level schema; the five groups are typed by their own schemas."""

    model: Any = MISSING
    method: Any = MISSING
    precision: Any = MISSING
    hardware: Any = MISSING
    exporter: Any = MISSING
    seed: int = 0
    # Where fp32 models are cached; null: <project>/.cache/quantexp
    cache_dir: Optional[str] = None
    # Also measure the fp32 model in the same run, for deltas and speed-ups.
    compare_fp32: bool = True
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # What run.py returns to a sweeper: one name -> a float, several -> a tuple
    # (multi-objective Optuna). Names: see OBJECTIVES.
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    search: SearchConfig = field(default_factory=SearchConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    # A deployment profile (conf/deployment/, ``deployment=edge_1core``): each candidate
    # also runs in a child process under its limits (quantexp.deployment); null: none.
    deployment: Any = None

    def validate(self) -> dict[str, dict[str, Any]]:
        """Every rule, the cross-group ones included; returns what the compatibility
        check resolved ({group: {field: value}}), which ``build`` applies."""
        from quantexp.config.compat import check_compatibility

        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be in [0, {SEED_MAX}] (numpy and torch take 32-bit seeds), got {self.seed}")
        for group in ("method", "precision", "hardware", "exporter"):
            require_safe_name(getattr(self, group).name, f"{group}.name")
        self.tracking.validate()

        for part in (self.model, self.method, self.precision, self.hardware, self.exporter,
                     self.bench, self.eval):
            part.validate()
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ConfigError(f"unknown objective(s) {', '.join(unknown) or '(none given)'}; "
                              f"valid objectives: {', '.join(OBJECTIVES)}")
        self.search.budget.validate("search.budget")
        if self.deployment is not None:
            self.deployment.validate()
            if self.hardware.device != "cpu":
                raise ConfigError(f"deployment={self.deployment.name} runs the candidate in a child process on "
                                  f"this host's CPU; hardware={self.hardware.name} is not a CPU target")
        return check_compatibility(self)
