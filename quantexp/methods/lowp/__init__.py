"""Low-precision compute on the device itself: ``cast`` (the whole model in fp16/bf16)
and ``woq_int8`` (int8 weight-only Linear layers, ``torch._weight_int8pack_mm``)."""
