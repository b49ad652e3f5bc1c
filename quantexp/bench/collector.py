"""Python's cyclic garbage collector paused while latencies are measured.

Why: a run's process holds some 370,000-570,000 objects once torch, MLflow and the
model zoo are loaded, and a full collection of them took 80-326 ms here (6-9 per
``+scenario=slo`` run, gen-1 collections 1-2.6 ms; measured with ``gc.callbacks``). One
such pause inside a served phase holds back every request that arrives during it: at
1,000 items/s a 100 ms pause is 100 requests, over 3 % of a 3-second phase, and that
phase's p99 becomes the pause, whichever configuration ran. In a timing loop it lands on
one call, the tail percentiles and the means of whichever side it falls on. ``timeit``
(and so ``torch.utils.benchmark``, the harness's anchor) turns the collector off while
it times for the same reason; a latency-sensitive Python server does the like
(``gc.freeze`` after start-up). What is paused is only the cycle collector: reference
counting still frees every tensor and array a call leaves behind.

Used as a decorator on the server loop (``serving.server.serve``) and the timing loops
(``bench.latency.measure_latency``, ``bench.interleaved.time_rounds``,
``serving.throughput.time_passes``).
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
