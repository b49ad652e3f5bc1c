"""quantexp.results on real results.json files: run.py is run once per method (a tiny CNN,
a few timed calls) and the typed view is checked against the dict it wrote."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quantexp.results import Candidate, Comparison, Latency, Results
from tests.session import built_once

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model=cnn", "model.epochs=1", "model.n_train=400", "model.n_test=200", "+debug=tiny",
         "tracking.enabled=false"]


def _run(tmp: Path, name: str, *overrides: str) -> None:
    # One cache for both runs: the CNN is trained once, the fp32 run loads it.
    proc = subprocess.run([sys.executable, "run.py", *SMALL, *overrides, f"cache_dir={tmp}/cache",
                           f"hydra.run.dir={tmp}/{name}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _runs(tmp: Path) -> None:
    _run(tmp, "ptq", "method=ptq_static", "method.calibration.size=32")
    # fp32 with a gate set, so the gate's accuracy_drop_points/passed come from real data too.
    _run(tmp, "fp32", "method=fp32", "eval.max_accuracy_drop=50")


@pytest.fixture(scope="module")
def runs() -> dict[str, Path]:
    tmp = built_once("results_runs", _runs)  # once per session, whichever worker comes first
    return {"ptq_static": tmp / "ptq" / "results.json", "fp32": tmp / "fp32" / "results.json"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.parametrize("label", ["ptq_static", "fp32"])
def test_round_trip_is_exact(runs, label):
    text = runs[label].read_text()
    d = json.loads(text)
    before = copy.deepcopy(d)
    out = Results.from_dict(d).to_dict()
    assert out == d
    assert d == before  # from_dict does not consume or edit its input
    # Same keys in the same order: written back, it is the same file.
    assert json.dumps(out, indent=2, default=str) == text


def test_typed_access_gives_the_dict_numbers(runs):
    d = _load(runs["ptq_static"])
    r = Results.from_dict(d)
    cand, base, comp = d["candidates"]["ptq_static"], d["candidates"]["fp32"], d["comparison"]
    assert r.label == "ptq_static"
    assert r.candidate.accuracy == cand["accuracy"] is not None
    assert r.candidate.latency is not None and r.candidate.latency.p50_ms == cand["latency"]["p50_ms"]
    assert r.candidate.size_bytes == cand["size_bytes"]
    assert r.reference is not None and r.reference.size_bytes == base["size_bytes"]
    assert r.reference.latency is not None and r.reference.latency.p90_ms == base["latency"]["p90_ms"]
    assert r.speedup == comp["speedup_p50"] == pytest.approx(r.reference.latency.p50_ms
                                                             / r.candidate.latency.p50_ms)
    assert r.accuracy_drop_points == -100.0 * comp["accuracy_delta"]
    assert r.comparison.agreement_fp32 == comp["agreement_fp32"]
    assert r.comparison.extra == {}  # every key compare_predictions writes is a field
    export = {k.removeprefix("export."): v for k, v in cand.items() if k.startswith("export.")}
    assert export and r.candidate.export == export
    assert r.candidate.extra == {} and r.extra == {}
    assert r.candidate.timing == cand["timing"] and r.candidate.threads == cand["threads"]
    assert r.gate.passed is None and r.gate.max_accuracy_drop is None
    assert r.objective == d["objective"] and r.results_path == str(runs["ptq_static"])
    assert r.mlflow_run_id is None and "mlflow_run_id" not in r.to_dict()  # tracking was off


def test_fp32_run_has_no_reference_and_a_gate(runs):
    d = _load(runs["fp32"])
    r = Results.from_dict(d)
    assert list(r.candidates) == ["fp32"]
    assert r.reference is None and r.candidate is r.candidates["fp32"]
    assert r.calibration == {} and r.budget == {}
    assert r.gate.max_accuracy_drop == d["gate"]["max_accuracy_drop"] == 50
    assert r.gate.accuracy_drop_points == d["gate"]["accuracy_drop_points"] == r.accuracy_drop_points
    assert r.gate.passed is d["gate"]["passed"] is True


def test_unknown_keys_survive_at_every_level(runs):
    d = _load(runs["ptq_static"])
    d["future_section"] = {"a": [1, 2]}
    cand = d["candidates"]["ptq_static"]
    cand["energy_j"] = 0.25
    cand["export.opset"] = 17
    cand["latency"]["p999_ms"] = 99.0
    d["comparison"]["accuracy_int8"] = 0.5
    d["gate"]["note"] = "soft"
    r = Results.from_dict(d)
    assert r.to_dict() == d
    assert r.extra == {"future_section": {"a": [1, 2]}}
    assert r.candidate.extra == {"energy_j": 0.25} and r.candidate.export["opset"] == 17
    assert r.candidate.latency is not None and r.candidate.latency.extra == {"p999_ms": 99.0}
    assert r.comparison.extra == {"accuracy_int8": 0.5} and r.gate.extra == {"note": "soft"}


def test_json_file_round_trip(runs, tmp_path):
    r = Results.from_json(runs["ptq_static"])
    copy_path = r.to_json(tmp_path / "copy.json")
    assert copy_path.read_text() == runs["ptq_static"].read_text()
    assert Results.from_json(copy_path) == r


def test_not_measured_candidate_round_trips(runs):
    d = _load(runs["ptq_static"])
    cand = d["candidates"]["ptq_static"]
    # What _measure writes for an artifact this host cannot run (and what follows from it).
    cand.update(accuracy=None, latency={}, latency_raw_ms=[], peak_rss_mb=None, peak_gpu_mb=None)
    del cand["timing"]
    d["comparison"] = {"size_ratio": d["comparison"]["size_ratio"]}
    d["not_measured"] = {"ptq_static.accuracy": "not measured on this host: test",
                         "ptq_static.latency": "not measured on this host: test"}
    r = Results.from_dict(d)
    assert r.to_dict() == d
    assert r.candidate.latency is None and r.candidate.accuracy is None and r.candidate.timing is None
    assert r.speedup is None and r.accuracy_drop_points is None
    assert r.reference is not None and r.reference.latency is not None  # fp32 was still timed
    assert Candidate.from_dict(cand).to_dict()["latency"] == {}
    assert Comparison.from_dict({}).to_dict() == {} and Latency.from_dict({}).to_dict() == {}


def test_objective_tuple_stays_a_tuple_before_json(runs):
    # pipeline.run returns several objectives as a tuple; JSON makes it a list. Both round-trip.
    d = _load(runs["ptq_static"])
    d["objective"] = (0.36, 0.5)
    out = Results.from_dict(d).to_dict()["objective"]
    assert isinstance(out, tuple) and out == (0.36, 0.5)


def test_missing_key_is_refused(runs):
    d = _load(runs["ptq_static"])
    del d["candidates"]
    with pytest.raises(ValueError, match="candidates"):
        Results.from_dict(d)
    cand = _load(runs["ptq_static"])["candidates"]["fp32"]
    del cand["size_bytes"]
    with pytest.raises(ValueError, match="size_bytes"):
        Candidate.from_dict(cand)


# quantexp._lazy (the package __init__'s PEP 562 helper) and quantexp.files are stdlib only.
def test_import_is_torch_free():
    code = ("import sys, quantexp.results; heavy = {'torch', 'numpy', 'hydra', 'mlflow', 'omegaconf'};"
            " loaded = sorted(heavy & set(sys.modules));"
            " mine = sorted(m for m in sys.modules if m.startswith('quantexp.') and m not in ('quantexp.results', 'quantexp._lazy', 'quantexp.files'));"
            " assert not loaded and not mine, (loaded, mine)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
