"""Model families (cnn, rnn, transformer), their offline data and the fp32 cache.

``load_model(cfg, seed, cache_dir)`` is the entry point; see ``zoo``.
"""

from quantexp.models.base import ModelBundle, Split
from quantexp.models.zoo import load_model

__all__ = ["ModelBundle", "Split", "load_model"]
