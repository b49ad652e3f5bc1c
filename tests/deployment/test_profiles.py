"""Deployment profiles: the four shipped profiles compose, bad values are refused in one
line, and the fit verdict reads the measurement as a user would."""

from __future__ import annotations

import os

import pytest

from quantexp.api import compose
from quantexp.config import Arrival, ConfigError, DeploymentConfig, build, usable_cpus
from quantexp.deployment.cgroup import RLIMIT_AS, own_v2_path, prepare, v2_mount
from quantexp.deployment.verdict import latency_summary, verdict

HOST = len(usable_cpus())
# the whole host at collection, so at run time too (pytest-xdist workers are pinned otherwise)
pytestmark = pytest.mark.whole_host


@pytest.mark.parametrize("name", ["server", "edge_1core", "mobile_2thread", "serverless_cold"])
def test_shipped_profiles_compose(name):
    if name == "mobile_2thread" and HOST < 2:
        pytest.skip("needs 2 usable cores")
    exp = build(compose([f"deployment={name}"]))
    assert isinstance(exp.deployment, DeploymentConfig) and exp.deployment.name == name
    assert 1 <= len(exp.deployment.cpu_set()) <= HOST


def test_no_profile_by_default():
    assert build(compose([])).deployment is None


@pytest.mark.parametrize("kwargs, message", [
    ({"cores": HOST + 1}, f"deployment.cores={HOST + 1} but this host"),
    ({"affinity": [HOST + 7]}, "names CPU(s) this process cannot use"),
    ({"cores": 1, "affinity": usable_cpus()[:1] * 1 + ([usable_cpus()[-1]] if HOST > 1 else [])},
     "make them agree" if HOST > 1 else None),
    ({"memory_mb": 0}, "deployment.memory_mb must be >= 1"),
    ({"arrival": Arrival.poisson}, "needs deployment.rate_per_s > 0"),
    ({"rate_per_s": 5.0}, "applies to arrival=poisson only"),
    ({"p99_budget_ms": 0.0}, "deployment.p99_budget_ms must be > 0"),
    ({"batch_size": 0}, "deployment.batch_size must be >= 1"),
])
def test_bad_profiles_are_refused(kwargs, message):
    if message is None:
        pytest.skip("needs 2 usable cores")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DeploymentConfig(name="p", **kwargs)


def test_deployment_needs_a_cpu_target():
    with pytest.raises(ConfigError, match="not a CPU target"):
        build(compose(["deployment=edge_1core", "hardware=cuda", "method=fp32"]))


def test_cpu_set_and_threads():
    p = DeploymentConfig(name="p", cores=1)
    assert p.cpu_set() == usable_cpus()[:1] and p.thread_count() == 1
    assert DeploymentConfig(name="p", threads=3, cores=1).thread_count() == 3
    assert DeploymentConfig(name="p").cpu_set() == usable_cpus()


def _profile(**kw):
    return DeploymentConfig(name="edge", memory_mb=512, p50_budget_ms=10, p99_budget_ms=30, **kw)


def test_verdict_fits():
    m = {"status": "ok", "peak_rss_mb": 100.0, "latency": {"p50_ms": 2.0, "p99_ms": 5.0}}
    v = verdict(_profile(), m)
    assert v == {"fits": True, "reasons": [], "summary": "fits"}


def test_verdict_reasons_read_like_a_user_would_say_them():
    m = {"status": "ok", "peak_rss_mb": 612.4, "latency": {"p50_ms": 12.0, "p99_ms": 41.0}}
    v = verdict(_profile(), m)
    assert v["fits"] is False
    assert v["reasons"] == ["peak 612 MB > 512 MB cap", "p50 12 ms > 10 ms budget", "p99 41 ms > 30 ms budget"]
    assert v["summary"].startswith("does not fit: peak 612 MB > 512 MB cap; ")


