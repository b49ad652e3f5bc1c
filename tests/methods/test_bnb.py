"""bitsandbytes methods on REAL bitsandbytes layers (CPU kernels): which Linear layers
are replaced, the storage accounting against hand computation, the outlier statistic
against bitsandbytes' own decomposition, and the refusals.

Storage of one 4-bit layer with N weights, blocksize B (all read from its state_dict):
  packed codes  N/2 bytes (two 4-bit codes per uint8)           -> 4 bits/weight
  absmax        ceil(N/B) values: fp32 (32 bits) without double quantization,
                uint8 (8 bits) with it
  nested absmax ceil(ceil(N/B)/256) fp32 (double quantization only)
  code books    quant_map 16 fp32; nested_quant_map 256 fp32 (double quantization only)
QLoRA's 4.5 / 4.127 bits per weight at B=64 are the per-weight terms
(4 + 32/64; 4 + 8/64 + 32/(64*256)); the code books add a fixed 512 (+8192) bits per layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from quantexp.config import ConfigError, HardwareConfig, PrecisionConfig
from quantexp.hardware import probe_host
from quantexp.methods.bnb.config import BnbInt8Config, BnbNF4Config
from quantexp.models.base import ModelBundle, Split

bnb = pytest.importorskip("bitsandbytes")
CONF = Path(__file__).resolve().parents[2] / "conf"

# After the importorskip: these import bitsandbytes.
from quantexp.bench.size import storage_bits  # noqa: E402
from quantexp.methods.bnb.int8 import BnbInt8, outlier_columns, outlier_fractions, to_int8_linear  # noqa: E402
from quantexp.methods.bnb.linears import linear_targets, weight_storage  # noqa: E402
from quantexp.methods.bnb.nf4 import BnbNF4, qlora_bits_per_param, to_4bit_linear  # noqa: E402


# --------------------------------------------------------------- fixtures
class Net(nn.Module):
    """Linear layers at several depths, a conv, and a MultiheadAttention whose
    out_proj (NonDynamicallyQuantizableLinear) must NOT be replaced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64))
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1)).mean(1)
        h = self.encoder(h).unsqueeze(1)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h.squeeze(1))


class ConvOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(1)).flatten(1)


def make_bundle(model: nn.Module, n: int = 96) -> ModelBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    split = Split((x,), y, torch.arange(n))
    return ModelBundle(model=model.eval(), name=type(model).__name__.lower(), family="cnn",
                       train=split, test=split, num_classes=3, input_names=["x"], load_time_s=0.0)


@pytest.fixture(scope="module")
def host():
    return probe_host(HardwareConfig(name="cpu"))


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return make_bundle(Net())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# ------------------------------------------------------------ replacement
def test_linear_targets_skip_attention_out_proj_and_honour_skip_modules(bundle):
    targets, skipped = linear_targets(bundle.model, [])
    assert targets == ["encoder.0", "encoder.2", "head"]  # attn.out_proj excluded
    assert skipped == []
    targets, skipped = linear_targets(bundle.model, ["head"])
    assert targets == ["encoder.0", "encoder.2"] and skipped == ["head"]


@pytest.mark.parametrize("method_cls,cfg,precision,layer_type", [
    (BnbInt8, BnbInt8Config(), "int8", "Linear8bitLt"),
    (BnbNF4, BnbNF4Config(), "nf4", "Linear4bit"),
    (BnbNF4, BnbNF4Config(blocksize=128, double_quant=False, skip_modules=["head"]), "fp4",
     "Linear4bit"),
])
def test_quantize_replaces_linears_and_runs(host, bundle, method_cls, cfg, precision, layer_type):
    method = method_cls(cfg, PrecisionConfig(name=precision), host)
    out = method.quantize(bundle, bundle.train)
    q, info = out.model, out.info
    kept = len(cfg.skip_modules)
    assert info["replaced_layers"] == 3 - kept and info["linear_layers_kept_fp32"] == kept
    types = {name: type(m).__name__ for name, m in q.named_modules()}
    assert sum(t == layer_type for t in types.values()) == 3 - kept
    assert types["attn.out_proj"] == "NonDynamicallyQuantizableLinear"
    assert types["head"] == ("Linear" if kept else layer_type)
    # The original model is untouched.
    assert type(bundle.model.head) is nn.Linear and bundle.model.head.weight.dtype == torch.float32
    x = bundle.test.inputs[0][:32]
    with torch.no_grad():
        ref, got = bundle.model(x), q(x)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    assert cosine(ref, got) > (0.999 if precision == "int8" else 0.98)
    # Per-layer table: every replaced layer, with finite SQNR and a high cosine.
    rows = info["tables"]["layer_error"]
    assert [r["layer"] for r in rows] == [n for n in ("encoder.0", "encoder.2", "head")
                                          if n not in cfg.skip_modules]
    assert all(r["type"] == layer_type and r["sqnr_db"] > 10 and r["cosine"] > 0.95 for r in rows)
    assert info["layer_error_min_sqnr_db"] == min(r["sqnr_db"] for r in rows)
    assert 0 < info["weight_memory_ratio_vs_fp32"] < 1


