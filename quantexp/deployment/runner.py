"""Serve one candidate artifact under one deployment profile and judge it.

``deploy(profile, label, artifact, inputs, work_dir, ...)`` starts the serving process
(``python -m quantexp.deployment.child``: a fresh interpreter, see that module for why
not a fork) with the profile's threads in its environment and its cap prepared
(``quantexp.deployment.cgroup``), once for a warm profile, ``cold_requests`` times for a
cold one, and returns the measurement and the verdict. A child that is killed, runs out
of memory or fails is a measurement ("does not fit: ..."), never an exception: a sweep
over profiles and methods always finishes with its whole fit matrix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from quantexp.config import DeploymentConfig
from quantexp.deployment import cgroup
from quantexp.deployment.verdict import latency_summary, verdict

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Serving formats the child loads; others (LiteRT, Core ML) are reported as not measured.
SERVED = ("onnx", "torchscript", "pickle")


def artifact_format(path: Path) -> str | None:
    """onnx | torchscript | pickle (a torch.save'd module) | None (another format)."""
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".pt" and path.is_file():
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                # TorchScript archives hold the module's code; torch.save zips hold data.pkl only
                return "torchscript" if any("/code/" in n for n in z.namelist()) else "pickle"
        return "pickle"
    return None


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    # glibc reserves 64 MiB of address space per thread arena: under RLIMIT_AS that is
    # headroom lost to reservations, not memory; two arenas is what containers set too.
    env["MALLOC_ARENA_MAX"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


def footprint_mb() -> float:
    """Peak RSS of a serving process that has imported nothing but numpy (MiB): no memory
    cap below it can serve anything."""
    out = subprocess.run([sys.executable, "-m", "quantexp.deployment.child", "--footprint"], env=child_env(1),
                         capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _exit_reason(code: int, cap: cgroup.MemoryCap, cap_mb: int | None) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        text = f"the serving process was killed by {name}"
        if code == -signal.SIGKILL and cap.mechanism == cgroup.CGROUP_V2:
            text += f" (the kernel's OOM killer at the {cap_mb} MB memory.max)"
        return text
    return f"the serving process exited with code {code} without a result"


def _run_child(spec: dict[str, Any], work_dir: Path, tag: str, timeout_s: float) -> dict[str, Any]:
    """One serving process; its OUT.json, or a crash turned into a measurement."""
    cap = cgroup.prepare(spec["memory_mb"], f"quantexp-deploy-{os.getpid()}-{tag}")
    spec = {**spec, "mechanism": cap.mechanism, "cgroup": cap.cgroup}
    spec_path, out_path = work_dir / f"{tag}.spec.json", work_dir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "quantexp.deployment.child", str(spec_path), str(out_path)],
                              env=child_env(spec["threads"]), capture_output=True, text=True, timeout=timeout_s)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, ""
    finally:
        cap.release()
    if code is None:
        out = {"status": "crashed", "error": f"the serving process did not finish within {timeout_s:.0f} s"}
    elif out_path.is_file():
        out = json.loads(out_path.read_text())
    else:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        out = {"status": "crashed", "error": _exit_reason(code, cap, spec["memory_mb"]) + (f": {last}" if last else "")}
    out.update(mechanism=cap.mechanism, mechanism_reason=cap.reason, started_at=started)
    return out


def deploy(profile: DeploymentConfig, label: str, artifact: Path, inputs: list[np.ndarray], work_dir: Path,
           engine: str | None = None, graph_optimization: str | None = None, seed: int = 0) -> dict[str, Any]:
    """The measurement and verdict of ``artifact`` served under ``profile``."""
    fmt = artifact_format(Path(artifact))
    base = {"profile": profile.name, "artifact": str(artifact), "format": fmt}
    if fmt not in SERVED:
        m = {"status": "not_measured", "error": f"not measured on this host: the deployment child serves "
                                                f"TorchScript, pickled modules and ONNX, not {Path(artifact).suffix}"}
        return {**base, **m, "verdict": verdict(profile, m)}
    work_dir.mkdir(parents=True, exist_ok=True)
    inputs_path = work_dir / f"inputs_b{profile.batch_size}.npz"
    np.savez(inputs_path, *[np.asarray(a) for a in inputs])
    spec = {"artifact": str(artifact), "format": fmt, "inputs": str(inputs_path), "cpus": profile.cpu_set(),
            "threads": profile.thread_count(), "memory_mb": profile.memory_mb, "engine": engine,
            "graph_optimization": graph_optimization, "arrival": profile.arrival.value,
            "rate_per_s": profile.rate_per_s, "requests": profile.requests, "warmup": profile.warmup,
            "max_seconds": profile.max_seconds, "seed": seed}
    timeout = profile.max_seconds + 120.0  # imports + load + the steady state, with room
    if profile.cold_start:
        runs = [_run_child({**spec, "cold": True}, work_dir, f"{label}-cold{i}", timeout)
                for i in range(profile.cold_requests)]
        m = dict(next((r for r in runs if r["status"] != "ok"), runs[-1]))
        done = [r for r in runs if r["status"] == "ok"]
        cold = [1e3 * (r["first_answer_at"] - r["started_at"]) for r in done]
        m["cold_latencies_ms"] = cold
        m["latency"] = latency_summary(cold, profile.batch_size, None) if len(done) == len(runs) else {}
        m["peak_rss_mb"] = max((r["peak_rss_mb"] for r in runs if "peak_rss_mb" in r), default=None)
        for key in ("import_s", "load_s", "first_call_ms"):
            values = [r[key] for r in done if key in r]
            if values:
                m[key] = float(np.median(values))
    else:
        m = _run_child(spec, work_dir, label, timeout)
        if m["status"] == "ok":
            m["latency"] = latency_summary(m.get("latencies_ms", []), profile.batch_size, m.get("steady_s"))
    m.pop("traceback", None)
    return {**base, "limits": {"cpus": spec["cpus"], "threads": spec["threads"], "memory_mb": profile.memory_mb,
                               "memory_mechanism": m.get("mechanism"), "why": m.get("mechanism_reason")},
            **m, "verdict": verdict(profile, m)}


__all__ = ["SERVED", "artifact_format", "child_env", "deploy", "footprint_mb"]
