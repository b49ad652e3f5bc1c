"""The timing stage (quantexp/pipeline/measure.py) times each artifact loaded again from
its file, not the runtime that has just evaluated the test set (a oneDNN int8 module
keeps the primitives of the first batch size it ran; the module docstring has the
figures), and where an artifact cannot be loaded again it still times - the evaluated
runtime - and says so in the results."""

from __future__ import annotations

import pytest
import torch

from quantexp.api import compose, validate
from quantexp.config import HardwareConfig
from quantexp.exporters import get_exporter
from quantexp.models.cnn.config import CNNConfig
from quantexp.pipeline.measure import reloaded, time_candidates


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from quantexp.hardware import probe_host
    from quantexp.models import load_model

    # The same cache key as tests/exporters/test_onnx.py: trained once per session.
    cache = tmp_path_factory.getbasetemp() / "ort_cnn_cache"
    bundle = load_model(CNNConfig(name="cnn", dataset="mnist5k", n_train=500, n_test=200, epochs=2,
                                  lr=3e-3), 0, cache)
    host = probe_host(HardwareConfig(name="cpu", threads=1))
    exp = validate(compose(["+debug=tiny", "bench.processes=1"]))
    return bundle, host, exp


def export(setup, folder, tag):
    bundle, host, exp = setup
    return get_exporter(exp.exporter.name)(exp.exporter, host).export(bundle.model, bundle, folder, tag)


def test_the_timed_runtime_is_the_artifact_loaded_again(setup, tmp_path):
    bundle, host, exp = setup
    exported = export(setup, tmp_path, "fp32")
    runtime, note = reloaded(exported, exp, host)
    assert note is None
    assert runtime is not exported.runtime and runtime.module is not exported.runtime.module
    x = bundle.example_inputs(8)
    torch.testing.assert_close(runtime(*x), exported.runtime(*x))


def test_a_pair_is_timed_on_fresh_loads_and_without_a_note(setup, tmp_path):
    bundle, host, exp = setup
    timed = {"fp32": (export(setup, tmp_path, "fp32"), {}), "copy": (export(setup, tmp_path, "copy"), {})}
    speedup = time_candidates(bundle, timed, exp, host)
    assert speedup["processes"] == 1 and speedup["processes_note"] is None
    for _, cand in timed.values():
        assert cand["latency"]["p50_ms"] > 0 and cand["latency_raw_ms"] and "timing_note" not in cand


def test_an_artifact_that_cannot_load_again_is_timed_as_evaluated_and_said(setup, tmp_path):
    bundle, host, exp = setup
    timed = {"fp32": (export(setup, tmp_path, "fp32"), {}), "copy": (export(setup, tmp_path, "copy"), {})}
    timed["copy"][0].artifact.unlink()
    speedup = time_candidates(bundle, timed, exp, host)
    assert speedup["processes_note"].startswith("timed the runtime that evaluated (its artifact did not load "
                                                "again: ")
    assert timed["copy"][1]["latency"]["p50_ms"] > 0
    # one artifact alone (no pair): the note goes on its candidate
    alone = {"copy": timed["copy"]}
    assert time_candidates(bundle, alone, exp, host) is None
    assert alone["copy"][1]["timing_note"].startswith("timed the runtime that evaluated")
