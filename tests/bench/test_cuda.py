"""The CUDA path: event timing with synchronisation, the torch runtime on the GPU, and
``run.py hardware=cuda`` end to end with bitsandbytes' GPU kernels.

Every test here needs an NVIDIA GPU and is skipped without one (CI has none; the
refusal of hardware=cuda on such a host is tested in test_hardware.py). They were run
on a GPU host with ``benchmarks/cuda_check.py``, which also prints the CUDA figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quantexp.bench.latency import cuda_event_timer, measure_latency
from quantexp.runtimes.torch_runtime import TorchRuntime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")

ROOT = Path(__file__).resolve().parents[2]


def test_event_timer_sees_gpu_work_the_host_clock_misses():
    """torch.cuda._sleep spins a kernel for N GPU clock cycles: the launch returns at
    once, so a host clock read without synchronising measures almost nothing."""
    cycles = 50_000_000  # ~25 ms at 2 GHz; at least ~10 ms on any GPU clocked <= 5 GHz
    torch.cuda._sleep(1000)  # load the kernel before timing
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    torch.cuda._sleep(cycles)
    host_ns = time.perf_counter_ns() - t0
    torch.cuda.synchronize()
    event_ns = cuda_event_timer()(lambda: torch.cuda._sleep(cycles))
    assert event_ns >= 10_000_000
    assert host_ns < event_ns / 5


def test_torch_runtime_runs_on_the_gpu_and_times_with_events():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    x = torch.randn(32, 64)
    expected = model(x)
    runtime = TorchRuntime(model, device="cuda")
    assert next(runtime.module.parameters()).is_cuda
    out = runtime(x)  # CPU inputs are moved by the runtime, as in the pipeline
    assert out.is_cuda
    # TF32 may be on for matmuls: a loose tolerance, still far below a wrong result
    torch.testing.assert_close(out.cpu(), expected.detach(), atol=2e-2, rtol=2e-2)
    assert runtime.call_timer() is not None
    stats = measure_latency(lambda: runtime(x), batch_size=32, warmup=2, min_iters=10,
                            min_seconds=0, time_call=runtime.call_timer())
    assert stats.n_iters >= 10 and 0 < stats.p50_ms < 100


@pytest.mark.parametrize("model, method, max_drop_pts", [
    ("cnn", "fp32", 0.0), ("cnn", "bnb_int8", 1.5), ("cnn", "bnb_nf4", 5.0),
    ("lstm", "fp32", 0.0),  # nn.LSTM's zero initial state is a device constant in a trace
])
def test_run_py_hardware_cuda(tmp_path: Path, model: str, method: str, max_drop_pts: float):
    """run.py as a user runs it (tracking off: the GPU host may lack an MLflow store);
    the quantized artifact is evaluated and timed on the GPU with CUDA events."""
    pytest.importorskip("bitsandbytes")
    args = [sys.executable, str(ROOT / "run.py"), f"model={model}", "model.n_train=1000",
            "model.epochs=1", "model.lr=0.003", f"method={method}", "hardware=cuda",
            "tracking.enabled=false", "bench.min_iters=5", "bench.min_seconds=0",
            "method.calibration.size=64", f"cache_dir={tmp_path}/cache",
            f"hydra.run.dir={tmp_path}/run"]
    # ROOT first, the caller's PYTHONPATH kept (a GPU host may carry packages on it)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "sm_" in results["host"]["accelerator"]
    cand = results["candidates"][method]
    assert cand["runtime"] == "torch cuda"
    assert cand["timing"] == "cuda events"
    assert cand["peak_gpu_mb"] > 0
    assert cand["latency"]["p50_ms"] > 0
    if method != "fp32":
        assert results["candidates"]["fp32"]["timing"] == "cuda events"
        assert -100 * results["comparison"]["accuracy_delta"] <= max_drop_pts
