"""The dynamic-batching server loop, on a virtual clock with a simulated model (exact)."""

from __future__ import annotations

import numpy as np
import pytest

from quantexp.serving.server import ServeConfig, StaticPolicy, serve


class VirtualTime:
    """A clock that moves only when the server sleeps or the model 'computes'."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-7)


def model(vt: VirtualTime, per_batch: float, per_item: float):
    calls = []

    def infer(ids, precision):
        calls.append((vt.now, len(ids), precision))
        vt.now += per_batch + per_item * len(ids)

    return infer, calls


def test_an_idle_server_answers_in_the_service_time():
    vt = VirtualTime()
    infer, calls = model(vt, 0.002, 0.0)
    arrivals = np.array([0.1, 0.2, 0.3])
    r = serve(arrivals, infer, StaticPolicy(ServeConfig(1, "low")), max_wait_s=0.01, interval_s=1.0, drain_s=1.0,
              clock=vt.clock, sleep=vt.sleep)
    assert r.completed.all() and r.latencies_s == pytest.approx([0.002] * 3, abs=1e-6)
    assert [c[1] for c in calls] == [1, 1, 1] and r.served_by == {"low": 3}


def test_a_batch_waits_at_most_max_wait_for_company():
    vt = VirtualTime()
    infer, calls = model(vt, 0.001, 0.0)
    arrivals = np.array([0.0, 0.001, 0.5])  # two close, one far
    r = serve(arrivals, infer, StaticPolicy(ServeConfig(8, "high")), max_wait_s=0.01, interval_s=1.0,
              drain_s=1.0, clock=vt.clock, sleep=vt.sleep)
    # the first batch (2 items) starts when the oldest has waited 10 ms; the last one is
    # alone and no more arrivals can come: it goes at once
    assert [c[1] for c in calls] == [2, 1]
    assert calls[0][0] == pytest.approx(0.01, abs=1e-6)
    assert r.latencies_s == pytest.approx([0.011, 0.010, 0.001], abs=1e-6)


def test_a_full_batch_goes_without_waiting():
    vt = VirtualTime()
    infer, calls = model(vt, 0.001, 0.0)
    arrivals = np.array([0.0, 0.0001, 0.0002, 0.0003, 0.9])
    serve(arrivals, infer, StaticPolicy(ServeConfig(4, "x")), max_wait_s=0.05, interval_s=1.0, drain_s=1.0,
          clock=vt.clock, sleep=vt.sleep)
    assert calls[0][1] == 4 and calls[0][0] == pytest.approx(0.0003, abs=1e-6)


def test_an_overloaded_server_counts_what_it_left_unserved():
    vt = VirtualTime()
    infer, _ = model(vt, 0.01, 0.0)  # 100 batches/s at batch 1 ...
    arrivals = np.linspace(0, 1, 501)[:-1]  # ... for 500 requests/s
    r = serve(arrivals, infer, StaticPolicy(ServeConfig(1, "x")), max_wait_s=0.0, interval_s=0.25, drain_s=0.5,
              clock=vt.clock, sleep=vt.sleep)
    assert not r.completed.all() and r.completed.sum() == pytest.approx(150, abs=2)
    assert r.p99_ms > 1000 * 0.9  # the unserved ones waited up to the end
    assert not r.meets(slo_ms=1e6)  # unserved requests fail any SLO
    # intervals: queue grows, throughput stays at the capacity
    assert [i.queue_len for i in r.intervals[:3]] == sorted(i.queue_len for i in r.intervals[:3])
    assert r.intervals[1].throughput == pytest.approx(100, abs=8)
    assert r.intervals[1].arrival_rate == pytest.approx(500, abs=8)


def test_the_policy_is_asked_at_every_interval_with_that_intervals_figures():
    vt = VirtualTime()
    infer, calls = model(vt, 0.001, 0.0)
    seen = []

    class Alternating(StaticPolicy):
        def decide(self, interval):
            seen.append(interval)
            self.config = ServeConfig(1, "a" if len(seen) % 2 else "b")
            return self.config

    arrivals = np.arange(0, 1, 0.01)
    r = serve(arrivals, infer, Alternating(ServeConfig(1, "a")), max_wait_s=0.0, interval_s=0.1, drain_s=0.1,
              clock=vt.clock, sleep=vt.sleep)
    assert seen[0] is None and len(r.intervals) == len(seen) - 1 >= 10
    assert {c[2] for c in calls} == {"a", "b"}
    first = r.intervals[0]
    assert first.arrivals == 10 and first.completed == 10 and first.p50_ms == pytest.approx(1.0, abs=1e-3)
    assert first.metrics()["throughput"] == pytest.approx(100.0)


def test_the_cycle_collector_is_off_while_requests_are_served_and_back_after():
    import gc

    vt = VirtualTime()
    seen = []

    def infer(ids, precision):
        seen.append(gc.isenabled())
        vt.now += 0.001

    assert gc.isenabled()
    serve(np.array([0.0, 0.1]), infer, StaticPolicy(ServeConfig(1, "low")), max_wait_s=0.0, interval_s=1.0,
          drain_s=1.0, clock=vt.clock, sleep=vt.sleep)
    assert seen == [False, False] and gc.isenabled()

    def failing(ids, precision):
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        serve(np.array([0.0]), failing, StaticPolicy(ServeConfig(1, "low")), max_wait_s=0.0, interval_s=1.0,
              drain_s=1.0, clock=vt.clock, sleep=vt.sleep)
    assert gc.isenabled()  # restored on the way out of a failure too
    gc.disable()
    try:  # and left off where the caller had turned it off
        serve(np.array([0.0]), infer, StaticPolicy(ServeConfig(1, "low")), max_wait_s=0.0, interval_s=1.0,
              drain_s=1.0, clock=vt.clock, sleep=vt.sleep)
        assert not gc.isenabled()
    finally:
        gc.enable()
