"""Quantization-aware training: ``method`` (method=qat, from scratch), ``finetune``
(method=qat_finetune), ``fake_quant`` (fake quantizers and the schedule that turns
them on), ``train`` (the training loop)."""
