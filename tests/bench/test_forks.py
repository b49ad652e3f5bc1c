"""The fork server (``bench.forks``): calls in fresh forks, their errors and time limits,
torch's threads in a fork, and a server forked too late found out once and refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from quantexp.bench.forks import ForkError, ForkServer
from tests.run_py import ROOT

# A fresh interpreter: the server is forked before any torch work, as pipeline.run does.
IN_A_FRESH_PROCESS = r"""
import json, operator, os, time
import torch
from quantexp.bench.forks import ForkError, ForkServer

server = ForkServer()
torch.set_num_threads(2)
torch.ones(1 << 20).sin_()  # this process's OpenMP pool now runs: a fork of *it* would hang
out = {"sum": server.call(operator.add, 2, 3, timeout_s=30)}
out["worker_pid_differs"] = server.call(os.getpid, timeout_s=30) not in (os.getpid(), server.pid)
for name, call in {"raises": (operator.truediv, 1, 0), "too_long": (time.sleep, 30)}.items():
    start = time.monotonic()
    try:
        server.call(*call, timeout_s=1)
    except ForkError as exc:
        out[name] = [str(exc), round(time.monotonic() - start, 1)]
out["after_errors"] = server.call(operator.mul, 6, 7, timeout_s=30)
server.close()
try:
    server.call(operator.add, 1, 1, timeout_s=1)
except ForkError as exc:
    out["closed"] = str(exc)
print(json.dumps(out))
"""


def test_calls_run_in_forks_of_a_server_started_before_torch_work():
    proc = subprocess.run([sys.executable, "-c", IN_A_FRESH_PROCESS], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sum"] == 5 and out["worker_pid_differs"] and out["after_errors"] == 42
    message, _ = out["raises"]
    assert message == "truediv failed in a forked process: ZeroDivisionError: division by zero"
    message, seconds = out["too_long"]
    assert "ran past its time limit" in message and seconds < 10  # stopped at ~1 s, not after 30
    assert out["closed"] == "the fork server is closed"


def test_a_server_forked_after_torch_work_is_found_out_once_and_refused():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # an xdist worker runs on one thread, which starts no OpenMP pool
    torch.ones(1 << 20).sin_()  # this process has run a parallel op: its forks hang in libgomp
    torch.set_num_threads(threads)
    server = ForkServer(alive_timeout_s=3)
    try:
        start = time.monotonic()
        with pytest.raises(ForkError, match="did not run a parallel op within 3 s"):
            server.call(len, "abc", timeout_s=30)
        assert time.monotonic() - start < 20
        start = time.monotonic()
        with pytest.raises(ForkError, match="did not run a parallel op"):  # refused at once
            server.call(len, "abc", timeout_s=30)
        assert time.monotonic() - start < 1
    finally:
        server.close()
