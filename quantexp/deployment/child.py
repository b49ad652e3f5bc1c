"""The serving process of a deployment profile: ``python -m quantexp.deployment.child
SPEC.json OUT.json``.

A fresh interpreter (not a fork of the run's process: that one holds torch, MLflow and
the model already, so its memory and start-up would not be a server's). In order:

1. pin itself to the profile's CPUs (``os.sched_setaffinity``);
2. join its cgroup v2 child (the parent set ``memory.max``), when there is one;
3. import its one runtime library (torch for TorchScript / pickles, onnxruntime for
   ONNX) and fix its threads (torch: intra-op = threads, inter-op 1; ORT: intra-op =
   threads, inter-op 1, sequential); the parent also set OMP/MKL thread variables;
4. without a cgroup: ``RLIMIT_AS`` = the address space it holds now + the RSS headroom
   the cap leaves (cap - RSS now). Address space grows at least as fast as RSS, so the
   limit is never looser than the cap; a process already above the cap does not fit;
5. load the artifact (timed), one first call (timed), ``warmup`` calls, then requests
   under the arrival pattern until ``requests`` or ``max_seconds``;
6. write what it saw: CPUs, threads as the libraries report them, OS threads, peak RSS
   (VmHWM, exact), ``memory.peak`` of its cgroup, timings, raw latencies.

Imports only the standard library and numpy at module level; everything it measures is
its own. Any failure is written to OUT as ``status`` + ``error`` (an allocation refused
under the cap is ``memory``), so that the parent never has to guess.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

_MIB = 2**20


def _rss_vms() -> tuple[int, int]:
    """(resident, virtual) bytes of this process, from /proc/self/statm."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as fh:
        vms, rss = (int(v) for v in fh.read().split()[:2])
    return rss * page, vms * page


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM of its own address space. Not getrusage's
    ru_maxrss, which Linux carries across exec from the forking parent (a child of a
    600 MB run would report 600 MB before doing anything)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


class _Torch:
    def __init__(self, spec: dict) -> None:
        import torch

        self.torch = torch
        torch.set_num_threads(spec["threads"])
        torch.set_num_interop_threads(1)
        if spec.get("engine") and spec["engine"] in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = spec["engine"]

    def load(self, path: str, fmt: str) -> None:
        torch = self.torch
        if fmt == "torchscript":
            self.module = torch.jit.load(path, map_location="cpu").eval()
        else:
            self.module = torch.load(path, weights_only=False, map_location="cpu").eval()

    def prepare(self, arrays: list[np.ndarray]) -> tuple:
        return tuple(self.torch.from_numpy(a) for a in arrays)

    def __call__(self, inputs: tuple) -> None:
        with self.torch.inference_mode():
            self.module(*inputs)

    def threads(self) -> dict:
        return {"intra_op": self.torch.get_num_threads(), "inter_op": self.torch.get_num_interop_threads(),
                "library": f"torch {self.torch.__version__}",
                "quantized_engine": self.torch.backends.quantized.engine}


class _Ort:
    _NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64}

    def __init__(self, spec: dict) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.spec = spec

    def load(self, path: str, fmt: str) -> None:
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.spec["threads"]
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT spins its intra-op threads between calls by default: on a pinned core that
        # is CPU stolen from the caller; a server would turn it off the same way.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        level = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                 "all": "ORT_ENABLE_ALL"}[self.spec.get("graph_optimization") or "all"]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.log_severity_level = 3
        self.options = options
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self.output = self.session.get_outputs()[0].name

    def prepare(self, arrays: list[np.ndarray]) -> dict:
        return {i.name: np.ascontiguousarray(a.astype(self._NP.get(i.type, a.dtype), copy=False))
                for i, a in zip(self.inputs, arrays)}

    def __call__(self, feeds: dict) -> None:
        self.session.run([self.output], feeds)

    def threads(self) -> dict:
        return {"intra_op": self.options.intra_op_num_threads, "inter_op": self.options.inter_op_num_threads,
                "library": f"onnxruntime {self.ort.__version__}", "execution_mode": "sequential"}


