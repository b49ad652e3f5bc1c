"""Where a job of a sweep runs and with how many threads.

``plan(hydra_cfg, requested_threads, isolation)`` reads the launcher Hydra was given:

- basic (Hydra's default): one job at a time; the threads are what the user asked.
- joblib (``hydra/launcher=joblib``): up to ``n_jobs`` jobs at once on this host
  (joblib's convention: -1 all cores, -2 all but one), capped by the Optuna sweeper's
  ``n_jobs`` (its batch) or the basic sweeper's ``max_batch_size``.
- ray (``hydra/launcher=ray``): in the Ray worker, the CPUs Ray gave this task
  (``ray.remote`` ``num_cpus``, 1 by default) and the CPUs of its node: up to
  node CPUs / task CPUs jobs share the node.

Each job gets ``cores // concurrent_jobs`` intra-op threads (at least 1), so that jobs
x threads <= cores; a larger ``hardware.threads`` is lowered to that and said so. A job
that may have run beside others is ``co_located``: its latencies were measured on a
shared host and are flagged (results.json ``placement``, MLflow tag
``quantexp.co_located``, a line under the summary).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf


@dataclass(frozen=True)
class Placement:
    launcher: str            # basic | joblib | ray | the launcher's class name
    concurrent_jobs: int     # at most this many jobs at once on this host
    cores: int               # cores of this host (the Ray node's CPUs under Ray)
    threads: int | None      # intra-op threads of this job (None: all usable cores)
    isolation: str           # process (a fresh process per job) | inline
    host: str
    threads_lowered_from: int | None = None  # hardware.threads the user asked, when lowered

    @property
    def co_located(self) -> bool:
        return self.concurrent_jobs > 1

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "co_located": self.co_located, "description": self.describe(),
                "tags": self.tags()}

    def tags(self) -> dict[str, str]:
        return {"quantexp.launcher": self.launcher, "quantexp.concurrent_jobs": str(self.concurrent_jobs),
                "quantexp.co_located": str(self.co_located).lower(), "quantexp.isolation": self.isolation,
                "quantexp.worker_host": self.host}

    def describe(self) -> str:
        threads = "all usable cores" if self.threads is None else \
            f"{self.threads} intra-op thread{'s' if self.threads != 1 else ''}"
        text = (f"placement: {self.launcher} launcher, up to {self.concurrent_jobs} job(s) at once on "
                f"{self.cores} cores of {self.host}; this job: {threads}, "
                f"{'its own process' if self.isolation == 'process' else 'in the launcher process'}")
        if self.concurrent_jobs > self.cores:
            text += f" (more jobs than cores: {self.concurrent_jobs} jobs time-share {self.cores} cores)"
        if self.threads_lowered_from is not None:
            text += f" (hardware.threads={self.threads_lowered_from} lowered so that jobs x threads <= cores)"
        if self.co_located:
            text += ("\nlatency measured under co-location: other jobs shared this host while it was "
                     "timed; compare it with runs timed alone only with care")
        return text


def _launcher_kind(hydra_cfg: Any) -> str:
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if "joblib" in target:
        return "joblib"
    if "ray" in target.lower() and "aws" not in target.lower():
        return "ray"
    if target.endswith("BasicLauncher") or not target:
        return "basic"
    return target.rsplit(".", 1)[-1]


def _joblib_jobs(n_jobs: Any, cores: int) -> int:
    n = 1 if n_jobs is None else int(n_jobs)
    if n < 0:  # joblib: -1 = all CPUs, -2 = all but one, ...
        n = max(os.cpu_count() or 1, cores) + 1 + n
    return max(n, 1)


def _ray_share() -> tuple[int, float] | None:
    """(the node's CPUs, this task's CPUs) inside a Ray task, else None."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    task_cpus = float(ctx.get_assigned_resources().get("CPU", 0.0))
    node_id = ctx.get_node_id()
    node_cpus = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("NodeID") == node_id), 0.0)
    return int(node_cpus) or (os.cpu_count() or 1), task_cpus


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan(hydra_cfg: Any, requested_threads: int | None, isolation: str) -> Placement:
    """The placement of the current job (``hydra_cfg``: ``HydraConfig.get()``)."""
    launcher = _launcher_kind(hydra_cfg)
    cores = _usable_cores()
    concurrent = 1
    if launcher == "joblib":
        concurrent = _joblib_jobs(OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None), cores)
    elif launcher == "ray":
        share = _ray_share()
        if share is not None:
            cores, task_cpus = share
            concurrent = max(1, int(cores // task_cpus)) if task_cpus > 0 else cores
    # The sweeper launches batches: never more jobs at once than a batch holds.
    for key in ("sweeper.n_jobs", "sweeper.max_batch_size"):
        batch = OmegaConf.select(hydra_cfg, key, default=None)
        if isinstance(batch, int) and batch > 0:
            concurrent = min(concurrent, batch)
    threads, lowered = requested_threads, None
    if concurrent > 1:
        budget = max(1, cores // concurrent)
        if requested_threads is None:
            threads = budget
        elif requested_threads > budget:
            threads, lowered = budget, requested_threads
    return Placement(launcher=launcher, concurrent_jobs=concurrent, cores=cores, threads=threads,
                     isolation=isolation, host=socket.gethostname(), threads_lowered_from=lowered)


__all__ = ["Placement", "plan"]
