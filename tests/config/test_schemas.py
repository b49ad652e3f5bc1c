"""Schema validation and the compatibility check, on dataclasses built directly."""

import pytest

from quantexp.config import (
    ConfigError,
    ExperimentConfig,
    ExporterConfig,
    HardwareConfig,
    PrecisionConfig,
    check_compatibility,
)
from quantexp.methods.fp32.config import Fp32Config
from quantexp.methods.ptq_dynamic.config import PTQDynamicConfig
from quantexp.methods.ptq_static.config import PTQStaticConfig
from quantexp.models.cnn.config import CNNConfig
from quantexp.models.rnn.config import RNNConfig


def experiment(method=None, precision="int8", hardware="cpu", exporter="none", model=None):
    return ExperimentConfig(
        model=model or CNNConfig(name="cnn", dataset="mnist5k"),
        method=method or PTQStaticConfig(),
        precision=PrecisionConfig(name=precision),
        hardware=HardwareConfig(name=hardware),
        exporter=ExporterConfig(name=exporter),
    )


def test_default_combination_is_valid():
    experiment().validate()


@pytest.mark.parametrize("method,precision", [(Fp32Config(), "fp32"), (PTQStaticConfig(), "int8"),
                                              (PTQDynamicConfig(), "int8"), (PTQDynamicConfig(), "fp16")])
def test_supported_precisions_pass(method, precision):
    check_compatibility(experiment(method=method, precision=precision))


def test_wrong_precision_names_valid_ones():
    with pytest.raises(ConfigError, match=r"precision=fp16; valid precision values for ptq_static: int8, w4a8, w4a8_tensor"):
        check_compatibility(experiment(precision="fp16"))


def test_static_int8_refused_on_cuda_with_valid_hardware_listed():
    with pytest.raises(ConfigError, match=r"hardware=cuda.*valid hardware values for ptq_static: ane, cpu"):
        check_compatibility(experiment(hardware="cuda"))


def test_ane_needs_coreml_exporter():
    with pytest.raises(ConfigError, match=r"hardware=ane cannot deploy with exporter=none"):
        check_compatibility(experiment(method=Fp32Config(), precision="fp32", hardware="ane"))


@pytest.mark.parametrize("field,value,message", [
    ("epochs", 0, "model.epochs must be >= 1"),
    ("lr", -1.0, "model.lr must be > 0"),
    ("n_train", 0, "model.n_train must be >= 1 or null"),
    ("test_fraction", 1.5, "model.test_fraction must be in"),
])
def test_model_values_are_checked(field, value, message):
    # The schema checks itself when built (__post_init__), so the refusal comes there.
    with pytest.raises(ConfigError, match=message):
        model = RNNConfig(name="lstm", dataset="mnist5k_rows", **{field: value})
        experiment(method=PTQDynamicConfig(), model=model).validate()


def test_calibration_size_must_be_positive():
    method = PTQStaticConfig()
    method.calibration.size = 0
    with pytest.raises(ConfigError, match="method.calibration.size must be >= 1"):
        experiment(method=method).validate()


def test_precision_bits():
    assert PrecisionConfig(name="int8", weight_dtype="int8").weight_bits == 8
