"""QAT configs composed from conf/ as a user writes them: the documented
examples build, and impossible bit widths / schedules are refused up front with
one line (before any model loads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from quantexp.config import ConfigError, build, register_configs

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


@pytest.mark.parametrize("overrides", [
    ["method=qat", "hardware=ane"],  # the example users quote (selects exporter=coreml)
    ["method=qat", "precision=w4a8", "precision.granularity=per_tensor"],
    ["method=qat_finetune", "precision=w4a8", "method.bit_schedule=[8,6]", "method.quant_noise=0.5",
     "method.gradual_groups=2", "method.gradual_interval=50"],
    ["method=qat", "model=lstm", "precision=int8"],
    ["method=ptq_static", "precision=w4a8"],
])
def test_qat_examples_build(overrides):
    exp = build(compose("config", overrides=overrides))
    assert exp.method.name == overrides[0].split("=")[1]


@pytest.mark.parametrize("overrides,message", [
    (["method=qat", "model=minilm"],
     "method=qat cannot run with model family=transformer; valid model family values for qat: cnn, rnn"),
    (["method=qat", "precision=fp16"], "method=qat cannot run with precision=fp16; valid precision values for qat: int8, w4a8, w4a8_tensor"),
    (["method=qat", "precision=w4a8", "precision.weight_dtype=nf4"],
     "precision.weight_dtype=nf4 is impossible for QAT; valid weight dtypes: int8, int4"),
    (["method=qat_finetune", "precision=w4a8", "method.bit_schedule=[8,2]"],
     "method.bit_schedule entry 2 is impossible with precision=w4a8: entries must lie in [4, 8] "
     "(the final width is 4 bits)"),
    (["method=qat_finetune", "precision=int8", "method.bit_schedule=[6]"],
     "method.bit_schedule entry 6 is impossible with precision=int8: entries must lie in [8, 8] "
     "(the final width is 8 bits)"),
    (["method=qat_finetune", "method.init=scratch"],
     "method=qat_finetune starts from the cached fp32 model: method.init must be fp32 "
     "(use method=qat for init=scratch)"),
    (["method=qat", "method.val_fraction=0.7"], "method.val_fraction must be in (0, 0.5), got 0.7"),
])
def test_impossible_qat_configs_refused(overrides, message):
    with pytest.raises(ConfigError) as info:
        build(compose("config", overrides=overrides))
    assert str(info.value) == message


def test_qat_from_scratch_gets_the_fp32_training_recipe():
    exp = build(compose("config", overrides=["method=qat", "model.epochs=10", "model.lr=0.002"]))
    assert (exp.method.epochs, exp.method.lr, exp.method.lr_schedule.value) == (10, 0.002, "constant")
    assert build(compose("config", overrides=["method=qat", "model.epochs=10", "method.epochs=4"])).method.epochs == 4
    finetune = build(compose("config", overrides=["method=qat_finetune", "model.epochs=10"])).method
    assert (finetune.epochs, finetune.lr_schedule.value) == (2, "cosine")


def test_w4a8_tensor_is_w4a8_with_per_tensor_weight_scales():
    exp = build(compose("config", overrides=["method=qat_finetune", "precision=w4a8_tensor"]))
    assert (exp.precision.weight_bits, exp.precision.granularity.value) == (4, "per_tensor")
    assert build(compose("config", overrides=["precision=w4a8_tensor"])).method.name == "ptq_static"
