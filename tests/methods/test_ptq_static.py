"""method=ptq_static on real zoo architectures through the Python API: every Linear and
Conv becomes a torch.ao int8 kernel, the LSTM stays float, w4a8 keeps 4-bit values."""

import torch

import quantexp
from quantexp.models.cnn.family import SmallCNN
from quantexp.models.rnn.family import LSTMClassifier
from quantexp.quant.int_grid import weight_value_bits


def _images(n=128):
    torch.manual_seed(0)
    return torch.rand(n, 1, 28, 28)


def test_cnn_layers_run_in_int8_and_stay_close_to_fp32():
    torch.manual_seed(0)
    net = SmallCNN([16, 32], 64).eval()
    x = _images()
    q = quantexp.quantize(net, "ptq_static", calibration=x)
    assert q.info["quantized_layers"] == 4 and q.info["float_layers_left"] == 0
    with torch.no_grad():
        agree = (net(x).argmax(-1) == q.model(x).argmax(-1)).float().mean()
    assert agree >= 0.95


def test_lstm_stays_float_and_is_reported():
    torch.manual_seed(0)
    net = LSTMClassifier().eval()
    q = quantexp.quantize(net, "ptq_static", calibration=torch.rand(64, 28, 28))
    assert q.info["float_layers_left"] >= 1  # the LSTM: static int8 LSTM is not offered


def test_w4a8_stores_4bit_values_in_int8_kernels():
    torch.manual_seed(0)
    q = quantexp.quantize(SmallCNN([16, 32], 64).eval(), "ptq_static", precision="w4a8", calibration=_images(64))
    assert weight_value_bits(q.model) <= 4
