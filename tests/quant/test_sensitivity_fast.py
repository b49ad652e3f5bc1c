"""The fast sensitivity analysis (in-place swaps, replayed fp32 activations, observers
fed with the layer's recorded inputs, emulated float casts) against the first
implementation (rebuild and re-evaluate the whole model per layer), on a trained CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantexp.quant.replay import Replay


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    from quantexp.api import compose, validate
    from quantexp.models.zoo import load_model

    exp = validate(compose(["model=cnn", "model.n_train=600", "model.epochs=2"]))
    return load_model(exp.model, exp.seed, tmp_path_factory.mktemp("cache"))


def test_replay_reproduces_the_fp32_pass_and_skips_what_came_before(cnn_bundle):
    model = cnn_bundle.model
    batches = [inputs for inputs, _ in cnn_bundle.train.subset(torch.arange(96)).batches(32)]
    targets = ["conv1", "conv2", "fc1", "fc2"]
    replay = Replay(model, batches, targets, keep_inputs=["fc1"])
    assert replay.enabled, replay.reason
    assert replay.skip["conv1"] == [] and replay.skip["fc2"] == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                                                 "flatten", "fc1", "relu3"]
    for target in targets:
        assert torch.equal(replay.run(target), replay.logits)
    # the recorded inputs of fc1 are what fc1 receives: 1568 flattened features per item
    assert [tuple(x.shape) for x in replay.inputs["fc1"]] == [(32, 1568)] * 3
    # a changed layer changes the replayed logits; the model is left as it was
    saved = model.fc1.weight.detach().clone()
    with torch.no_grad():
        model.fc1.weight.mul_(0.5)
    try:
        assert not torch.allclose(replay.run("fc1"), replay.logits)
    finally:
        with torch.no_grad():
            model.fc1.weight.copy_(saved)


class Side(nn.Module):
    """Leaves its input on the side for a later module: a call with an effect beyond
    its output, which a replayed (skipped) call does not have."""

    def __init__(self):
        super().__init__()
        self.kept = None

    def forward(self, x):
        self.kept = x
        return torch.relu(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.side, self.fc2 = nn.Linear(4, 4), Side(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.side(self.fc1(x)) + self.side.kept)


def test_replay_turns_itself_off_for_a_model_with_side_effects():
    model = Net().eval()
    replay = Replay(model, [(torch.randn(3, 4),), (torch.randn(3, 4),)], ["fc1", "fc2"])
    assert not replay.enabled and "changed the fp32 logits" in replay.reason
    assert replay.replayed_share("fc2") == 0
    assert torch.equal(replay.run("fc2"), replay.logits)  # evaluated in full instead


def test_fast_sensitivity_ranks_the_cnn_like_the_rebuild_per_layer(cnn_bundle):
    from quantexp.quant.sensitivity import run_sensitivity
    from quantexp.quant.sensitivity_reference import run_sensitivity_rebuild
    from quantexp.quant.sensitivity_report import rank_agreement

    analysis = cnn_bundle.train.subset(torch.arange(128))
    kwargs = {"choices": ["int8", "int4", "bf16"], "reduce_range": False, "batch_size": 32}
    new = run_sensitivity(cnn_bundle, analysis, hessian_samples=4, plot=False, **kwargs)
    old = run_sensitivity_rebuild(cnn_bundle, analysis, hessian_samples=0, **kwargs)
    assert new.facts["replay"] == 1.0
    old_rows = {(r["layer"], r["dtype"]): r for r in old.rows}
    assert {(r["layer"], r["dtype"]) for r in new.rows} == set(old_rows)
    for row in new.rows:
        ref = old_rows[(row["layer"], row["dtype"])]
        if row["dtype"] == "int8":  # the same observers on the same inputs: the same int8 layer
            assert row["kl_div"] == pytest.approx(ref["kl_div"], rel=1e-4, abs=1e-9)
            assert row["activation_bits"] == ref["activation_bits"]
            assert row["weight_only_kl"] == pytest.approx(ref["weight_only_kl"], rel=1e-4, abs=1e-9)
        elif row["dtype"] != "fp32":  # emulated bf16 / int4 against the real kernels
            assert row["kl_div"] == pytest.approx(ref["kl_div"], rel=0.05, abs=1e-7), row
    for kind in ("empirical", "weight_only"):
        assert new.ranking(kind) == old.ranking(kind)
        assert rank_agreement(new.ranking(kind), old.ranking(kind))["spearman_rho"] == 1.0
    # both methods stay, with their agreement figures
    assert len(new.hessian) == 4 and {"spearman_rho", "weight_only_spearman_rho"} <= set(new.agreement)