def test_nf4_carries_the_configured_format(host, bundle):
    cfg = BnbNF4Config(blocksize=256, double_quant=False, compute_dtype="bf16")
    q = BnbNF4(cfg, PrecisionConfig(name="fp4"), host).quantize(bundle, bundle.train).model
    state = q.encoder[0].weight.quant_state
    assert (state.quant_type, state.blocksize, state.nested) == ("fp4", 256, False)
    assert q.encoder[0].compute_dtype == torch.bfloat16


# ---------------------------------------------------------- bits / param
def four_bit_bits(n: int, blocksize: int, double_quant: bool) -> int:
    """Hand computation of a 4-bit layer's stored weight bits (see module docstring)."""
    blocks = math.ceil(n / blocksize)
    packed = math.ceil(n / 2) * 8
    if not double_quant:
        return packed + blocks * 32 + 16 * 32
    return packed + blocks * 8 + math.ceil(blocks / 256) * 32 + 16 * 32 + 256 * 32


@pytest.mark.parametrize("shape", [(1024, 1024), (100, 10)])  # 1000 weights: a partial block
@pytest.mark.parametrize("blocksize", [64, 128])
@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_storage_matches_hand_computation(shape, blocksize, double_quant):
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    model = nn.Sequential(to_4bit_linear(lin, "nf4", blocksize, double_quant, torch.float32, "cpu"))
    n = shape[0] * shape[1]
    expected = four_bit_bits(n, blocksize, double_quant)
    facts = weight_storage(model, ["0"])
    assert facts["quantized_weight_params"] == n
    assert facts["weight_bits_per_param"] * n == pytest.approx(expected, abs=1e-6)
    # The whole state_dict: the same plus the fp32 bias; the JSON quant_state blob is metadata.
    report = storage_bits(model.state_dict())
    assert report.param_bits == expected + shape[1] * 32
    assert report.other_keys == ("0.weight.quant_state.bitsandbytes__nf4",)


def test_hand_values_for_two_blocksizes():
    """The arithmetic itself, at 1024x1024 (code books included)."""
    n = 1024 * 1024
    assert four_bit_bits(n, 64, False) / n == 4.50048828125   # 4 + 32/64 + 512/n
    assert four_bit_bits(n, 64, True) / n == 4.13525390625    # 4 + 8/64 + 32*64/n + 8704/n
    assert four_bit_bits(n, 128, False) / n == 4.25048828125  # 4 + 32/128 + 512/n
    assert four_bit_bits(n, 128, True) / n == 4.07177734375   # 4 + 8/128 + 32*32/n + 8704/n
    assert qlora_bits_per_param(64, False) == 4.5
    assert qlora_bits_per_param(64, True) == pytest.approx(4.126953125)  # QLoRA's "4.127"
    assert qlora_bits_per_param(128, True) == pytest.approx(4 + 8 / 128 + 32 / (128 * 256))


