"""Open-loop load: Poisson arrivals at a given rate, bounded in count and in time.

The schedule is drawn up front (exponential gaps, seeded), and the server admits a
request once the wall clock passes its arrival time; latency is measured from that
scheduled time. Measuring from the schedule rather than from when a busy server got
round to reading the request is what keeps a slow server from hiding its own queue
("coordinated omission", the reason wrk2 and Gatling schedule their arrivals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def poisson_arrivals(rate: float, duration_s: float, max_requests: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Arrival times in seconds from 0 of a Poisson process of ``rate`` per second: every
    arrival before ``duration_s``, at most ``max_requests`` of them (sorted, float64)."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be > 0 and finite, got {rate}")
    if duration_s <= 0 or max_requests < 1:
        raise ValueError(f"need duration_s > 0 and max_requests >= 1, got {duration_s}, {max_requests}")
    times: list[np.ndarray] = []
    last, count = 0.0, 0
    # Draw in chunks sized for the expected count (+6 sd) until time or count runs out.
    chunk = int(rate * duration_s + 6 * math.sqrt(rate * duration_s) + 16)
    while count < max_requests:
        t = last + np.cumsum(rng.exponential(1.0 / rate, size=chunk))
        inside = t[t < duration_s]
        times.append(inside)
        count += len(inside)
        if len(inside) < chunk:
            break
        last = float(t[-1])
    return np.concatenate(times)[:max_requests] if times else np.empty(0)


@dataclass(frozen=True)
class Phase:
    """One stretch of constant offered load."""

    rate: float  # requests per second (one request = one item)
    arrivals_s: np.ndarray  # from the start of the phase

    @property
    def duration_s(self) -> float:
        return float(self.arrivals_s[-1]) if len(self.arrivals_s) else 0.0


def phases(rates: list[float], duration_s: float, max_requests: int, seed: int) -> list[Phase]:
    """One phase per rate, each with its own seeded schedule (the same for every
    configuration that is run through it, so they see identical traffic)."""
    return [Phase(float(rate), poisson_arrivals(rate, duration_s, max_requests,
                                                np.random.default_rng([seed, i])))
            for i, rate in enumerate(rates)]


__all__ = ["Phase", "phases", "poisson_arrivals"]
