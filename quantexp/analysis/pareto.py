"""Pareto fronts and hypervolume for (multi-objective) precision searches.

Points are tuples of objective values with one direction each ("minimize" /
"maximize"); internally everything is turned into minimisation. The hypervolume
is the area (volume) dominated by the front and bounded by a reference point
that every point dominates; 2 objectives are computed exactly by a sweep, more
with Optuna's own hypervolume routine.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = Sequence[float]


def _as_min(points: Sequence[Point], directions: Sequence[str]) -> list[tuple[float, ...]]:
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    if any(d not in ("minimize", "maximize") for d in directions):
        raise ValueError(f"directions must be minimize/maximize, got {list(directions)}")
    return [tuple(s * float(v) for s, v in zip(signs, p)) for p in points]


def dominates(a: Point, b: Point) -> bool:
    """a dominates b (minimisation): no worse everywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates: the first one kept)."""
    mins = _as_min(points, directions)
    front = []
    for i, p in enumerate(mins):
        if any(dominates(q, p) for j, q in enumerate(mins) if j != i):
            continue
        if any(mins[j] == p for j in front):
            continue
        front.append(i)
    return front


def hypervolume(points: Sequence[Point], directions: Sequence[str], reference: Point) -> float:
    """Volume dominated by ``points`` within the box bounded by ``reference``
    (given in the objectives' own units and directions)."""
    mins = _as_min(points, directions)
    ref = _as_min([reference], directions)[0]
    mins = [p for p in mins if all(x < r for x, r in zip(p, ref))]
    if not mins:
        return 0.0
    if len(ref) == 2:
        front = sorted({mins[i] for i in pareto_front(mins, ["minimize"] * 2)})
        volume, prev_y = 0.0, ref[1]
        for x, y in front:  # x ascending, y descending along a 2-D front
            volume += (ref[0] - x) * (prev_y - y)
            prev_y = y
        return volume
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(mins), np.asarray(ref)))


def best_under(points: Sequence[Point], key: int, directions: Sequence[str],
               limits: dict[int, float]) -> int | None:
    """Index of the point best on objective ``key`` among those with objective j <= limits[j]."""
    ok = [i for i, p in enumerate(points) if all(p[j] <= lim for j, lim in limits.items())]
    if not ok:
        return None
    sign = 1.0 if directions[key] == "minimize" else -1.0
    return min(ok, key=lambda i: sign * points[i][key])


__all__ = ["best_under", "dominates", "hypervolume", "pareto_front"]
