"""Which (layer, dtype) kernels this host runs fast, measured on the layers' real shapes.

A dtype only pays off where the CPU has a fast kernel for it: on an AVX2 host fp16 and
bf16 layers ran at 0.14x of fp32 (no half-precision arithmetic), and int8 on a tiny
layer loses to fp32 (its quantize/dequantize cost more than the product). So the
mixed-precision solver and search offer a (layer, dtype) only where:

1. the ISA has what the dtype needs (``isa_reason``: fp16 needs AVX512-FP16 or
   AMX-FP16, bf16 needs AVX512-BF16 or AMX-BF16; NEON fp16/bf16 on Arm) - checked
   first, without timing anything; and
2. a micro-benchmark of the layer as the mixed model runs it (``one_layer`` /
   static int8 between its own quantize and dequantize), on the input the layer
   receives at the deployment batch size, is not significantly slower than the
   fp32 layer - or slower by an immaterial amount (``IMMATERIAL``: at most 0.5% of all
   the layers' fp32 time; MiniLM's int8 embedding lookups cost 17 us more than fp32 on
   a ~100 ms model and save 35 MB; the latency objective still counts the delta): timed interleaved against it (``quantexp.bench.interleaved``), the
   speed-up's 95% CI must reach 1.0. In a model built in graph mode (``graph=True``:
   consecutive int8 layers share one quantized region) a static int8 layer is judged
   by its kernel alone (quint8 in, quint8 out), also timed: inside a region it pays
   no quantize/dequantize. The latency the solver adds up is always the one with its
   own boundaries (pessimistic for int8 runs; the built model is measured anyway).

Measurements are cached on disk per host (ISA flags, CPU model, torch version,
quantized engine, threads) and per layer signature (type, configuration, input shape)
and dtype: ``<cache_dir>/kernels/<host>/<entry>.json``, so a search or a rerun times
each kernel once. A noisy measurement (CI half-width over 10%: a busy host) is used
but not cached, and so is one taken while the host was busy (1-minute load average
above its usable cores: with two OpenMP threads and a third process running, a 64x10
Linear took 8 ms a call instead of 8 us - every kernel then measures the scheduler);
each entry records the load average it was measured under. Delete the folder to
measure again. The table's latencies are also
what the solver's latency objective adds up (``KernelTable.ms``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantexp.bench.interleaved import SLOWER, measure_interleaved
from quantexp.progress import track
from quantexp.quant.graph_probe import forward_with_hooks
from quantexp.quant.mixed_layers import assignable_layers, is_static_int8, one_layer, supported_dtypes

# Bump when the module a dtype is measured as changes: cached timings of the old one are stale.
KERNELS_VERSION = 1
ISA_NEEDS = {"fp16": ("avx512_fp16", "amx_fp16", "neon_fp16"),
             "bf16": ("avx512_bf16", "amx_bf16", "neon_bf16")}
# Timing budget per (layer, dtype): enough rounds for a CI, short enough for ~10 shapes.
IMMATERIAL = 0.005
TIMING = {"warmup": 3, "min_rounds": 8, "min_iters": 16, "min_seconds": 0.2, "max_seconds": 3.0}


def isa_reason(dtype: str, isa: Iterable[str]) -> str | None:
    """Why ``dtype`` has no fast kernel on a CPU with ISA flags ``isa`` (None: it may)."""
    needs = ISA_NEEDS.get(dtype)
    if needs and not set(needs) & set(isa):
        return f"no {dtype} arithmetic in this CPU's ISA (needs one of {', '.join(needs)})"
    return None


@dataclass
class KernelTiming:
    layer: str
    dtype: str
    signature: str
    offered: bool
    reason: str = ""
    fp32_ms: float = math.nan
    ms: float = math.nan
    speedup: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    noisy: bool = False
    cached: bool = False
    busy: bool = False  # measured while the host was busy: used, not cached
    # static int8, kernel alone (quint8 in and out): what a layer inside an int8 region costs
    core_speedup: float = math.nan
    core_ci_low: float = math.nan
    core_ci_high: float = math.nan


def layer_signature(module: nn.Module, x: torch.Tensor) -> str:
    """What decides a kernel's speed: the layer type, its configuration and input shape."""
    return f"{type(module).__name__}({module.extra_repr()}) <- {tuple(x.shape)} {x.dtype}"


