"""bitsandbytes 4-bit weights (QLoRA's ``Linear4bit``): every nn.Linear becomes a
layer whose weight is stored as 4-bit codes (NF4 or FP4, from the precision group),
two per byte, with one absmax scale per ``blocksize`` weights. With double
quantization the fp32 absmax are themselves quantized to 8 bits (blocks of 256,
one fp32 scale each, plus an offset). The matmul dequantizes to ``compute_dtype``.

Storage per weight (QLoRA accounting): 4 + 32/blocksize bits without double
quantization (4.5 at blocksize 64), 4 + 8/blocksize + 32/(256*blocksize) with it
(4.127 at 64), plus a fixed 16-value code book (and a 256-value one for the nested
state) per layer. ``weight_bits_per_param`` is measured from the stored tensors;
``qlora_formula_bits_per_param`` is the formula, for comparison.

No calibration is needed to quantize; calibration inputs feed the per-layer error
table only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantexp.methods.base import QuantizationMethod, QuantizedModel
from quantexp.methods.bnb.config import ComputeDType
from quantexp.methods.bnb.linears import (
    check_has_linear,
    frozen_bias,
    memory_facts,
    move_to,
    quality_facts,
    quantize_linears,
)

if TYPE_CHECKING:
    from quantexp.models.base import Split

COMPUTE_DTYPES = {ComputeDType.fp32: torch.float32, ComputeDType.bf16: torch.bfloat16,
                  ComputeDType.fp16: torch.float16}
# Blocksize of the nested (double) quantization of the absmax: fixed by bitsandbytes.
NESTED_BLOCKSIZE = 256


def qlora_bits_per_param(blocksize: int, double_quant: bool) -> float:
    """Bits per weight of blockwise 4-bit storage, per-layer constants excluded."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (NESTED_BLOCKSIZE * blocksize)
    return 4 + 32 / blocksize


def to_4bit_linear(linear: nn.Linear, quant_type: str, blocksize: int, double_quant: bool,
                   compute_dtype: torch.dtype, device: str) -> nn.Module:
    """A ``Linear4bit`` holding ``linear``'s weights, quantized on ``device``."""
    from bitsandbytes.nn import Linear4bit, Params4bit

    new = Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     compute_dtype=compute_dtype, compress_statistics=double_quant,
                     quant_type=quant_type, quant_storage=torch.uint8, device="meta")
    new.weight = Params4bit(linear.weight.detach().clone(), requires_grad=False,
                            compress_statistics=double_quant, quant_type=quant_type,
                            blocksize=blocksize, quant_storage=torch.uint8, module=new)
    new.bias = frozen_bias(linear)
    # On CPUs with AVX512-bf16, bitsandbytes 0.50 repacks 4-bit weights on the first
    # eval forward for its packed kernel: it needs in_features divisible by blocksize
    # (the CNN's 1568-input fc1 fails at 64) and replaces the double-quantized absmax by
    # bf16, which changes what is stored. The generic kernel (what AVX2 hosts run) keeps
    # the QLoRA storage that is measured and counted.
    new.support_avx512bf16_for_cpu = False
    return move_to(new, device)


class BnbNF4(QuantizationMethod):
    needs_calibration = True  # for the per-layer error table only

    @property
    def quant_type(self) -> str:
        return self.precision.name  # "nf4" | "fp4" (the schema admits only these)

    def check_model(self, bundle) -> None:
        check_has_linear("bnb_nf4", bundle, self.cfg.skip_modules)

    def quantize(self, bundle, calibration: Split | None) -> QuantizedModel:
        cfg, device = self.cfg, self.host.device
        compute = COMPUTE_DTYPES[ComputeDType(cfg.compute_dtype)]
        model, targets, facts = quantize_linears(
            "bnb_nf4", bundle, cfg.skip_modules, device,
            lambda lin: to_4bit_linear(lin, self.quant_type, cfg.blocksize, cfg.double_quant,
                                       compute, device))
        info: dict[str, Any] = {
            "path": "bitsandbytes.nn.Linear4bit",
            "quant_type": self.quant_type,
            "blocksize": cfg.blocksize,
            "double_quant": cfg.double_quant,
            "compute_dtype": ComputeDType(cfg.compute_dtype).value,
            "cpu_kernel": "generic (the AVX512-bf16 packed kernel is off, see to_4bit_linear)",
            **facts,
            "qlora_formula_bits_per_param": qlora_bits_per_param(cfg.blocksize, cfg.double_quant),
        }
        info.update(quality_facts(bundle, model, targets, calibration, cfg.calibration.batch_size))
        # After the forward passes: Linear4bit casts its bias to the compute dtype on first use.
        info.update(memory_facts(model, bundle.num_parameters))
        return QuantizedModel(model, info)
