"""method=cascade: runtime (dynamic) precision. A low-precision model answers first;
inputs it is unsure of, or that look unlike its calibration data, are re-run at high
precision. Scenarios on the same deployed cascade: a drifting stream kept at an
agreement target by a shadow-traffic controller (``+scenario=drift``), and batch size
and precision chosen per interval under a p99 latency SLO (``+scenario=slo``)."""