def host_key(isa: Iterable[str], threads: int, engine: str) -> dict[str, Any]:
    from quantexp.hardware.cpu import read_cpu_info

    return {"cpu": read_cpu_info().model, "arch": platform.machine(), "isa": sorted(isa),
            "torch": torch.__version__, "engine": engine, "threads": threads, "version": KERNELS_VERSION}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class KernelCache:
    """One JSON file per (host, signature, dtype); written atomically (parallel jobs)."""

    def __init__(self, cache_dir: Path | None, host: Mapping[str, Any]):
        self.host = dict(host)
        self.folder = None if cache_dir is None else Path(cache_dir) / "kernels" / _digest(self.host)

    def _path(self, signature: str, dtype: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{_digest([signature, dtype])}.json"

    def get(self, signature: str, dtype: str) -> dict[str, Any] | None:
        path = self._path(signature, dtype)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        ok = data.get("host") == self.host and data.get("signature") == signature and data.get("dtype") == dtype
        return data["timing"] if ok else None

    def put(self, signature: str, dtype: str, timing: Mapping[str, Any]) -> None:
        path = self._path(signature, dtype)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"host": self.host, "signature": signature, "dtype": dtype, "timing": dict(timing)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1)
        os.replace(tmp, path)


def layer_inputs(model: nn.Module, names: Iterable[str], example: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The first positional input each layer receives in one forward pass of ``example``."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str):
        def hook(_m, args, _out) -> None:  # returns None: a forward hook's value replaces the output
            if args and name not in seen:
                seen[name] = args[0]
        return hook
    hooks = [(modules[n], keep(n)) for n in names]
    forward_with_hooks(model, hooks, example)
    return {n: t for n, t in seen.items() if isinstance(t, torch.Tensor)}


def _candidate(layer: nn.Module, dtype: str, x: torch.Tensor) -> nn.Module:
    if not is_static_int8(layer, dtype):
        return one_layer(layer, dtype).eval()
    import copy

    from torch.ao.quantization import QuantWrapper, convert, get_default_qconfig, prepare

    wrapper = QuantWrapper(copy.deepcopy(layer)).eval()
    wrapper.qconfig = get_default_qconfig(torch.backends.quantized.engine)
    prepare(wrapper, inplace=True)
    wrapper(x)
    return convert(wrapper)


def measure_kernel(layer: nn.Module, dtype: str, x: torch.Tensor, core: bool = False,
                   **timing: Any) -> dict[str, Any]:
    """Interleaved fp32 layer vs ``dtype`` layer on input ``x``: both medians (ms), the
    speed-up (fp32 time / dtype time) and its 95% CI; with ``core`` (static int8) also
    the kernel alone on the quantized input (``core_*``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation warnings
        candidate = _candidate(layer.eval(), dtype, x)
    settings = {**TIMING, **timing}
    with torch.no_grad():
        out = candidate(x)
        first = out[0] if isinstance(out, tuple) else out
        if not torch.isfinite(first.float()).all():
            raise RuntimeError(f"{dtype} kernel returned non-finite values")
        ref, cand, speedup = measure_interleaved(lambda: layer(x), lambda: candidate(x), batch_size=1,
                                                 **settings)
        result = {"fp32_ms": ref.p50_ms, "ms": cand.p50_ms, "speedup": speedup.ratio, "ci_low": speedup.ci_low,
                  "ci_high": speedup.ci_high, "noisy": speedup.noisy, "verdict": speedup.verdict,
                  "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        if core and is_static_int8(layer, dtype):
            qx, kernel = candidate.quant(x), candidate.module
            _, _, alone = measure_interleaved(lambda: layer(x), lambda: kernel(qx), batch_size=1, **settings)
            result.update(core_speedup=alone.ratio, core_ci_low=alone.ci_low, core_ci_high=alone.ci_high,
                          core_verdict=alone.verdict, noisy=speedup.noisy or alone.noisy)
    return result


@dataclass
class KernelTable:
    rows: list[KernelTiming]
    host: dict[str, Any]

    def choices(self, layers: Iterable[str]) -> dict[str, list[str]]:
        """{layer: dtypes offered}, fp32 always."""
        out: dict[str, list[str]] = {n: ["fp32"] for n in layers}
        for r in self.rows:
            if r.offered and r.layer in out:
                out[r.layer].append(r.dtype)
        return out

    @property
    def ms(self) -> dict[str, dict[str, float]]:
        """{layer: {dtype: ms}} from each pair's ratio to the layer's fp32 median (the
        ratio is what interleaving measures well; drift cancels in it)."""
        out: dict[str, dict[str, float]] = {}
        for layer in dict.fromkeys(r.layer for r in self.rows):
            timed = [r for r in self.rows if r.layer == layer and not math.isnan(r.speedup)]
            if not timed:
                continue
            fp32 = sorted(r.fp32_ms for r in timed)[len(timed) // 2]
            out[layer] = {"fp32": fp32, **{r.dtype: fp32 / r.speedup for r in timed}}
        return out

    def table_rows(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def summary(self) -> dict[str, Any]:
        offered = [r for r in self.rows if r.offered]
        return {"kernels.measured": sum(not math.isnan(r.speedup) for r in self.rows),
                "kernels.from_cache": sum(r.cached for r in self.rows),
                "kernels.offered": ",".join(sorted({f"{r.dtype}" for r in offered})) or "fp32 only",
                "kernels.isa": ",".join(self.host.get("isa", [])) or "none detected"}


def host_busy(max_load: float | None = None) -> bool:
    """Whether the 1-minute load average is above ``max_load`` (default: the cores this
    process may use)."""
    if not hasattr(os, "getloadavg"):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return os.getloadavg()[0] > (cores if max_load is None else max_load)


def kernel_table(model: nn.Module, example: tuple[torch.Tensor, ...], dtypes: Iterable[str], *,
                 cache_dir: Path | None, isa: Iterable[str], threads: int | None = None,
                 engine: str | None = None, graph: bool = False, max_load: float | None = None,
                 **timing: Any) -> KernelTable:
    """Every assignable layer of ``model`` x every dtype in ``dtypes`` it supports:
    ISA check, then a cached or fresh interleaved micro-benchmark on the input the
    layer receives from ``example`` (use the deployment batch size). ``graph``: the
    mixed model will be built in graph mode (static int8 judged by its kernel alone).
    ``max_load``: above this 1-minute load average a fresh timing is not cached
    (default: the usable cores)."""
    isa = list(isa)
    host = host_key(isa, threads or torch.get_num_threads(), engine or torch.backends.quantized.engine)
    cache = KernelCache(cache_dir, host)
    layers = assignable_layers(model)
    inputs = layer_inputs(model, layers, example)
    wanted = [d for d in dict.fromkeys(dtypes) if d != "fp32"]
    todo = [(n, d) for n, m in layers.items() for d in wanted if d in supported_dtypes(m)]
    rows, fresh = [], {}
    for name, dtype in track(todo, "kernel micro-benchmarks", total=len(todo)):
        layer = layers[name]
        if name not in inputs:
            rows.append(KernelTiming(name, dtype, "", False, "not called with a positional input"))
            continue
        signature = layer_signature(layer, inputs[name])
        reason = isa_reason(dtype, isa)
        if reason:
            rows.append(KernelTiming(name, dtype, signature, False, reason))
            continue
        core = graph and is_static_int8(layer, dtype)
        key = (signature, dtype + ("/core" if core else ""))
        timing_row = fresh.get(key) or cache.get(*key)
        cached = timing_row is not None and key not in fresh
        if timing_row is None:
            try:
                timing_row = measure_kernel(layer, dtype, inputs[name], core=core, **timing)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails here is not offered
                rows.append(KernelTiming(name, dtype, signature, False, f"failed: {type(exc).__name__}: {exc}"))
                continue
            timing_row["busy"] = host_busy(max_load)
            fresh[key] = timing_row
            if not timing_row["noisy"] and not timing_row["busy"]:  # used once, never kept
                cache.put(*key, timing_row)
        rows.append(_row(name, dtype, signature, timing_row, core, cached))
    _allow_immaterial(rows)
    return KernelTable(rows, host)


def _allow_immaterial(rows: list[KernelTiming], share: float = IMMATERIAL) -> None:
    """Offer the kernels measured slower by at most ``share`` of all layers' fp32 time."""
    fp32 = {r.layer: r.fp32_ms for r in rows if not math.isnan(r.fp32_ms)}
    total = sum(fp32.values())
    for r in rows:
        extra = r.ms - r.fp32_ms
        if not r.offered and ": slower" in r.reason and total > 0 and extra <= share * total:
            r.offered = True
            r.reason += f"; +{extra * 1000:.0f} us is {100 * extra / total:.2f}% of the layers' time: immaterial"


def _row(name: str, dtype: str, signature: str, t: Mapping[str, Any], core: bool, cached: bool) -> KernelTiming:
    """Offered unless significantly slower than fp32 (the kernel alone, for an int8
    layer inside a graph-mode region)."""
    prefix = "core_" if core else ""
    slower = t[prefix + "verdict"] == SLOWER
    why = (f"{'kernel alone ' if core else ''}{t[prefix + 'speedup']:.2f}x of fp32 "
           f"[{t[prefix + 'ci_low']:.2f}, {t[prefix + 'ci_high']:.2f}]{': slower' if slower else ''}"
           f"{', noisy' if t['noisy'] else ''}")
    extra = {k: t[k] for k in ("core_speedup", "core_ci_low", "core_ci_high") if k in t}
    why += ", host busy" if t.get("busy") else ""
    return KernelTiming(name, dtype, signature, not slower, why, t["fp32_ms"], t["ms"], t["speedup"], t["ci_low"],
                        t["ci_high"], bool(t["noisy"]), cached, bool(t.get("busy")), **extra)


__all__ = ["ISA_NEEDS", "KernelCache", "KernelTable", "KernelTiming", "host_busy", "host_key", "isa_reason",
           "kernel_table",
           "layer_inputs", "layer_signature", "measure_kernel"]
