"""Every run gets its own output folder, even runs started in the same second:
``hydra.run.dir`` ends with the process id, ``quantexp.run`` makes a fresh folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from quantexp.api import new_output_dir

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "method=ptq_dynamic", "+debug=tiny",
        "tracking.enabled=false"]


def test_api_output_dirs_in_one_second_are_distinct(tmp_path):
    dirs = [new_output_dir(tmp_path, "cnn_fp32") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert dirs[0].name.endswith(f"_cnn_fp32_{os.getpid()}") and dirs[1].name.endswith("-2")


def test_concurrent_runs_write_their_own_folders_and_results(tmp_path):
    # run from tmp_path: the default outputs/ (and .cache/) resolve there, as for a user
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY, f"seed={seed}"], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    results = sorted((tmp_path / "outputs").glob("*/*/results.json"))
    assert len(results) == 2, results
    assert {json.loads(r.read_text())["config"]["seed"] for r in results} == {0, 1}
    assert {r.parent.name.rsplit("_", 1)[1] for r in results} == {str(p.pid) for p in procs}
