"""Fits / does not fit, and why, from what the serving process measured.

Pure functions of a measurement dict (``quantexp.deployment.runner``) and a profile:
the unit tests feed them hand-made measurements. The reasons read as a user would say
them: "peak 612 MB > 512 MB cap", "p99 41.0 ms > 30 ms budget".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantexp.config import DeploymentConfig


def latency_summary(latencies_ms: list[float], batch_size: int, seconds: float | None) -> dict[str, float]:
    """p50/p90/p99/mean/max of the requests' latencies; items/s when the phase's time is known."""
    if not latencies_ms:
        return {}
    a = np.asarray(latencies_ms, dtype=float)
    out = {"n": float(len(a)), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
           "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "max_ms": float(a.max())}
    if seconds:
        out["items_per_s"] = len(a) * batch_size / seconds
    return out


def _mb(value: float) -> str:
    return f"{value:.0f} MB"


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def verdict(profile: DeploymentConfig, m: dict[str, Any]) -> dict[str, Any]:
    """``{"fits": bool | None, "reasons": [...], "summary": "fits" | "does not fit: ..."}``.
    ``fits`` is None only when the candidate could not be served for a reason that says
    nothing about the profile (a format the child cannot load)."""
    reasons: list[str] = []
    cap = profile.memory_mb
    status = m.get("status")
    peak = m.get("peak_rss_mb")
    if status == "not_measured":
        return {"fits": None, "reasons": [m["error"]], "summary": m["error"]}
    if cap is not None and peak is not None and peak > cap:
        reasons.append(f"peak {_mb(peak)} > {cap} MB cap")
    if status == "memory":
        where = f" ({m['error']})" if m.get("error") else ""
        if not reasons:
            reasons.append(f"allocation refused under the {cap} MB cap{where}")
        elif m.get("error"):
            reasons[-1] += where
    elif status == "crashed":
        reasons.append(m["error"])
    elif status == "error":
        reasons.append(f"could not be served: {m.get('error')}")
    lat = m.get("latency") or {}
    for key, budget in (("p50", profile.p50_budget_ms), ("p99", profile.p99_budget_ms)):
        value = lat.get(f"{key}_ms")
        if budget is not None and value is not None and value > budget:
            what = "cold start " if profile.cold_start else ""
            reasons.append(f"{what}{key} {_ms(value)} > {budget:g} ms budget")
    if status == "ok" and not lat:
        reasons.append("no request finished within deployment.max_seconds")
    fits = not reasons
    return {"fits": fits, "reasons": reasons, "summary": "fits" if fits else "does not fit: " + "; ".join(reasons)}


__all__ = ["latency_summary", "verdict"]
