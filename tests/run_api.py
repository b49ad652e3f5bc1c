"""One experiment in-process through the Python API (``quantexp.run``), set up as
``tests/run_py.py`` sets up a subprocess: the model cache, the output folder and the
MLflow store under the test's ``tmp`` folder. Cheaper than a process (no interpreter,
torch or Hydra start-up) for the end-to-end cases that do not test the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import quantexp
from tests.mlflow_store import seeded_store


def run_api(overrides: list[str], tmp: Path, cache: Path | None = None) -> dict[str, Any]:
    """``quantexp.run(*overrides)`` into ``tmp/run``; returns what results.json holds
    (raises what the run raises: a ConfigError for bad input)."""
    # bench.processes=1: this test process has run torch work, so a fork server started
    # now would be found out (tests/test_api.py) - seconds per process, for nothing
    results = quantexp.run(None, None, "bench.processes=1", *overrides, f"cache_dir={cache or tmp / 'cache'}",
                           f"tracking.uri={seeded_store(tmp)}", output_dir=tmp / "run")
    assert (tmp / "run" / "results.json").is_file()
    return results.to_dict()
