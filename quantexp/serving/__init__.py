"""Runtime (dynamic) precision: the pieces a deployment decides with while it serves.

Threshold calibration for a confidence cascade (``threshold``), the shadow-traffic
controller that keeps an agreement target under drift (``shadow``), the Poisson load
generator (``loadgen``), the dynamic-batching server loop with per-interval monitoring
(``server``) and the batch-size/precision controller under a latency SLO (``slo``).

numpy and the standard library only: models come in as callables, so every piece is
tested with simulated models and used by ``method=cascade`` with real ones.
"""
