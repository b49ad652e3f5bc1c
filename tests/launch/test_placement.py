"""Threads and co-location of a sweep's jobs (quantexp.launch.placement) for the launcher
configs Hydra composes: jobs x threads <= cores, a larger hardware.threads lowered and
said so, the sweeper's batch capping how many jobs run at once."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from quantexp.config import usable_cpus
from quantexp.launch.placement import plan

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def hydra(launcher: dict, sweeper: dict | None = None):
    return OmegaConf.create({"launcher": launcher, "sweeper": sweeper or {}})


def test_basic_launcher_runs_one_job_at_a_time_with_the_threads_asked():
    p = plan(hydra({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}), None, "process")
    assert (p.launcher, p.concurrent_jobs, p.threads, p.co_located) == ("basic", 1, None, False)
    assert plan(hydra({"_target_": "x.BasicLauncher"}), 3, "inline").threads == 3
    assert "co-location" not in p.describe()


def test_joblib_jobs_share_the_cores():
    p = plan(hydra({"_target_": JOBLIB, "n_jobs": 2}), None, "process")
    assert p.launcher == "joblib" and p.concurrent_jobs == 2 and p.co_located
    cores = len(usable_cpus())  # at run time: pytest-xdist workers run pinned to a share of them
    assert p.threads == max(1, cores // 2) and p.concurrent_jobs * p.threads <= max(cores, 2)
    assert "latency measured under co-location" in p.describe()
    assert p.tags()["quantexp.co_located"] == "true" and p.to_dict()["co_located"] is True
    every_core = plan(hydra({"_target_": JOBLIB, "n_jobs": -1}), None, "process")
    assert every_core.concurrent_jobs == max(os.cpu_count() or 1, cores) and every_core.threads >= 1


def test_threads_above_the_budget_are_lowered_and_said_so():
    p = plan(hydra({"_target_": JOBLIB, "n_jobs": 2}), 64, "process")
    assert p.threads == max(1, len(usable_cpus()) // 2) and p.threads_lowered_from == 64
    assert "hardware.threads=64 lowered" in p.describe()
    assert plan(hydra({"_target_": JOBLIB, "n_jobs": 2}), 1, "process").threads_lowered_from is None


def test_the_sweepers_batch_caps_the_jobs_at_once():
    # the Optuna sweeper launches n_jobs trials per batch: one at a time here
    p = plan(hydra({"_target_": JOBLIB, "n_jobs": 4}, {"n_jobs": 1}), None, "process")
    assert p.concurrent_jobs == 1 and not p.co_located and p.threads is None
    assert plan(hydra({"_target_": JOBLIB, "n_jobs": 4}, {"max_batch_size": 2}), None, "process").concurrent_jobs == 2
