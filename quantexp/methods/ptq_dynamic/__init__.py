"""method=ptq_dynamic: PyTorch dynamic int8 / fp16 weights."""
