"""bitsandbytes methods: ``int8`` (LLM.int8(), method=bnb_int8) and ``nf4`` (4-bit
QLoRA, method=bnb_nf4), sharing ``linears`` (the Linear replacement and storage facts)."""
