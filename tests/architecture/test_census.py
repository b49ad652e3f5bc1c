"""The census and the layer statistics on toy models whose answers can be checked by
hand: a pure-conv net, a pure-LSTM net, a 2-layer transformer, an MLP with a planted
outlier channel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantexp
from quantexp.architecture.census import take_census
from quantexp.architecture.stats import OUTLIER_THRESHOLD, kurtosis, layer_stats


def test_a_pure_conv_net_is_a_cnn_with_exact_macs():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4, bias=False)).eval()
    census = take_census(net, (torch.randn(2, 1, 10, 10),))
    # conv1: 4 out x 1 in x 3x3 kernel x 8x8 outputs; depthwise conv2: 4 x 1 x 3x3 x 6x6
    assert census.macs_total == 4 * 9 * 64 + 4 * 9 * 36
    assert census.family == "cnn" and census.mac_share["conv"] == 1.0
    rows = {r.name: r for r in census.layers}
    assert rows["2"].depthwise and not rows["0"].depthwise and rows["0"].small_channels
    assert census.params_total == 4 * 9 + 4 * 9


def test_a_pure_lstm_net_is_an_rnn_counted_through_its_decomposition():
    net = nn.LSTM(8, 16, batch_first=True).eval()
    census = take_census(net, (torch.randn(3, 5, 8),))
    # 5 steps x 4 gates x 16 units x (8 inputs + 16 hidden) multiply-adds per item
    assert census.macs_total == pytest.approx(5 * 4 * 16 * (8 + 16))
    assert census.family == "rnn" and census.mac_share["recurrent"] == pytest.approx(1.0)
    assert census.param_share["recurrent"] == 1.0


def test_a_two_layer_transformer_has_attention_matmuls_and_embeddings(tiny_bert):
    from transformers import AutoModel

    from quantexp.models.transformer.family import TextClassifier

    encoder = AutoModel.from_pretrained(tiny_bert, local_files_only=True)  # 2 layers, hidden 32, 2 heads
    net = TextClassifier(encoder, 32, 2).eval()
    ids = torch.randint(5, 60, (4, 12))
    census = take_census(net, (ids, torch.ones_like(ids)))
    assert census.family == "transformer"
    attention = [r for r in census.layers if r.kind == "attention"]
    # per layer and item: QK^T and AV, each 12 x 12 positions x 32 hidden
    assert [r.macs for r in attention] == [2 * 12 * 12 * 32] * 2
    linear = sum(r.macs for r in census.layers if r.kind == "linear")
    # per layer: q, k, v, out (32x32 each) and the FFN (32x37, 37x32) on 12 tokens; pooler; head
    assert linear == 2 * 12 * (4 * 32 * 32 + 2 * 32 * 37) + 32 * 32 + 32 * 2
    emb = sum(r.params for r in census.layers if r.kind == "embedding")
    assert census.param_share["embedding"] == pytest.approx(emb / census.params_total)


def test_statistics_find_a_planted_outlier_channel_and_heavy_tails():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].weight[0, 0] = 50.0  # one huge weight: heavy tails, one channel far above the rest
    x = torch.randn(256, 16)
    x[:, 3] *= 20  # input channel 3 reaches |x| >= 6
    rows = {s.name: s for s in layer_stats(net, [(x[:128],), (x[128:],)])}
    first = rows["0"]
    assert first.input_outlier_channels == int((x.abs().amax(0) >= OUTLIER_THRESHOLD).sum()) >= 1
    assert first.weight_kurtosis == pytest.approx(kurtosis(net[0].weight)) and first.weight_kurtosis > 10
    assert first.channel_spread > 10 and any("per-tensor weights" in r for r in first.risks)
    assert first.input_absmax == pytest.approx(float(x.abs().max()))
    assert kurtosis(torch.randn(100_000)) == pytest.approx(0.0, abs=0.1)  # a Gaussian has excess kurtosis 0


def test_the_python_api_analyzes_a_users_module():
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    analysis = quantexp.analyze(net, torch.randn(8, 16), calibration=torch.randn(64, 16))
    assert analysis.census.family == "mlp" and len(analysis.stats) == 2
    features = analysis.features()
    assert features["mac_share.linear"] == 1.0 and features["log10_params"] == pytest.approx(
        torch.log10(torch.tensor(float(16 * 32 + 32 + 32 * 4 + 4))).item())
