"""QAT and QAT fine-tuning against 4-bit PTQ on the same tiny model, on real
MNIST digits, through the real methods (no pipeline around them).

The model is a 2/4-channel SmallCNN (hidden 8) trained for a few epochs: small
enough that 4-bit weights hurt it under PTQ. Stated margin: qat_finetune's
converted (really quantized) w4a8 model is at least 1.0 accuracy point above
ptq_static w4a8 on the 1,000 test items, and qat (fine-tuning the fp32 weights
with plain QAT) at least 0.5 point - or half of what PTQ lost, where that is less
(a host whose int8 kernels lose less leaves less to recover); the measured figures on this host are in the
QAT report (about +3 points for qat_finetune)."""

from __future__ import annotations

import pytest
import torch

from quantexp.config import CalibrationConfig, HardwareConfig, Observer, PrecisionConfig
from quantexp.hardware import probe_host
from quantexp.methods.ptq_static.config import PTQStaticConfig
from quantexp.methods.ptq_static.method import PTQStatic
from quantexp.methods.qat.config import QATConfig, QATFinetuneConfig, QATInit
from quantexp.methods.qat.finetune import QATFinetune
from quantexp.methods.qat.method import QAT
from quantexp.models import load_model
from quantexp.models.cnn.config import CNNConfig
from quantexp.models.training import accuracy
from quantexp.quant.calibration import draw_calibration

# In the default suite (the acceptance test): about 10 s on a quiet 2-core
# host, up to 4 minutes on a busy one (fp32 training + PTQ + two QAT runs).

W4A8 = PrecisionConfig(name="w4a8", weight_dtype="int4", activation_dtype="int8")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    cfg = CNNConfig(name="cnn_tiny", dataset="mnist5k", channels=[2, 4], hidden=8, n_train=2000,
                    epochs=4, lr=0.003)
    torch.manual_seed(0)
    return load_model(cfg, 0, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def host():
    return probe_host(HardwareConfig(name="cpu"))


@pytest.fixture(scope="module")
def ptq_accuracy(tiny_bundle, host):
    method = PTQStatic(PTQStaticConfig(calibration=CalibrationConfig(size=256, observer=Observer.histogram)),
                       W4A8, host)
    calibration = draw_calibration(tiny_bundle.train, tiny_bundle.test, 256, 0)
    quantized = method.quantize(tiny_bundle, calibration)
    assert quantized.info["weight_value_bits"] <= 4
    return accuracy(quantized.model, tiny_bundle.test)


@pytest.mark.parametrize("method_cls,cfg,margin", [
    (QATFinetune, QATFinetuneConfig(epochs=1, lr=1e-3, seed=0), 0.010),
    (QAT, QATConfig(init=QATInit.fp32, epochs=1, lr=1e-3, seed=0), 0.005),
], ids=["qat_finetune", "qat"])
def test_qat_beats_4bit_ptq_on_the_same_model(tiny_bundle, host, ptq_accuracy, method_cls, cfg, margin):
    torch.manual_seed(0)
    quantized = method_cls(cfg, W4A8, host).quantize(tiny_bundle, None)
    info = quantized.info
    qat_accuracy = accuracy(quantized.model, tiny_bundle.test)
    print(f"{method_cls.__name__}: converted w4a8 accuracy {qat_accuracy:.4f}, ptq_static w4a8 {ptq_accuracy:.4f}, "
          f"fp32 {tiny_bundle.info['fp32_test_accuracy']:.4f}")
    # The stated margin, or half of what PTQ lost when it lost less than twice that: on an
    # AVX-512 VNNI/AMX host (oneDNN, 8-bit activations) ptq_static w4a8 lost only 1.1
    # points of 80.8 and qat_finetune at one thread stood 0.7 above it (0.804 vs 0.797).
    ptq_loss = tiny_bundle.info["fp32_test_accuracy"] - ptq_accuracy
    assert ptq_loss > 0, "4-bit PTQ lost nothing on this model: nothing for QAT to recover"
    assert qat_accuracy >= ptq_accuracy + min(margin, ptq_loss / 2), (qat_accuracy, ptq_accuracy, ptq_loss)
    # the model measured is the converted one, and it computes what fake quantization computed
    assert info["weight_value_bits"] <= 4 and info["quantized_layers"] == 4
    assert info["fake_vs_converted_top1_agreement"] >= 0.99
    assert info["val_accuracy_converted"] == pytest.approx(info["val_accuracy_fake_quant"], abs=0.01)
    history = info["tables"]["qat_history"]
    assert len(history) == 1 and history[0]["final_configuration"]
    if method_cls is QATFinetune:
        assert history[0]["distill_loss"] > 0  # distillation from the fp32 teacher was on
