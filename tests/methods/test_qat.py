"""QAT building blocks on real torch.ao modules: fake quantization forward and
straight-through gradient, the kernel-clamping activation quantizer, Quant-Noise
rate, the quantization schedule (groups, bit widths, observer/BN freezing),
distillation and range losses on hand-made values, the 4-bit grid clamp, config
refusals and divergence."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quantexp.config import (
    ConfigError,
    ExperimentConfig,
    ExporterConfig,
    Granularity,
    HardwareConfig,
    PrecisionConfig,
)
from quantexp.methods.qat.config import QATConfig, QATFinetuneConfig
from quantexp.methods.qat.fake_quant import (
    KernelClampFakeQuantize,
    QATDiverged,
    QuantNoiseFakeQuantize,
    QuantSchedule,
    build_qat_qconfig,
    convert,
    distillation_loss,
    fake_vs_converted,
    prepare_qat,
    quant_units,
    range_regulariser,
)
from quantexp.methods.qat.train import TrainSettings, split_validation, train_qat
from quantexp.models.base import Split
from quantexp.models.cnn.config import CNNConfig
from quantexp.models.cnn.family import SmallCNN
from quantexp.models.transformer.config import TransformerConfig
from quantexp.quant.int_grid import clamp_quantized_weights, weight_value_bits


def fixed_fq(cls, quant_min, quant_max, scale, dtype=torch.qint8, **kw):
    fq = cls(observer=torch.ao.quantization.MovingAverageMinMaxObserver, quant_min=quant_min,
             quant_max=quant_max, dtype=dtype,
             qscheme=torch.per_tensor_symmetric if dtype == torch.qint8 else torch.per_tensor_affine, **kw)
    fq.disable_observer()
    fq.scale.fill_(scale)
    fq.zero_point.zero_()
    return fq


def test_fake_quant_forward_is_on_the_grid_and_backward_is_straight_through():
    fq = fixed_fq(QuantNoiseFakeQuantize, -8, 7, scale=0.5)
    x = torch.tensor([-5.0, -1.26, -0.2, 0.3, 1.74, 3.4, 9.0], requires_grad=True)
    y = fq(x)
    # round(x / 0.5) clamped to [-8, 7], times 0.5 (-5.0 and 9.0 are clipped)
    assert y.tolist() == [-4.0, -1.5, -0.0, 0.5, 1.5, 3.5, 3.5]
    y.sum().backward()
    # STE: gradient 1 inside the clipping range, 0 where the value was clipped.
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_activation_quantizer_clamps_where_the_quint8_kernel_clamps():
    fq = fixed_fq(KernelClampFakeQuantize, 0, 127, scale=0.1, dtype=torch.quint8)
    y = fq(torch.tensor([5.0, 20.0, 30.0]))
    # scale chosen for 0..127, but values up to 255 * 0.1 survive, as in a quint8 tensor
    assert y.tolist() == pytest.approx([5.0, 20.0, 25.5])


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_quant_noise_quantizes_the_configured_share_of_weights(rate):
    torch.manual_seed(0)
    fq = fixed_fq(QuantNoiseFakeQuantize, -8, 7, scale=0.25)
    fq.noise_rate = rate
    x = torch.randn(200_000) * 0.3 + 0.01  # hardly any value is already on the grid
    changed = (fq(x) != x).float().mean().item()
    assert abs(changed - rate) < 0.01
    assert abs(fq.last_mask_fraction - rate) < 0.01
    fq.eval()  # evaluation (and the converted model) quantize every weight
    assert (fq(x) != x).float().mean().item() > 0.99


def prepared_cnn(weight_bits=4, bn=False, granularity=Granularity.per_channel):
    torch.manual_seed(0)
    if bn:
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 8 * 8, 3))
        example = (torch.randn(2, 1, 8, 8),)
    else:
        model = SmallCNN([4, 8], 16, 10)
        example = (torch.randn(2, 1, 28, 28),)
    qconfig = build_qat_qconfig(weight_bits, 8, granularity, reduce_range=False)
    prepared = prepare_qat(model, qconfig, example)
    return prepared, quant_units(prepared), example


def test_schedule_switches_layer_groups_on_over_steps():
    prepared, units, _example = prepared_cnn()
    assert [u.name for u in units] == ["conv1", "conv2", "fc1", "fc2"]  # input -> output
    schedule = QuantSchedule(units, weight_bits=4, groups=2, interval=5)
    assert [schedule.groups_on(s) for s in (0, 4, 5, 9, 10, 100)] == [1, 1, 2, 2, 2, 2]
    state = schedule.apply_step(prepared, 0)
    assert state["groups_on"] == 1 and state["fraction_layers_quantized"] == 0.5
    on = [int(u.weight_fq.fake_quant_enabled[0]) for u in units]
    assert on == [1, 1, 0, 0]
    assert all(int(fq.fake_quant_enabled[0]) == 0 for u in units[2:] for fq in u.activation_fqs)
    assert not schedule.final_from(4, 0) and schedule.final_from(5, 0)
    schedule.apply_step(prepared, 5)
    assert all(int(u.weight_fq.fake_quant_enabled[0]) == 1 for u in units)


def test_bit_schedule_lowers_the_weight_grid_over_epochs():
    prepared, units, example = prepared_cnn()
    prepared(*example)  # observers see the weights once
    schedule = QuantSchedule(units, weight_bits=4, bit_schedule=[8, 6])
    assert [schedule.bits_at(e) for e in range(4)] == [8, 6, 4, 4]
    seen, scales = [], []
    for epoch in range(3):
        schedule.start_epoch(epoch)
        fq = units[0].weight_fq
        seen.append((fq.activation_post_process.quant_min, fq.activation_post_process.quant_max))
        scales.append(fq.scale.clone())
    scale_8 = scales[0]
    assert seen == [(-128, 127), (-32, 31), (-8, 7)]
    # the scale follows the grid: 4-bit steps are ~127/7.5 times coarser than 8-bit ones
    assert torch.allclose(units[0].weight_fq.scale / scale_8, torch.full_like(scale_8, 127.5 / 7.5), rtol=1e-4)
    assert not schedule.final_from(0, 1) and schedule.final_from(0, 2)


def test_observers_and_batch_norm_freeze_after_their_step():
    prepared, units, _example = prepared_cnn(bn=True)
    assert hasattr(units[0].module, "bn")  # Conv+BN+ReLU fused into one QAT module (BN folding)
    schedule = QuantSchedule(units, weight_bits=4, freeze_observers_after=2, freeze_bn_after=3)
    prepared.train()
    for step in range(4):
        state = schedule.apply_step(prepared, step)
        prepared(torch.randn(4, 1, 8, 8))
        assert state["observers_frozen"] == float(step >= 2) and state["bn_frozen"] == float(step >= 3)
    frozen_scale = units[0].weight_fq.scale.clone()
    with torch.no_grad():
        units[0].module.weight.mul_(3.0)
    prepared(torch.randn(4, 1, 8, 8))
    assert torch.equal(units[0].weight_fq.scale, frozen_scale)  # scales no longer move
    assert units[0].module.freeze_bn and int(units[0].weight_fq.observer_enabled[0]) == 0


def test_distillation_loss_on_hand_made_logits():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0]])
    t = 2.0
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([1, 0])
    expected = t * t * sum(pi * math.log(pi / 0.5) for pi in p)
    assert distillation_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_range_regulariser_sums_squared_layer_maxima():
    _prepared, units, _ = prepared_cnn()
    expected = sum(float(u.module.weight.abs().max()) ** 2 for u in units)
    assert range_regulariser(units).item() == pytest.approx(expected, rel=1e-5)


def test_four_bit_weights_are_clamped_to_the_grid_inside_int8_kernels():
    import torch.ao.nn.quantized as nnq

    layer = nnq.Linear(3, 2)
    w = torch._make_per_tensor_quantized_tensor(torch.tensor([[9, -7, 3], [-10, 7, 0]], dtype=torch.int8), 0.1, 0)
    layer.set_weight_bias(w, torch.zeros(2))
    model = nn.Sequential(layer)
    assert weight_value_bits(model) == 5
    assert clamp_quantized_weights(model, 4) == 2
    assert layer.weight().int_repr().tolist() == [[7, -7, 3], [-8, 7, 0]]
    assert weight_value_bits(model) == 4


def test_fake_quant_and_converted_models_agree():
    prepared, _units, _ = prepared_cnn(weight_bits=4)
    data = (torch.rand(64, 1, 28, 28),)
    prepared.train()
    for _ in range(3):  # let the observers see data
        prepared(*data)
    prepared.apply(torch.ao.quantization.disable_observer)
    converted, clamped = convert(prepared, 4)
    assert clamped >= 0 and weight_value_bits(converted) <= 4
    agreement = fake_vs_converted(prepared, converted, data)
    assert agreement["fake_vs_converted_top1_agreement"] == 1.0
    assert agreement["fake_vs_converted_rel_logit_error"] < 1e-3


def tiny_split(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return Split((x,), torch.randint(0, 10, (n,), generator=g), torch.arange(n))


def test_divergence_stops_with_a_clear_error():
    prepared, units, _ = prepared_cnn()
    train, val = split_validation(tiny_split(), 0.25, seed=0)
    settings = TrainSettings(epochs=2, batch_size=16, lr=1e30, lr_schedule="constant")
    with pytest.raises(QATDiverged, match=r"QAT training diverged: loss is (nan|inf).*lower method.lr"):
        train_qat(prepared, units, QuantSchedule(units, weight_bits=4), train, val, settings)


def experiment(method, precision="w4a8", model=None, weight="int4", activation="int8", hardware="cpu",
               exporter="none"):
    return ExperimentConfig(model=model or CNNConfig(name="cnn", dataset="mnist5k"), method=method,
                            precision=PrecisionConfig(name=precision, weight_dtype=weight,
                                                      activation_dtype=activation),
                            hardware=HardwareConfig(name=hardware), exporter=ExporterConfig(name=exporter))


def test_qat_configs_accept_int8_and_w4a8():
    experiment(QATConfig()).validate()
    experiment(QATFinetuneConfig(bit_schedule=[8, 6])).validate()
    experiment(QATConfig(), precision="int8", weight="int8").validate()
    experiment(QATConfig(), hardware="ane", exporter="coreml").validate()


@pytest.mark.parametrize("build,message", [
    (lambda: experiment(QATConfig(), model=TransformerConfig(name="minilm", dataset="rt", path="x")),
     r"method=qat cannot run with model family=transformer; valid model family values for qat: cnn, rnn"),
    (lambda: experiment(QATConfig(), precision="fp16", weight="fp16", activation="fp16"),
     r"precision=fp16; valid precision values for qat: int8, w4a8, w4a8_tensor"),
    (lambda: experiment(QATConfig(), weight="nf4"), r"weight_dtype=nf4 is impossible for QAT"),
    (lambda: experiment(QATFinetuneConfig(bit_schedule=[8, 2])), r"bit_schedule entry 2 is impossible"),
    (lambda: experiment(QATFinetuneConfig(bit_schedule=[6, 8])), r"bit_schedule entry 8|must not increase"),
    (lambda: experiment(QATFinetuneConfig(bit_schedule=[5, 6])), r"must not increase"),
    (lambda: experiment(QATFinetuneConfig(quant_noise=0.0)), r"quant_noise must be in \(0, 1\]"),
    (lambda: experiment(QATConfig(lr=float("nan"))), r"method.lr must be a finite number"),
])
def test_bad_qat_configs_are_refused_up_front(build, message):
    with pytest.raises(ConfigError, match=message):
        build().validate()


def test_frozen_model_is_refused_before_training():
    from types import SimpleNamespace

    from quantexp.methods.qat.method import QAT

    model = SmallCNN([4, 8], 16, 10).requires_grad_(False)
    bundle = SimpleNamespace(model=model, name="frozen")
    method = QAT(QATConfig(), PrecisionConfig(name="w4a8", weight_dtype="int4", activation_dtype="int8"),
                 host=None)
    with pytest.raises(ConfigError, match=r"needs a trainable model; frozen has no trainable parameters"):
        method.check_model(bundle)
