"""The ``deployment`` group's schema: a deployment profile (``conf/deployment/*.yaml``).

A profile states the limits a deployed model lives under - which cores, how many
threads, how much memory, what batch, how requests arrive, what latency is allowed,
and whether every request pays a cold start. The limits are enforced on a real child
process (``quantexp.deployment``); this module only describes and validates them
(torch-free: ``run.py --help`` imports it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Optional

from omegaconf import MISSING

from quantexp.config.errors import ConfigError, require_safe_name


class Arrival(str, Enum):
    closed_loop = "closed_loop"  # the next request is sent when the previous one answered
    poisson = "poisson"          # open loop: exponential gaps at ``rate_per_s``, latency from arrival


def usable_cpus() -> list[int]:
    """The CPU ids this process may run on (its affinity mask), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass
class DeploymentConfig:
    """One deployment profile. Every limit is applied to the child process that serves
    the candidate, and measured there."""

    key_field: ClassVar[str] = "name"
    implementation: ClassVar[str] = ""

    name: str = MISSING
    # Cores the child is pinned to (os.sched_setaffinity): the first ``cores`` CPUs this
    # process may use, or exactly ``affinity`` when given. null: every usable core.
    cores: Optional[int] = None
    affinity: Optional[list[int]] = None
    # Intra-op threads of torch / ONNX Runtime in the child (inter-op: 1). null: = cores.
    threads: Optional[int] = None
    # Memory cap of the child in MiB (cgroup v2 memory.max where writable, else RLIMIT_AS
    # on the address-space growth the cap allows); null: no cap. A candidate whose peak
    # RSS exceeds it does not fit.
    memory_mb: Optional[int] = None
    # Items per request.
    batch_size: int = 1
    arrival: Arrival = Arrival.closed_loop
    # Poisson arrivals: requests per second offered.
    rate_per_s: Optional[float] = None
    # Steady-state requests timed (after ``warmup`` untimed ones).
    requests: int = 200
    warmup: int = 5
    # Stop sending after this many seconds even if fewer requests were timed.
    max_seconds: float = 30.0
    # Latency budgets of one request (ms; steady state, or load + first call when cold).
    p50_budget_ms: Optional[float] = None
    p99_budget_ms: Optional[float] = None
    # true: every request is served by a fresh process (serverless): its latency is load
    # + first call; ``cold_requests`` fresh processes are started.
    cold_start: bool = False
    cold_requests: int = 5

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def schema_key(cls) -> str | None:
        return "deployment"

    def validate(self) -> None:
        require_safe_name(self.name, "deployment.name")
        host = usable_cpus()
        if self.cores is not None and not 1 <= self.cores <= len(host):
            raise ConfigError(f"deployment.cores={self.cores} but this host lets this process use "
                              f"{len(host)} core(s) ({_ids(host)}); choose 1-{len(host)} or null")
        if self.affinity is not None:
            outside = [c for c in self.affinity if c not in host]
            if not self.affinity or outside:
                raise ConfigError(f"deployment.affinity={list(self.affinity)} names CPU(s) this process "
                                  f"cannot use ({_ids(outside) or 'empty list'}); usable: {_ids(host)}")
            if self.cores is not None and self.cores != len(set(self.affinity)):
                raise ConfigError(f"deployment.cores={self.cores} but deployment.affinity lists "
                                  f"{len(set(self.affinity))} CPU(s); give one or make them agree")
        if self.threads is not None and not 1 <= self.threads <= 4 * len(host):
            raise ConfigError(f"deployment.threads must be in [1, {4 * len(host)}] or null, got {self.threads}")
        if self.memory_mb is not None and self.memory_mb < 1:
            raise ConfigError(f"deployment.memory_mb must be >= 1 (MiB) or null, got {self.memory_mb}")
        for key in ("batch_size", "requests", "cold_requests"):
            if getattr(self, key) < 1:
                raise ConfigError(f"deployment.{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup < 0 or not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise ConfigError("deployment.warmup must be >= 0 and deployment.max_seconds > 0")
        if self.arrival == Arrival.poisson:
            if self.rate_per_s is None or not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
                raise ConfigError(f"deployment.arrival=poisson needs deployment.rate_per_s > 0 (requests "
                                  f"per second), got {self.rate_per_s}")
        elif self.rate_per_s is not None:
            raise ConfigError("deployment.rate_per_s applies to arrival=poisson only; "
                              f"arrival={self.arrival.value} sends the next request when one answers")
        for key in ("p50_budget_ms", "p99_budget_ms"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"deployment.{key} must be > 0 ms or null, got {value}")

    def cpu_set(self) -> list[int]:
        """The CPUs the child is pinned to."""
        if self.affinity is not None:
            return sorted(set(self.affinity))
        host = usable_cpus()
        return host if self.cores is None else host[: self.cores]

    def thread_count(self) -> int:
        return self.threads if self.threads is not None else len(self.cpu_set())


def _ids(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


__all__ = ["Arrival", "DeploymentConfig", "usable_cpus"]
