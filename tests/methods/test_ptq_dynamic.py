"""method=ptq_dynamic through the Python API: Linear and LSTM get int8 (or fp16)
weights with activations quantized per batch; the original module is untouched."""

import torch

import quantexp
from quantexp.models.rnn.family import LSTMClassifier


def test_lstm_and_linear_become_dynamic_int8():
    torch.manual_seed(0)
    net = LSTMClassifier().eval()
    x = torch.rand(64, 28, 28)
    q = quantexp.quantize(net, "ptq_dynamic", calibration=x)
    kinds = {type(m).__name__ for m in q.model.modules()}
    assert {"LSTM", "Linear"} <= kinds and q.info["weight_dtype"] == "qint8"
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in q.model.modules())
    assert not any(type(m).__module__.startswith("torch.ao") for m in net.modules())
    with torch.no_grad():
        assert torch.allclose(net(x), q.model(x), atol=0.1)


def test_fp16_weights():
    torch.manual_seed(0)
    q = quantexp.quantize(LSTMClassifier().eval(), "ptq_dynamic", precision="fp16",
                          calibration=torch.rand(16, 28, 28))
    assert q.info["weight_dtype"] == "float16"