def test_qlora_accounting_reproduced_on_a_4096_square_layer():
    """At 16.8M weights the per-layer code books vanish: 4.5 and 4.127 bits/weight.
    Hand: N = 4096^2 = 16,777,216; 262,144 blocks of 64.
    plain: 67,108,864 (codes) + 262,144*32 (absmax) + 512 = 75,497,984 bits -> 4.500030517578125
    DQ:    67,108,864 + 262,144*8 + 1,024*32 (nested absmax) + 512 + 8,192 = 69,247,488 bits
           -> 4.127471923828125"""
    torch.manual_seed(0)
    lin = nn.Linear(4096, 4096, bias=False)
    got = {}
    for dq in (False, True):
        model = nn.Sequential(to_4bit_linear(lin, "nf4", 64, dq, torch.float32, "cpu"))
        got[dq] = weight_storage(model, ["0"])["weight_bits_per_param"]
    assert got[False] == 75_497_984 / 4096**2 == 4.500030517578125
    assert got[True] == 69_247_488 / 4096**2 == 4.127471923828125
    assert round(got[False], 3) == 4.5 and round(got[True], 3) == 4.127


def test_int8_storage_matches_hand_computation():
    """int8 weight (1 byte each) + one fp32 row scale (SCB) per output row; the
    weight_format flag is metadata."""
    torch.manual_seed(0)
    model = nn.Sequential(to_int8_linear(nn.Linear(256, 96), 6.0, "cpu"))
    sd = model.state_dict()
    assert sd["0.weight"].dtype == torch.int8 and sd["0.SCB"].shape == (96,)
    assert weight_storage(model, ["0"])["weight_bits_per_param"] == (256 * 96 * 8 + 96 * 32) / (256 * 96)
    report = storage_bits(sd)
    assert report.param_bits == 256 * 96 * 8 + 96 * 32 + 96 * 32  # + fp32 bias
    assert report.other_keys == ("0.weight_format",)


# --------------------------------------------------------------- outliers
def test_outlier_columns_on_a_hand_made_activation():
    x = torch.zeros(2, 3, 8)  # [batch, tokens, features]
    x[0, 1, 0] = 7.0    # outlier
    x[1, 2, 3] = -6.0   # |x| == threshold counts (bitsandbytes uses >=)
    x[0, 0, 5] = 5.99   # below
    mask = outlier_columns(x, 6.0)
    assert mask.tolist() == [True, False, False, True, False, False, False, False]
    # The same columns bitsandbytes' own LLM.int8 decomposition takes out.
    _, _, cols = torch.ops.bitsandbytes.int8_vectorwise_quant(x.reshape(-1, 8).half(), 6.0)
    assert sorted(cols.tolist()) == [0, 3]


def test_outlier_fractions_union_and_per_batch():
    torch.manual_seed(0)
    model = nn.Sequential(to_int8_linear(nn.Linear(8, 4), 6.0, "cpu")).eval()
    a, b = torch.zeros(4, 8), torch.zeros(4, 8)
    a[0, 1] = 9.0          # batch 1: column 1
    b[2, 1] = b[3, 6] = 8  # batch 2: columns 1 and 6
    stats = outlier_fractions(model, ["0"], [(a,), (b,)], 6.0)
    assert stats["0"]["outlier_cols_frac"] == 2 / 8
    assert stats["0"]["outlier_cols_frac_per_batch"] == pytest.approx((1 / 8 + 2 / 8) / 2)


def test_int8_reports_outliers_per_layer(host, bundle):
    # Inputs scaled so that the first layer sees columns above the threshold.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g)
    x[:, :4] *= 20
    cal = Split((x,), torch.zeros(64, dtype=torch.long), torch.arange(64))
    info = BnbInt8(BnbInt8Config(threshold=6.0), PrecisionConfig(name="int8"), host).quantize(bundle, cal).info
    rows = {r["layer"]: r for r in info["tables"]["layer_error"]}
    assert rows["encoder.0"]["outlier_cols_frac"] >= 4 / 32
    assert info["outlier_cols_frac_mean"] == pytest.approx(
        sum(r["outlier_cols_frac"] for r in rows.values()) / len(rows))
    assert info["layers_with_outliers"] >= 1


