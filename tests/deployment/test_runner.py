"""The serving child for real: a tiny ONNX model served under profiles, with the CPUs,
threads and memory cap observed from inside the child process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantexp.config import Arrival, DeploymentConfig, usable_cpus
from quantexp.deployment.runner import artifact_format, deploy, footprint_mb


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    path = folder / "mlp.onnx"
    torch.onnx.export(model, (torch.randn(2, 32),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 32)), folder / "mlp.pt")
    torch.save(model, folder / "pickled.pt")
    return folder


def test_artifact_formats(onnx_model):
    assert artifact_format(onnx_model / "mlp.onnx") == "onnx"
    assert artifact_format(onnx_model / "mlp.pt") == "torchscript"
    assert artifact_format(onnx_model / "pickled.pt") == "pickle"
    assert artifact_format(onnx_model / "x.tflite") is None


def test_pinned_one_core_one_thread_observed_in_the_child(onnx_model, tmp_path):
    profile = DeploymentConfig(name="edge", cores=1, threads=1, memory_mb=512, requests=30, warmup=2)
    r = deploy(profile, "fp32", onnx_model / "mlp.onnx", [np.random.rand(1, 32).astype("float32")], tmp_path)
    assert r["status"] == "ok", r
    seen = r["observed"]
    assert seen["cpus"] == usable_cpus()[:1]  # os.sched_getaffinity inside the child
    assert seen["threads"]["intra_op"] == 1 and seen["threads"]["inter_op"] == 1
    assert seen["env"]["OMP_NUM_THREADS"] == "1"
    assert r["limits"]["memory_mechanism"] in ("RLIMIT_AS", "cgroup v2 memory.max")
    assert r["latency"]["n"] == 30 and r["latency"]["p99_ms"] >= r["latency"]["p50_ms"] > 0
    assert 0 < r["peak_rss_mb"] < 512  # ORT + a tiny model: the child's own peak, not the parent's
    assert r["verdict"]["fits"] is True


@pytest.mark.whole_host
@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs 2 usable cores")
def test_two_threads_poisson(onnx_model, tmp_path):
    profile = DeploymentConfig(name="mobile", cores=2, threads=2, arrival=Arrival.poisson, rate_per_s=200,
                               requests=20, warmup=1)
    r = deploy(profile, "fp32", onnx_model / "mlp.onnx", [np.random.rand(1, 32).astype("float32")], tmp_path)
    assert r["observed"]["cpus"] == usable_cpus()[:2]
    assert r["observed"]["threads"]["intra_op"] == 2
    assert r["latency"]["n"] == 20


def test_a_cap_below_the_runtime_does_not_fit_and_says_why(onnx_model, tmp_path):
    """A cap of 35 MB: above the bare interpreter, below interpreter + onnxruntime."""
    floor = footprint_mb()
    assert 5 < floor < 100
    profile = DeploymentConfig(name="tiny", cores=1, memory_mb=int(floor) + 4, requests=5)
    r = deploy(profile, "fp32", onnx_model / "mlp.onnx", [np.random.rand(1, 32).astype("float32")], tmp_path)
    assert r["verdict"]["fits"] is False
    assert f"> {int(floor) + 4} MB cap" in r["verdict"]["summary"] or "allocation refused" in r["verdict"]["summary"]


def test_cold_start_counts_process_start_load_and_first_call(onnx_model, tmp_path):
    profile = DeploymentConfig(name="cold", cores=1, cold_start=True, cold_requests=2, p99_budget_ms=0.001)
    r = deploy(profile, "fp32", onnx_model / "mlp.onnx", [np.random.rand(1, 32).astype("float32")], tmp_path)
    assert len(r["cold_latencies_ms"]) == 2
    assert min(r["cold_latencies_ms"]) > r["first_call_ms"]  # includes the process start and load
    assert r["verdict"]["fits"] is False and "cold start p99" in r["verdict"]["summary"]


def test_torchscript_in_the_child_fixes_torch_threads(onnx_model, tmp_path):
    profile = DeploymentConfig(name="edge", cores=1, threads=1, requests=5, warmup=1)
    r = deploy(profile, "ts", onnx_model / "mlp.pt", [np.random.rand(1, 32).astype("float32")], tmp_path,
               engine="fbgemm")
    assert r["status"] == "ok", r
    assert r["observed"]["threads"]["intra_op"] == 1 and r["observed"]["threads"]["inter_op"] == 1
    assert r["observed"]["threads"]["quantized_engine"] == "fbgemm"
