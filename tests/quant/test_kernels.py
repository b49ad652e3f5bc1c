"""The kernel micro-benchmark that decides which (layer, dtype) choices a host is offered:
the ISA gate, the interleaved timing on the layers' real shapes, the on-disk cache and
its keys, and the choice filter fed from it."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from quantexp.quant.kernels import KernelCache, host_key, isa_reason, kernel_table, layer_signature

FAST = {"warmup": 1, "min_rounds": 4, "min_iters": 4, "min_seconds": 0.0, "max_seconds": 0.5}
AVX2 = ["avx2", "fma"]
# the caching mechanics, whatever the load: no timing counts as noisy or busy
STEADY = {**FAST, "noisy_pct": 1e9, "max_load": math.inf}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids).mean(1))))


def _net():
    torch.manual_seed(0)
    return Net().eval(), (torch.randint(0, 100, (8, 5)),)


def test_isa_gate():
    assert "avx512_fp16" in isa_reason("fp16", AVX2) and "avx512_bf16" in isa_reason("bf16", AVX2)
    assert isa_reason("bf16", ["avx2", "avx512f", "avx512_bf16"]) is None
    assert isa_reason("fp16", ["avx2", "avx512f", "avx512_bf16"]) is not None  # bf16 is not fp16
    assert isa_reason("fp16", ["amx_fp16"]) is None and isa_reason("fp16", ["neon_fp16"]) is None
    assert isa_reason("int8", AVX2) is None and isa_reason("int4", []) is None


def test_a_cpu_without_half_precision_is_never_offered_fp16_or_bf16(tmp_path):
    model, example = _net()
    table = kernel_table(model, example, ["fp16", "bf16", "int8", "int4"], cache_dir=tmp_path, isa=AVX2,
                         threads=1, **FAST)
    rows = {(r.layer, r.dtype): r for r in table.rows}
    for layer in ("emb", "fc1", "fc2"):
        for dtype in ("fp16", "bf16"):
            row = rows[(layer, dtype)]
            assert not row.offered and "ISA" in row.reason
            assert math.isnan(row.speedup)  # gated before any timing
        assert "fp16" not in table.choices(["emb", "fc1", "fc2"])[layer]
        assert table.choices([layer])[layer][0] == "fp32"
    # int8/int4 were timed on the layers' real inputs, interleaved against fp32
    fc1 = rows[("fc1", "int8")]
    assert fc1.signature == layer_signature(model.fc1, torch.zeros(8, 32))
    assert fc1.fp32_ms > 0 and fc1.ms > 0 and fc1.ci_low <= fc1.speedup <= fc1.ci_high
    assert fc1.offered == (fc1.ci_high >= 1.0)  # offered unless significantly slower
    assert {("fc1", "int4"), ("fc2", "int4"), ("emb", "int4"), ("emb", "int8")} <= set(rows)
    assert rows[("emb", "int4")].signature.startswith("Embedding(100, 32)")
    ms = table.ms
    assert ms["fc1"]["fp32"] > 0 and ms["fc1"]["int8"] == ms["fc1"]["fp32"] / fc1.speedup


def test_timings_are_cached_per_host_and_shape(tmp_path):
    model, example = _net()
    first = kernel_table(model, example, ["int8"], cache_dir=tmp_path, isa=AVX2, threads=1, **STEADY)
    kept = first.rows
    assert kept and not any(r.noisy or r.busy for r in kept)
    files = list((tmp_path / "kernels").rglob("*.json"))
    assert len(files) == len(kept)
    # a timing taken while the host is busy (load above max_load) is used, never kept
    busy_dir = tmp_path / "busy"
    busy = kernel_table(model, example, ["int8"], cache_dir=busy_dir, isa=AVX2, threads=1, max_load=-1.0, **FAST)
    assert all(r.busy and "host busy" in r.reason for r in busy.rows)
    assert not list((busy_dir / "kernels").rglob("*.json"))
    again = kernel_table(model, example, ["int8"], cache_dir=tmp_path, isa=AVX2, threads=1, **STEADY)
    by_layer = {r.layer: r for r in again.rows}
    for row in kept:
        assert by_layer[row.layer].cached and by_layer[row.layer].speedup == row.speedup
    # another thread count, ISA or input shape is another host / signature: timed afresh
    other = kernel_table(model, example, ["int8"], cache_dir=tmp_path, isa=AVX2, threads=2, **FAST)
    assert not any(r.cached for r in other.rows)
    wider = kernel_table(model, (torch.randint(0, 100, (16, 5)),), ["int8"], cache_dir=tmp_path, isa=AVX2,
                         threads=1, **FAST)
    assert not any(r.cached for r in wider.rows)
    # an entry whose host record does not match (e.g. another torch) is not used
    cache = KernelCache(tmp_path, host_key(AVX2, 1, torch.backends.quantized.engine))
    sig = layer_signature(model.fc1, torch.zeros(8, 32))
    path = cache._path(sig, "int8")
    if path.is_file():
        data = json.loads(path.read_text())
        data["host"]["torch"] = "0.0"
        path.write_text(json.dumps(data))
        assert cache.get(sig, "int8") is None


def test_the_filter_follows_the_cached_measurement(tmp_path):
    """A kernel measured slower than fp32 on this host is not offered; the same layer
    measured faster is. (The cache is the measurement's record: rewriting it stands for
    a host where the kernel is slow.)"""
    model, example = _net()
    cache = KernelCache(tmp_path, host_key(AVX2, 1, torch.backends.quantized.engine))
    sig = layer_signature(model.fc1, torch.zeros(8, 32))
    slow = {"fp32_ms": 10.0, "ms": 30.0, "speedup": 0.33, "ci_low": 0.30, "ci_high": 0.36, "noisy": False,
            "verdict": "slower"}
    cache.put(sig, "int8", slow)
    table = kernel_table(model, example, ["int8"], cache_dir=tmp_path, isa=AVX2, threads=1, **FAST)
    assert "int8" not in table.choices(["fc1"])["fc1"]
    row = next(r for r in table.rows if r.layer == "fc1")
    assert row.cached and "slower" in row.reason
    cache.put(sig, "int8", {**slow, "speedup": 1.8, "ci_low": 1.6, "ci_high": 2.0, "ms": 5.6, "verdict": "faster"})
    table = kernel_table(model, example, ["int8"], cache_dir=tmp_path, isa=AVX2, threads=1, **FAST)
    assert "int8" in table.choices(["fc1"])["fc1"]


def test_a_slower_kernel_is_offered_when_its_extra_time_is_immaterial(tmp_path):
    """Significantly slower but by <= 0.5% of all the layers' fp32 time (MiniLM's int8
    embedding lookups: +17 us on a ~100 ms model, 35 MB smaller) is offered, said so."""
    model, example = _net()
    cache = KernelCache(tmp_path, host_key(AVX2, 1, torch.backends.quantized.engine))
    sig = layer_signature(model.fc1, torch.zeros(8, 32))
    cache.put(sig, "int8", {"fp32_ms": 100.0, "ms": 100.2, "speedup": 0.998, "ci_low": 0.997, "ci_high": 0.999,
                            "noisy": False, "verdict": "slower"})
    table = kernel_table(model, example, ["int8"], cache_dir=tmp_path, isa=AVX2, threads=1, **FAST)
    row = next(r for r in table.rows if r.layer == "fc1")
    assert row.offered and "slower" in row.reason and "immaterial" in row.reason
    assert "int8" in table.choices(["fc1"])["fc1"]