# -------------------------------------------------------------- refusals
def test_model_without_linear_layers_is_refused_in_one_line(host):
    conv = make_bundle(ConvOnly())
    for method in (BnbInt8(BnbInt8Config(), PrecisionConfig(name="int8"), host),
                   BnbNF4(BnbNF4Config(), PrecisionConfig(name="nf4"), host)):
        with pytest.raises(ConfigError, match=r"has no nn\.Linear layers") as exc:
            method.check_model(conv)
        assert "\n" not in str(exc.value)
        with pytest.raises(ConfigError):
            method.quantize(conv, conv.train)


def test_skipping_every_linear_is_refused(host, bundle):
    method = BnbNF4(BnbNF4Config(skip_modules=["encoder", "head"]), PrecisionConfig(name="nf4"), host)
    with pytest.raises(ConfigError, match=r"all 3 Linear layers match method.skip_modules"):
        method.check_model(bundle)


# Schemas check themselves when built (__post_init__): the config is built inside raises.
@pytest.mark.parametrize("cfg,message", [
    (lambda: BnbNF4Config(blocksize=100), r"method.blocksize=100 is not supported.*valid blocksizes: 32, 64"),
    (lambda: BnbNF4Config(blocksize=8192), r"valid blocksizes: .*4096"),
    (lambda: BnbInt8Config(threshold=-1.0), r"method.threshold must be >= 0"),
])
def test_config_validation(cfg, message):
    with pytest.raises(ConfigError, match=message):
        cfg().validate()


def test_every_accepted_blocksize_is_accepted_by_bitsandbytes():
    from quantexp.methods.bnb.config import BNB_4BIT_BLOCKSIZES

    w = torch.randn(64, 64)
    for bs in BNB_4BIT_BLOCKSIZES:
        BnbNF4Config(blocksize=bs).validate()
        bnb.functional.quantize_4bit(w, blocksize=bs, quant_type="nf4")
    with pytest.raises(ValueError):
        bnb.functional.quantize_4bit(w, blocksize=100, quant_type="nf4")


@pytest.mark.parametrize("overrides,message", [
    (["method=bnb_int8", "precision=nf4"],
     "method=bnb_int8 cannot run with precision=nf4; valid precision values for bnb_int8: int8"),
    (["method=bnb_nf4", "precision=int8"],
     "method=bnb_nf4 cannot run with precision=int8; valid precision values for bnb_nf4: fp4, nf4"),
    (["method=bnb_nf4", "hardware=mps"],
     "method=bnb_nf4 cannot run with hardware=mps; valid hardware values for bnb_nf4: cpu, cuda"),
    (["method=bnb_nf4", "method.blocksize=100"], "method.blocksize=100 is not supported"),
])
def test_composed_configs_are_refused_in_one_line(overrides, message):
    from hydra import compose, initialize_config_dir

    from quantexp.config import build, register_configs

    register_configs()
    with (initialize_config_dir(config_dir=str(CONF), version_base=None),
          pytest.raises(ConfigError) as exc):
        build(compose("config", overrides=overrides))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_compute_dtype_outside_the_enum_is_refused_at_compose_time():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from quantexp.config import register_configs

    register_configs()
    with (initialize_config_dir(config_dir=str(CONF), version_base=None),
          pytest.raises(ConfigCompositionException, match="compute_dtype=fp8")):
        compose("config", overrides=["method=bnb_nf4", "method.compute_dtype=fp8"])


@pytest.mark.parametrize("overrides,precision", [
    (["method=bnb_nf4"], "nf4"), (["method=bnb_nf4", "precision=fp4"], "fp4"),
    (["method=bnb_int8"], "int8"), (["method=bnb_int8", "model=minilm"], "int8"),
])
def test_composed_defaults(overrides, precision):
    from hydra import compose, initialize_config_dir

    from quantexp.config import build, register_configs
    from quantexp.methods.bnb.config import BnbInt8Config, BnbNF4Config

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        exp = build(compose("config", overrides=overrides))
    assert exp.precision.name == precision
    assert isinstance(exp.method, BnbNF4Config if "nf4" in overrides[0] else BnbInt8Config)
    if isinstance(exp.method, BnbNF4Config):
        assert (exp.method.blocksize, exp.method.double_quant) == (64, True)
    else:
        assert exp.method.threshold == 6.0
