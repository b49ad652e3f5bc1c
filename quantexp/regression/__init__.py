"""Regression detection across runs: ``quantexp compare`` (baseline vs candidate, one
verdict per metric from a stated test), ``quantexp baseline`` (pin a run as @name) and
``quantexp history`` (one configuration over time).

- ``sources``: a results.json, an MLflow run id or @name -> ``RunRecord``;
- ``compare``: the verdicts, the verdict JSON, the MLflow tags;
- ``history``: the runs of one configuration key, in time order, and the trend charts;
- ``command``: the command lines.
The statistics themselves are in ``quantexp.analysis.regression``.
"""
