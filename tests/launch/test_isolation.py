"""One job in a fresh process (quantexp.launch.isolation), with real processes: the value
comes back, an exception comes back with the child's traceback, a process that dies
(os._exit, a real segfault) is JobCrashed with its exit code or signal and the stack
faulthandler wrote, each process's peak RSS is its own, and a job does not outlive the
process that waits for it (kill -9 of the launcher)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantexp.bench.memory import process_peak_rss_mb
from quantexp.config import ConfigError
from quantexp.launch.isolation import CRASH_STACK_FILE, JobCrashed, RemoteTraceback, run_in_fresh_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def light_fork_server():
    """The fork server of this pytest process preloads numpy only (what these jobs use)
    instead of torch + mlflow: ~10 s less; the sweeps in test_sweeps.py use the real list."""
    from quantexp.launch import isolation

    saved, isolation.PRELOAD = isolation.PRELOAD, ["numpy", "tests.launch.test_isolation"]
    yield
    isolation.PRELOAD = saved


def peak_after_allocating(mb: int) -> tuple[int, float]:
    import numpy as np

    block = np.ones(mb * 2**20 // 8)  # written, so the pages are resident
    block += 1
    return os.getpid(), process_peak_rss_mb()


def refuse(value: int) -> None:
    raise ConfigError(f"model.hidden={value} is refused")


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault_in_native_code() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV in the C library


def test_value_comes_back_and_each_job_reports_its_own_peak_rss():
    parent_peak = process_peak_rss_mb()
    pid_big, big = run_in_fresh_process(peak_after_allocating, 400)
    pid_small, small = run_in_fresh_process(peak_after_allocating, 1)
    assert os.getpid() not in (pid_big, pid_small) and pid_big != pid_small  # a fresh process each
    assert big - small > 300, (big, small)  # the second job does not report the first one's peak
    assert process_peak_rss_mb() < parent_peak + 100  # the parent never held the 400 MB


def test_an_exception_comes_back_with_the_childs_traceback():
    with pytest.raises(ConfigError, match="model.hidden=7 is refused") as info:
        run_in_fresh_process(refuse, 7)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in refuse" in cause.tb and "Traceback (most recent call last)" in cause.tb


def test_a_process_that_exits_without_answering_is_job_crashed(tmp_path):
    with pytest.raises(JobCrashed, match="exited with code 3"):
        run_in_fresh_process(exit_hard, 3, crash_dir=tmp_path)
    assert not (tmp_path / CRASH_STACK_FILE).exists()  # no fatal signal, nothing written


def test_a_segfault_is_job_crashed_with_the_python_stack_at_the_crash(tmp_path):
    with pytest.raises(JobCrashed, match="killed by signal SIGSEGV") as info:
        run_in_fresh_process(segfault_in_native_code, crash_dir=tmp_path)
    stack = (tmp_path / CRASH_STACK_FILE).read_text()
    assert "Segmentation fault" in stack and "segfault_in_native_code" in stack
    assert "segfault_in_native_code" in info.value.__cause__.tb
    # the launcher's process is still here and can run the next job
    assert run_in_fresh_process(peak_after_allocating, 1)[0] != os.getpid()


LAUNCHER = """
import sys, time
from pathlib import Path
from quantexp.launch import isolation
from tests.launch.test_isolation import sleep_and_say

isolation.PRELOAD = ["tests.launch.test_isolation"]  # a light fork server: this test is about the lifeline
isolation.run_in_fresh_process(sleep_and_say, sys.argv[1])
"""


def sleep_and_say(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def test_a_job_does_not_outlive_the_process_waiting_for_it(tmp_path):
    import psutil

    pid_file = tmp_path / "job.pid"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(pid_file)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (pid_file.is_file() and pid_file.read_text()):
        assert launcher.poll() is None and time.time() < deadline
        time.sleep(0.1)
    job = psutil.Process(int(pid_file.read_text()))
    assert job.is_running() and job.pid != launcher.pid
    launcher.send_signal(signal.SIGKILL)  # the sweep dies: its job must not measure on
    launcher.wait(timeout=30)
    deadline = time.time() + 30
    while job.is_running() and job.status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.1)
    assert not job.is_running() or job.status() == psutil.STATUS_ZOMBIE
