"""method=cast (fp16/bf16) and method=woq_int8 (torch._weight_int8pack_mm): the device code
path of hardware=mps run on the CPU through the device parameter, the refusals where the
CPU lacks the instructions, and the MPS memory probe with a stand-in driver query."""

import pytest
import torch
from torch import nn

from quantexp.api import compose
from quantexp.bench.memory import MpsPeakMemory
from quantexp.config import ConfigError, build
from quantexp.hardware.cpu import read_cpu_info
from quantexp.hardware.engine import bf16_unsupported_reason
from quantexp.methods.lowp.method import Int8WeightOnlyLinear, to_precision, weight_only_int8
from quantexp.preflight import check_precision_isa


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cast_runs_in_the_low_dtype_on_the_given_device(precision, dtype):
    model, x = mlp(), torch.randn(8, 32)
    low = to_precision(model, precision, device="cpu")
    assert all(p.dtype == dtype for p in low.parameters())
    out = low(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, model(x), atol=0.1, rtol=0.05)
    assert (out.argmax(1) == model(x).argmax(1)).float().mean() >= 0.75


def test_weight_only_int8_uses_the_packed_kernel():
    model, x = mlp(), torch.randn(8, 32)
    q, replaced = weight_only_int8(model, device="cpu")
    assert replaced == 2 and all(isinstance(m, Int8WeightOnlyLinear) for m in (q[0], q[2]))
    assert q[0].weight_int8.dtype == torch.int8
    assert torch.allclose(q(x), model(x), atol=0.05)
    # the same layer with bf16 activations, as hardware=mps runs it in hardware.dtype
    assert q[0](x.bfloat16()).dtype == torch.bfloat16
    traced = torch.jit.trace(q, x)  # exporter=none saves TorchScript
    assert torch.allclose(traced(x), q(x))


def test_precisions_refused_where_the_isa_lacks_them():
    exp = build(compose(["method=cast", "precision=bf16"]))
    reason = bf16_unsupported_reason(read_cpu_info())
    if reason is None:
        check_precision_isa(exp)  # a bf16 CPU: accepted
    else:
        with pytest.raises(ConfigError, match="needs bf16 instructions"):
            check_precision_isa(exp)
    with pytest.raises(ConfigError, match="valid precision values for ptq_static"):
        build(compose(["method=ptq_static", "precision=bf16"]))


def test_cast_on_mps_needs_matching_dtype():
    with pytest.raises(ConfigError, match="needs hardware.dtype=bf16"):
        build(compose(["method=cast", "precision=bf16", "hardware=mps"]))
    exp = build(compose(["method=woq_int8", "hardware=mps"]))
    assert exp.method.name == "woq_int8" and exp.hardware.device == "mps"


def test_mps_peak_memory_samples_the_driver_query():
    values = iter([100 * 2**20, 300 * 2**20] + [200 * 2**20] * 1000)
    with MpsPeakMemory("cpu", read=lambda: next(values)) as mem:
        pass
    assert mem.peak_mb == 300.0
    with MpsPeakMemory("cpu") as idle:
        pass
    assert idle.peak_mb is None


def test_woq_int8_end_to_end(tmp_path):
    from tests.run_api import run_api

    r = run_api(["model=cnn", "method=woq_int8", "+debug=tiny", "model.epochs=1", "model.n_train=300"], tmp_path)
    assert r["method"]["quantized_layers"] >= 1 and r["method"]["kernel"] == "torch._weight_int8pack_mm"
    assert r["candidates"]["woq_int8"]["accuracy"] is not None