def _steady_state(call, inputs, spec: dict) -> tuple[list[float], float]:
    """Latencies (ms) of the timed requests and the seconds the phase took. Poisson:
    latency from each request's scheduled arrival, so queueing behind a slow call counts."""
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + spec["max_seconds"]
    if spec["arrival"] == "poisson":
        rng = np.random.default_rng(spec.get("seed", 0))
        arrivals = start + np.cumsum(rng.exponential(1.0 / spec["rate_per_s"], size=spec["requests"]))
        for arrival in arrivals:
            now = time.perf_counter()
            if arrival > deadline:
                break
            if now < arrival:
                time.sleep(arrival - now)
            call(inputs)
            latencies.append(1e3 * (time.perf_counter() - arrival))
    else:
        for _ in range(spec["requests"]):
            t0 = time.perf_counter()
            if t0 > deadline:
                break
            call(inputs)
            latencies.append(1e3 * (time.perf_counter() - t0))
    return latencies, time.perf_counter() - start


def serve(spec: dict) -> dict:
    out: dict = {"status": "ok", "pid": os.getpid()}
    os.sched_setaffinity(0, spec["cpus"])
    if spec.get("cgroup"):
        Path(spec["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
    t0 = time.perf_counter()
    runtime = _Ort(spec) if spec["format"] == "onnx" else _Torch(spec)
    out["import_s"] = time.perf_counter() - t0
    rss, vms = _rss_vms()
    out["rss_after_import_mb"] = rss / _MIB
    cap = spec.get("memory_mb")
    if cap is not None and spec["mechanism"] == "RLIMIT_AS":
        if rss > cap * _MIB:
            out.update(status="memory", error=f"the interpreter and its runtime already hold "
                                              f"{rss / _MIB:.0f} MB before loading the model")
            return out
        limit = vms + cap * _MIB - rss
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        out["rlimit_as_mb"] = limit / _MIB
    arrays = list(np.load(spec["inputs"]).values())
    t0 = time.perf_counter()
    runtime.load(spec["artifact"], spec["format"])
    out["load_s"] = time.perf_counter() - t0
    inputs = runtime.prepare(arrays)
    t0 = time.perf_counter()
    runtime(inputs)
    out["first_call_ms"] = 1e3 * (time.perf_counter() - t0)
    out["first_answer_at"] = time.time()  # wall clock: the parent measures a cold request from its spawn
    if not spec.get("cold"):
        for _ in range(spec["warmup"]):
            runtime(inputs)
        out["latencies_ms"], out["steady_s"] = _steady_state(runtime, inputs, spec)
    out["observed"] = {"cpus": sorted(os.sched_getaffinity(0)), "threads": runtime.threads(),
                       "os_threads": _os_threads(),
                       "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    return out


def main(argv: list[str]) -> int:
    if argv == ["--footprint"]:  # the serving process's floor: interpreter + numpy, no runtime yet
        print(f"{peak_rss_mb():.1f}")
        return 0
    spec = json.loads(Path(argv[0]).read_text())
    try:
        out = serve(spec)
    except MemoryError as exc:
        out = {"status": "memory", "error": f"allocation refused under the cap (MemoryError: {exc})"}
    except Exception as exc:  # noqa: BLE001 - everything is reported to the parent
        text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        # torch / ORT raise their own types when an allocation fails under RLIMIT_AS
        memory = any(s in str(exc).lower() for s in ("alloc", "out of memory", "cannot allocate", "bad_alloc"))
        out = {"status": "memory" if memory else "error", "error": text, "traceback": traceback.format_exc()}
    cgroup = spec.get("cgroup")
    if cgroup and Path(cgroup, "memory.peak").exists():
        out["cgroup_memory_peak_mb"] = int(Path(cgroup, "memory.peak").read_text()) / _MIB
    out["peak_rss_mb"] = peak_rss_mb()
    Path(argv[1]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
