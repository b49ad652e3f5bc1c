"""method=fp32: the baseline is an unchanged copy, at fp32 only."""

import pytest
import torch

import quantexp
from quantexp.models.cnn.family import SmallCNN


def test_fp32_is_an_identical_copy():
    torch.manual_seed(0)
    net = SmallCNN([4, 8], 16).eval()
    q = quantexp.quantize(net, "fp32", example_inputs=(torch.rand(2, 1, 28, 28),))
    assert q.model is not net
    for (name, a), (_, b) in zip(net.state_dict().items(), q.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_fp32_refuses_int8():
    with pytest.raises(quantexp.ConfigError, match="valid precision values for fp32: fp32"):
        quantexp.quantize(SmallCNN([4, 8], 16), "fp32", precision="int8", example_inputs=(torch.rand(2, 1, 28, 28),))
