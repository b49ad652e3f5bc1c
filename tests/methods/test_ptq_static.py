"""method=ptq_static on real zoo architectures through the Python API: every Linear and
Conv becomes a torch.ao int8 kernel, the LSTM stays float, w4a8 keeps 4-bit values."""

import pytest
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


class _GeluMLP(torch.nn.Module):
    """in -> Linear -> ReLU -> Linear -> GELU -> Dropout -> Linear -> Linear: only "down"
    reads a GELU's output (through an eval-mode dropout), only "up" a ReLU's."""

    def __init__(self):
        super().__init__()
        self.pre, self.relu, self.up = torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 64)
        self.act, self.drop = torch.nn.GELU(), torch.nn.Dropout(0.1)
        self.down, self.head = torch.nn.Linear(64, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.down(self.drop(self.act(self.up(self.relu(self.pre(x)))))))


def test_layers_after_finds_the_readers_of_an_activation():
    from quantexp.quant.graph_probe import layers_after

    net = _GeluMLP().eval()
    x = (torch.randn(8, 16),)
    assert layers_after(net, ["gelu"], x) == ["down"]
    assert layers_after(net, ["ReLU"], x) == ["up"]
    assert layers_after(net, [], x) == []


def test_a_layer_after_a_gelu_stays_float_or_runs_as_configured():
    import torch.ao.nn.quantized.dynamic as nnqd

    torch.manual_seed(0)
    net, x = _GeluMLP().eval(), torch.randn(64, 16)
    q = quantexp.quantize(net, "ptq_static", calibration=x)  # FX traces this one
    assert q.info["path"] == "fx_graph_mode" and q.info["outlier_layers"] == ["down"]
    assert q.info["outlier_layers_as"] == "fp32" and type(q.model.down) is torch.nn.Linear
    dyn = quantexp.quantize(net, "ptq_static", calibration=x, overrides=["method.outlier_layers=dynamic"])
    assert isinstance(dyn.model.down, nnqd.Linear) and dyn.info["quantized_layers"] == q.info["quantized_layers"] + 1
    static = quantexp.quantize(net, "ptq_static", calibration=x, overrides=["method.outlier_after=[]"])
    assert static.info["outlier_layers"] == [] and "quantized" in type(static.model.down).__module__
    with torch.no_grad():
        assert (net(x).argmax(-1) == q.model(x).argmax(-1)).float().mean() >= 0.9


def test_a_transformer_takes_the_eager_path_with_8bit_activations_checked_per_layer(tiny_bert):
    import torch.ao.nn.quantized as nnq
    from transformers import AutoModel

    from quantexp.models.transformer.family import TextClassifier

    encoder = AutoModel.from_pretrained(tiny_bert, local_files_only=True)
    net = TextClassifier(encoder, 32, 2).eval()
    ids = torch.randint(5, 60, (64, 12))
    q = quantexp.quantize(net, "ptq_static", calibration=(ids, torch.ones_like(ids)))
    assert q.info["path"] == "eager_per_layer" and q.info["reduce_range"] is False
    # two encoder layers: each FFN down-projection reads the GELU and stays fp32
    downs = [f"encoder.encoder.layer.{i}.output.dense" for i in range(2)]
    assert q.info["outlier_layers"] == downs and all(type(q.model.get_submodule(n)) is torch.nn.Linear for n in downs)
    # q, k, v, attention out, FFN up per layer; the pooler; the head
    assert q.info["quantized_layers"] == 2 * 5 + 2 and q.info["float_layers_left"] == 2
    # word, position and token-type embeddings: int8 weight-only
    assert q.info["int8_embeddings"] == 3 and isinstance(q.model.encoder.embeddings.word_embeddings.quantized, nnq.Embedding)
    assert set(q.info["reduce_range_layers"]) <= {n for n, _ in q.model.named_modules()}
    with torch.no_grad():
        agree = (net(ids, torch.ones_like(ids)).argmax(-1) == q.model(ids, torch.ones_like(ids)).argmax(-1)).float()
    assert agree.mean() >= 0.9


def test_torch_only_layers_are_refused_for_other_exporters():
    from quantexp.api import compose, validate
    from quantexp.config import ConfigError

    assert validate(compose(["method=ptq_static", "exporter=onnx"])).method.embeddings == "fp32"  # auto, resolved
    assert validate(compose(["method=ptq_static"])).method.embeddings == "int8"
    for setting in ("method.embeddings=int8", "method.outlier_layers=dynamic"):
        with pytest.raises(ConfigError, match="needs exporter=none"):
            validate(compose(["method=ptq_static", "exporter=onnx", setting]))
