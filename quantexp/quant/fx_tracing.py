"""FX graph-mode quantization (``prepare_fx`` / ``prepare_qat_fx`` / ``convert_fx``)
without its by-products.

The quantization tracer records a Python stack trace on every node it creates (for
error messages that point at a model's source line). Symbolizing those traces imports
torch's compiler stack (torch._dynamo, torch._inductor, sympy): about 2 s on the
first trace of a process, often the only thing that would import it. Nothing here
reads the traces, so they are switched off while a model is prepared; torch.ao's
deprecation warnings are silenced in the same place.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fx_graph_mode() -> Iterator[None]:
    """Around FX preparation and conversion: no per-node stack traces, no torch.ao
    deprecation warnings. The previous setting is restored on exit."""
    import torch.fx.config as fx_config

    previous = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        fx_config.do_not_emit_stack_traces = previous
