"""Every option of every config group composes through Hydra into its schema; valid
combinations build, invalid ones give the one-line error; typos are refused."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from quantexp.config import (
    ConfigError,
    ExperimentConfig,
    ExporterConfig,
    HardwareConfig,
    MethodConfig,
    ModelConfig,
    PrecisionConfig,
    build,
    register_configs,
    schemas,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "method", "precision", "hardware", "exporter")
SCHEMA_OF = {"model": ModelConfig, "method": MethodConfig, "precision": PrecisionConfig,
             "hardware": HardwareConfig, "exporter": ExporterConfig}


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


# Partners that make each option a valid run (the defaults are cnn / ptq_static / int8 /
# none / cpu), so that every case reaches its schema assertions.
PARTNERS = {
    ("model", "hf"): ["model.path=/some/dir"],
    ("method", "ort_dynamic"): ["exporter=onnx"],
    ("method", "ort_static"): ["exporter=onnx"],
    ("precision", "fp16"): ["method=ptq_dynamic"],
    ("precision", "fp32"): ["method=fp32"],
    ("precision", "fp4"): ["method=bnb_nf4"],
    ("precision", "nf4"): ["method=bnb_nf4"],
    ("precision", "mixed"): ["method=mixed"],
    ("hardware", "cuda"): ["method=fp32"],
    ("hardware", "mps"): ["method=fp32"],
}
# Options no method accepts yet: they compose into their schema and every run refuses them.
REFUSED = {("precision", "bf16"): "cannot run with precision=bf16; valid precision values for"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_into_its_schema(group, option):
    cfg = compose("config", overrides=[f"{group}={option}", *PARTNERS.get((group, option), [])])
    if (group, option) in REFUSED:
        assert isinstance(OmegaConf.to_object(cfg[group]), SCHEMA_OF[group])
        with pytest.raises(ConfigError, match=REFUSED[(group, option)]) as info:
            build(cfg)
        assert "\n" not in str(info.value)
        return
    exp = build(cfg)
    assert isinstance(exp, ExperimentConfig)
    node = getattr(exp, group)
    assert isinstance(node, SCHEMA_OF[group])
    assert type(node) is schemas(group)[_schema_key(group, node)]
    assert node.name == option


def _schema_key(group, node):
    """The name a node's schema is registered under in its group."""
    if group == "model":
        return node.family.value
    return node.name if group in ("method", "exporter") else group


@pytest.mark.parametrize("overrides", [
    ["method=fp32", "precision=fp32"],
    ["method=ptq_dynamic", "model=lstm"],
    ["method=ptq_dynamic", "precision=fp16", "model=minilm"],
    ["method=ptq_static", "model=minilm"],
])
def test_valid_combinations_build(overrides):
    exp = build(compose("config", overrides=overrides))
    assert exp.method.name == overrides[0].split("=")[1]


@pytest.mark.parametrize("overrides,message", [
    (["precision=fp16"], "method=ptq_static cannot run with precision=fp16; valid precision values for ptq_static: int8, w4a8, w4a8_tensor"),
    (["method=fp32", "precision=int8"], "method=fp32 cannot run with precision=int8; valid precision values for fp32: fp32"),
    # hardware=ane selects exporter=coreml; naming another exporter is refused
    (["hardware=ane", "method=fp32", "exporter=none"], "hardware=ane cannot deploy with exporter=none; valid exporters for ane: coreml"),
    (["method.calibration.size=0"], "method.calibration.size must be >= 1, got 0"),
])
def test_impossible_combinations_refused(overrides, message):
    with pytest.raises(ConfigError) as info:
        build(compose("config", overrides=overrides))
    assert str(info.value) == message


def test_typo_in_enum_value_is_refused():
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose("config", overrides=["method.calibration.observer=histogramm"])
    assert "histogram" in str(info.value.__cause__ or info.value)


def test_typo_in_key_is_refused():
    with pytest.raises(ConfigCompositionException):
        compose("config", overrides=["method.calibraton.size=3"])


def test_unknown_option_lists_valid_ones():
    with pytest.raises(MissingConfigException) as info:
        compose("config", overrides=["method=ptq_statc"])
    text = str(info.value)
    assert "ptq_static" in text and "ptq_dynamic" in text


def test_hf_without_path_is_refused():
    with pytest.raises(ConfigError, match="path"):
        build(compose("config", overrides=["model=hf"]))
