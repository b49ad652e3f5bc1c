"""How good is `quantexp compare` at its job? Reruns of one configuration must not be
flagged; planted regressions must be. Prints, per metric, the false-positive rate over
reruns (against rerun 0, and over every ordered pair of reruns: each rerun in turn the
baseline) and the detection rate of:
- a planted 1-point accuracy drop (1 % of the test items flipped from right to wrong in a
  copy of each rerun's predictions, a different random set each time);
- a planted slowdown (the same configuration at fewer threads: a real, slower run).

    .venv/bin/python benchmarks/regression_detection.py [--reruns 10] [--slow-runs 5] [overrides...]
    .venv/bin/python benchmarks/regression_detection.py --reruns 3 --slow-runs 0 model=minilm method=ptq_dynamic

``--work DIR`` keeps the runs there; a run whose results.json is already in DIR is not
run again, so the verdicts can be recomputed (say with other thresholds: ``--set``)
without re-measuring.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from quantexp.analysis.regression import REGRESSED
from quantexp.regression.command import load_config
from quantexp.regression.compare import compare
from quantexp.regression.sources import from_path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, cache: Path, overrides: list[str]) -> Path:
    if (out / "results.json").is_file():
        return out
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, "tracking.enabled=false",
                    f"hydra.run.dir={out}", f"cache_dir={cache}"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def planted_drop(src: Path, dst: Path, seed: int) -> Path:
    """A copy of ``src`` whose candidate got 1 % of the test items wrong that it had right."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    data = dict(np.load(dst / "predictions.npz"))
    label = from_path(dst).results.label
    right = np.flatnonzero(data[label] == data["labels"])
    flip = np.random.default_rng(seed).choice(right, size=max(1, len(data["labels"]) // 100), replace=False)
    data[label][flip] = (data["labels"][flip] + 1) % (int(data["labels"].max()) + 1)
    np.savez_compressed(dst / "predictions.npz", **data)
    return dst


def latency_of(comparison):
    return next(v for v in comparison.verdicts if v.metric == "latency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=10)
    parser.add_argument("--slow-runs", type=int, default=5, help="runs at --slow-threads (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slow-threads", type=int, default=1)
    parser.add_argument("--work", type=Path, help="keep the runs here (and reuse those already there)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a threshold of conf/compare.yaml, e.g. --set latency_min_effect=0.1")
    parser.add_argument("--baselines", type=int, default=3,
                        help="also judge with K reruns as the baseline (quantexp compare --baseline x K): "
                             "false positives over every K-subset of reruns vs each other rerun")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="quantexp-detect-"))
    cache = ROOT / ".cache" / "detect"
    base = [*args.overrides, f"hardware.threads={args.threads}"]
    reruns = [run(work / f"rerun{i}", cache, base) for i in range(args.reruns)]
    config = load_config(ROOT / "conf" / "compare.yaml", args.set)  # what `quantexp compare` uses
    sources = [from_path(path) for path in reruns]
    baseline = sources[0]
    false_pos: Counter[str] = Counter()
    for path, source in zip(reruns[1:], sources[1:]):
        for v in compare(baseline, source, config).verdicts:
            false_pos[v.metric] += v.status == REGRESSED
            print(f"rerun {path.name}: {v.metric} {v.status} - {v.detail}", flush=True)
    # Every ordered pair: how often would *some* rerun, pinned as the baseline, flag another?
    pair_pos: Counter[str] = Counter()
    for i, j in itertools.permutations(range(len(sources)), 2):
        for v in compare(sources[i], sources[j], config).verdicts:
            pair_pos[v.metric] += v.status == REGRESSED
    # K reruns as the baseline (every K-subset), each other rerun as the candidate
    multi_pos: Counter[str] = Counter()
    first_pos: Counter[str] = Counter()  # the first K reruns pinned, as a user would
    subsets = list(itertools.combinations(range(len(sources)), args.baselines)) if args.baselines > 1 else []
    multi_n = 0
    for subset in subsets:
        for j in (j for j in range(len(sources)) if j not in subset):
            multi_n += 1
            for v in compare([sources[i] for i in subset], sources[j], config).verdicts:
                multi_pos[v.metric] += v.status == REGRESSED
                if subset == tuple(range(args.baselines)):
                    first_pos[v.metric] += v.status == REGRESSED
    caught = 0
    for i, path in enumerate(reruns):
        planted = planted_drop(path, work / f"planted{i}", seed=i)
        verdict = compare(baseline, from_path(planted), config).verdicts[0]
        caught += verdict.status == REGRESSED
        print(f"planted drop {i}: {verdict.status} - {verdict.detail}", flush=True)
    slow_caught, ratios, multi_slow, multi_slow_n = 0, [], 0, 0
    for i in range(args.slow_runs):
        slow = run(work / f"slow{i}", cache, [*args.overrides, f"hardware.threads={args.slow_threads}"])
        slow_source = from_path(slow)
        verdict = latency_of(compare(baseline, slow_source, config))
        slow_caught += verdict.status == REGRESSED
        for subset in subsets:
            multi_slow_n += 1
            multi_slow += latency_of(compare([sources[k] for k in subset], slow_source, config)).status == REGRESSED
        ratios.append(verdict.estimate)
        print(f"slow run {i} ({args.slow_threads} thread): {verdict.status} - {verdict.detail}", flush=True)
    n = args.reruns - 1
    print(f"\nconfiguration: {' '.join(base)}; thresholds: {config}")
    pairs = len(sources) * (len(sources) - 1)
    for metric in ("accuracy", "latency", "speedup"):
        print(f"false positives over {n} reruns vs rerun 0: {metric} {false_pos[metric]}/{n}; "
              f"over all {pairs} ordered pairs of reruns: {pair_pos[metric]}/{pairs}")
    if subsets:
        for metric in ("accuracy", "latency", "speedup"):
            rest = len(sources) - args.baselines
            print(f"false positives with {args.baselines} reruns as the baseline: {metric} - reruns "
                  f"0-{args.baselines - 1} vs the other {rest}: {first_pos[metric]}/{rest}; every subset of "
                  f"{args.baselines} vs every other rerun: {multi_pos[metric]}/{multi_n}")
    print(f"planted 1 % accuracy drop detected: {caught}/{len(reruns)}")
    if args.slow_runs:
        print(f"planted slowdown ({args.threads} -> {args.slow_threads} threads, p50 x{min(ratios):.2f}.."
              f"x{max(ratios):.2f}) detected as a latency regression: {slow_caught}/{args.slow_runs}"
              + (f"; with {args.baselines} reruns as the baseline: {multi_slow}/{multi_slow_n}" if subsets else ""))


if __name__ == "__main__":
    main()
