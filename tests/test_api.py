"""The Python API (quantexp/api.py): the README's "From Python" example runs as
written, ``quantexp.run`` does what run.py does, ``quantexp.quantize`` works on a
user's own module, and bad input is refused before any work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import quantexp
from quantexp.bench import forks
from quantexp.results import Results
from tests.mlflow_store import seeded_store

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": seeded_store(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", readme_example()], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"ptq_static: ([\d.]+)% \(fp32 ([\d.]+)%\), (\d+) kB, speed-up ([\d.]+)x; (\S+)",
                      proc.stdout)
    assert match, proc.stdout[-2000:]
    saved = Results.from_json(match.group(5))
    assert f"{100 * saved.candidate.accuracy:.1f}" == match.group(1)
    assert saved.method["name"] == "ptq_static" and saved.config["bench"]["min_iters"] == 3  # +debug=tiny
    assert "layers in int8:" in proc.stdout and "QuantizedLinear" in proc.stdout


def test_run_returns_the_results_it_wrote(tmp_path, monkeypatch):
    # This test process has run torch work on two threads before (these lines make sure;
    # an xdist worker runs on one, which starts no OpenMP pool), so the fork server the
    # run starts cannot time (bench/forks.py): found out within the alive limit, the run
    # times in its own process and says why.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(1 << 20).sin_()
    torch.set_num_threads(threads)
    monkeypatch.setattr(forks, "_shared", None)
    monkeypatch.setattr(forks, "ALIVE_TIMEOUT_S", 3.0)
    results = quantexp.run("cnn", "ptq_dynamic", "+debug=tiny", model__epochs=1, model__n_train=300,
                           method__calibration__size=16, tracking__enabled=False,
                           cache_dir=str(tmp_path / "cache"), output_dir=tmp_path / "run")
    timing = results.interleaved
    assert timing["processes"] == 1 and len(timing["process_ratios"]) == 1
    assert timing["processes_note"].startswith("timed in 1 of 2 processes: a process forked for timing did "
                                               "not run a parallel op within 3 s")
    assert isinstance(results, Results)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results.to_dict() == written
    assert results.candidate.accuracy == written["candidates"]["ptq_dynamic"]["accuracy"]
    assert results.reference is not None and results.reference.runtime == "torch"
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_run_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(quantexp.ConfigError, match="valid precision values for ptq_static"):
        quantexp.run("cnn", "ptq_static", "precision=fp16", cache_dir=str(tmp_path / "cache"),
                     output_dir=tmp_path / "run", tracking__enabled=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_quantize_a_users_module_with_static_int8():
    torch.manual_seed(0)
    net = Net().eval()
    calib = torch.randn(64, 1, 8, 8)
    q = quantexp.quantize(net, "ptq_static", calibration=calib)
    kinds = {type(m).__module__ for m in q.model.modules()}
    assert any(k.startswith("torch.ao.nn.quantized") for k in kinds), kinds
    assert q.info["quantized_layers"] == 2
    with torch.no_grad():  # int8 stays close to fp32 on the calibration inputs
        ref, out = net(calib), q.model(calib)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99
    assert all(type(m).__module__.startswith("torch.nn.modules") for m in net.children())  # original untouched


def test_quantize_refusals_are_one_line():
    with pytest.raises(quantexp.ConfigError, match="needs calibration data"):
        quantexp.quantize(Net(), "ptq_static")
    with pytest.raises(quantexp.ConfigError, match="rewrites an exported artifact"):
        quantexp.quantize(Net(), "ort_dynamic", overrides=["exporter=onnx"])
    # An embedding makes the module a transformer-family model, which QAT refuses.
    text_model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(quantexp.ConfigError, match="method=qat cannot run with model family=transformer"):
        quantexp.quantize(text_model, "qat", calibration=torch.randint(0, 10, (4, 3)))


def test_quantize_a_users_module_with_a_cascade():
    # The cascade solves its threshold against labels: a labelled Split, the last
    # method.holdout items held out.
    from quantexp.models.base import Split

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(160, 1, 8, 8)
    with torch.no_grad():
        labels = net(x).argmax(1)  # the fp32 model's own answers: a learnable labelling
    data = Split((x,), labels, torch.arange(160))
    q = quantexp.quantize(net, "cascade", calibration=data, overrides=["method.holdout=60", "method.calibration.size=64"])
    with torch.no_grad():
        out = q.model(x[:8])
    assert out.shape == (8, 3)
    assert q.info["holdout.items"] == 60 and q.info["threshold_source"] == "calibrated"
    with pytest.raises(quantexp.ConfigError, match="calibrates on labelled held-out items"):
        quantexp.quantize(net, "cascade", calibration=x)


def test_quantize_refuses_bf16_where_the_cpu_lacks_it():
    # The pre-flight's ISA check holds for the Python API too: one line where bf16 would
    # be emulated through fp32, a bf16 model where the CPU has the instructions.
    from quantexp.hardware.cpu import read_cpu_info
    from quantexp.hardware.engine import bf16_unsupported_reason

    reason = bf16_unsupported_reason(read_cpu_info())
    if reason:
        with pytest.raises(quantexp.ConfigError, match="precision=bf16 on the CPU needs bf16 instructions"):
            quantexp.quantize(Net(), "cast", precision="bf16")
    else:
        q = quantexp.quantize(Net(), "cast", precision="bf16", example_inputs=(torch.randn(2, 1, 8, 8),))
        assert next(q.model.parameters()).dtype == torch.bfloat16
