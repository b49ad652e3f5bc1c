"""The transformer family: a local HuggingFace encoder + a linear head (model=minilm, model=hf)."""