def test_verdict_memory_crash_and_cold():
    refused = verdict(_profile(), {"status": "memory", "peak_rss_mb": 300.0, "error": "MemoryError"})
    assert refused["fits"] is False and "allocation refused under the 512 MB cap" in refused["reasons"][0]
    crashed = verdict(_profile(), {"status": "crashed", "error": "the serving process was killed by SIGKILL"})
    assert crashed["reasons"] == ["the serving process was killed by SIGKILL"]
    cold = verdict(DeploymentConfig(name="c", cold_start=True, p99_budget_ms=100),
                   {"status": "ok", "peak_rss_mb": 50.0, "latency": {"p50_ms": 90.0, "p99_ms": 700.0}})
    assert cold["reasons"] == ["cold start p99 700 ms > 100 ms budget"]
    other = verdict(_profile(), {"status": "not_measured", "error": "not measured on this host: x"})
    assert other["fits"] is None


def test_latency_summary():
    s = latency_summary([1.0] * 98 + [50.0, 100.0], batch_size=4, seconds=2.0)
    assert s["p50_ms"] == 1.0 and s["p99_ms"] > 49 and s["items_per_s"] == 200.0 and s["n"] == 100
    assert latency_summary([], 1, None) == {}


def test_cgroup_parsing_and_fallback(tmp_path):
    assert v2_mount("cgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0") \
        == "/sys/fs/cgroup/unified"
    assert own_v2_path("4:memory:/x\n0::/user.slice/a.scope\n") == "/user.slice/a.scope"
    # a fake /proc whose v2 cgroup has no memory controller: RLIMIT_AS, with the reason
    v2 = tmp_path / "cg"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "cgroup.controllers").write_text("cpu hugetlb\n")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "mounts").write_text(f"cgroup2 {v2} cgroup2 rw 0 0\n")
    (proc / "self" / "cgroup").write_text("0::/job\n")
    cap = prepare(256, "t", proc=proc)
    assert cap.mechanism == RLIMIT_AS and "no memory controller (controllers: cpu, hugetlb" in cap.reason
    assert prepare(None, "t").mechanism == "none"


def test_cgroup_v2_child_is_created_where_memory_is_offered(tmp_path):
    """The cgroup v2 path on a fake hierarchy (a real one needs a delegated cgroup):
    the child folder gets memory.max = the cap in bytes and is removed on release."""
    v2 = tmp_path / "cg"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "job" / "cgroup.subtree_control").write_text("memory\n")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "mounts").write_text(f"cgroup2 {v2} cgroup2 rw 0 0\n")
    (proc / "self" / "cgroup").write_text("0::/job\n")
    cap = prepare(256, "child", proc=proc)
    assert cap.mechanism == "cgroup v2 memory.max"
    assert (v2 / "job" / "child" / "memory.max").read_text() == str(256 * 2**20)
    os.remove(v2 / "job" / "child" / "memory.max")  # a real cgroupfs has no files to remove
    cap.release()
    assert not (v2 / "job" / "child").exists()


def test_fit_matrix_in_the_report():
    """The sweep report's fit matrix: one line per candidate, one column per profile."""
    from quantexp.report.compare import Row, fit_matrix, to_markdown

    def row(method, profile, summary):
        return Row(model="cnn", method=method, precision="int8", exporter="onnx", hardware="cpu", runtime="ort",
                   **{k: None for k in ("accuracy_pct", "accuracy_ci_low_pct", "accuracy_ci_high_pct",
                                        "fp32_accuracy_pct", "drop_pts", "drop_ci_low_pts", "drop_ci_high_pts",
                                        "agreement_pct", "p50_ms", "p90_ms", "items_per_s", "speedup",
                                        "speedup_ci_low", "speedup_ci_high", "speedup_verdict", "quantize_s",
                                        "n_items", "run_id", "results_path")},
                   size_mb=0.1, bits_per_param=8.0, gate="no gate", not_measured="",
                   deployment=f"{profile}: {summary}", deployment_profile=profile)

    rows = [row("fp32", "edge_1core", "does not fit: peak 516 MB > 512 MB cap"), row("fp32", "server", "fits"),
            row("ort_dynamic", "edge_1core", "fits")]
    matrix = fit_matrix(rows)
    assert matrix.splitlines()[0] == "| candidate | edge_1core | server |"
    assert "| cnn fp32@int8 onnx | no: peak 516 MB > 512 MB cap | fits |" in matrix
    assert "| cnn ort_dynamic@int8 onnx | fits |  |" in matrix
    assert "Deployment fit matrix:" in to_markdown(rows)
    assert fit_matrix([row("fp32", "", "")][:0]) == ""
