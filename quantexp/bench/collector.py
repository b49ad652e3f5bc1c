"""Python's cyclic garbage collector paused while latencies are measured.

Why: a run's process holds some 370,000 objects once torch, MLflow and the model zoo
are loaded, and a full collection of them took up to 176 ms here (gen-2 pauses of
80-176 ms, gen-1 pauses of 1-2.3 ms, measured with ``gc.callbacks`` over one
``+scenario=slo`` run). One such pause inside a served phase holds back every request
that arrives during it: at 1,000 items/s a 100 ms pause is 100 requests, over 3 % of a
3-second phase, and that phase's p99 becomes the pause, whichever configuration ran.
A latency-sensitive Python server does the same (``gc.freeze`` after start-up, or the
collector off in the request path); ``timeit`` turns it off for the same reason.
What is paused is only the cycle collector: reference counting still frees every
tensor and array a request leaves behind.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Collector off inside the block, back to how it was after (also on an exception)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["collector_paused"]
