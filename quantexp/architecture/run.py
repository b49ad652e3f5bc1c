"""One analysis: the census, the layer statistics and (for a configured model) the
compatibility matrix, as the Python API returns them and as ``quantexp analyze``
writes, prints and logs them.

- ``analyze(module, example_inputs, calibration=None)``: a user's own module;
- ``analyze_model(overrides)``: a zoo/hf model as ``run.py <overrides>`` would load it
  (the fp32 cache is reused; a model not cached yet is trained first), with its
  calibration draw and the matrix for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantexp.architecture.census import Census, layer_table, take_census
from quantexp.architecture.matrix import Cell, compatibility_matrix, option_configs, summary_counts, write_heatmap
from quantexp.architecture.stats import LayerStats, layer_stats
from quantexp.files import atomic_write_csv, atomic_write_json


@dataclass
class Analysis:
    name: str
    census: Census
    stats: list[LayerStats]
    matrix: list[Cell] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def features(self) -> dict[str, float]:
        """The numbers the recommender compares models by (quantexp.recommend.features)."""
        from quantexp.architecture.features import features_of

        return features_of(self)

    def summary(self) -> dict[str, Any]:
        risky = [s for s in self.stats if s.risks]
        return {**self.census.summary(), "layers_with_risks": len(risky),
                "max_weight_kurtosis": max((s.weight_kurtosis for s in self.stats), default=0.0),
                "input_outlier_layers": sum(s.input_outlier_channels > 0 for s in self.stats),
                **({f"matrix.{k}": v for k, v in summary_counts(self.matrix).items()} if self.matrix else {})}

    def write(self, out_dir: Path) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {"layers.csv": atomic_write_csv(out_dir / "layers.csv", layer_table(self.census)),
                 "layer_stats.csv": atomic_write_csv(out_dir / "layer_stats.csv", [s.to_dict() for s in self.stats]),
                 "analysis.json": atomic_write_json(out_dir / "analysis.json", {
                     "name": self.name, "summary": self.summary(), "features": self.features(),
                     "seconds": self.seconds})}
        if self.matrix:
            files["compatibility.csv"] = atomic_write_csv(out_dir / "compatibility.csv",
                                                          [c.__dict__ for c in self.matrix])
            files["compatibility.png"] = write_heatmap(self.matrix, out_dir / "compatibility.png", self.name)
        return files


def _batches(inputs: tuple, batch_size: int):
    n = int(inputs[0].shape[0])
    for start in range(0, n, batch_size):
        yield tuple(x[start:start + batch_size] for x in inputs)


def analyze(module, example_inputs, calibration=None, name: str | None = None,
            batch_size: int = 32) -> Analysis:
    """``quantexp.analyze``: the census (layers by kind, parameters, MACs, family) on
    ``example_inputs`` (a tensor or a tuple of tensors, one batch) and the per-layer
    quantization statistics on ``calibration`` (the same kinds of inputs; default: the
    example) of a user's own module. ``quantexp analyze model=...`` adds the
    compatibility matrix for configured models."""
    import time

    import torch

    example = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    calibration = example if calibration is None else (
        (calibration,) if isinstance(calibration, torch.Tensor) else tuple(calibration))
    start = time.perf_counter()
    census = take_census(module, example)
    census_s = time.perf_counter() - start
    stats = layer_stats(module, _batches(calibration, batch_size), max_batches=-(-int(calibration[0].shape[0]) // batch_size))
    return Analysis(name or type(module).__name__, census, stats,
                    seconds={"census": census_s, "stats": time.perf_counter() - start - census_s})


def analyze_model(overrides: list[str] | tuple[str, ...] = (), with_matrix: bool = True,
                  cache_dir: Path | None = None) -> tuple[Analysis, Any]:
    """The analysis of the model ``run.py <overrides>`` would use; returns it and the
    validated ExperimentConfig."""
    from quantexp.api import compose_checked, validate

    exp = validate(compose_checked(list(overrides)))
    model_overrides = [o for o in overrides if o.split("=")[0].lstrip("+").startswith(("model", "seed"))]
    return analyze_config(exp, model_overrides if with_matrix else None, cache_dir), exp


def analyze_config(exp, matrix_overrides: list[str] | None = None, cache_dir: Path | None = None) -> Analysis:
    """The analysis of ``exp``'s model (loaded from the fp32 cache, or trained and cached);
    with ``matrix_overrides`` (the overrides that select the model) the compatibility
    matrix too."""
    import time

    from quantexp.api import CONF_DIR, PROJECT_ROOT
    from quantexp.models import load_model
    from quantexp.preflight import cache_dir_of
    from quantexp.quant.calibration import draw_calibration

    start = time.perf_counter()
    bundle = load_model(exp.model, exp.seed, cache_dir or cache_dir_of(exp, PROJECT_ROOT))
    load_s = time.perf_counter() - start
    cal_cfg = exp.method.calibration
    calibration = draw_calibration(bundle.train, bundle.test, min(cal_cfg.size, 128), exp.seed)
    analysis = analyze(bundle.model, bundle.example_inputs(exp.bench.batch_size), calibration.inputs,
                       name=bundle.name, batch_size=cal_cfg.batch_size)
    analysis.seconds["load_model"] = load_s
    if matrix_overrides is not None:
        start = time.perf_counter()
        analysis.matrix = compatibility_matrix(exp, option_configs(matrix_overrides, CONF_DIR), bundle)
        analysis.seconds["matrix"] = time.perf_counter() - start
    return analysis


def log_analysis(analysis: Analysis, files: dict[str, Path], exp) -> str | None:
    """An MLflow run "analyze <model>" with the summary as params and the files as
    artifacts (tag quantexp.kind=analyze; reports skip it: it has no results.json)."""
    if not exp.tracking.enabled:
        return None
    from quantexp.api import PROJECT_ROOT
    from quantexp.tracking.run_logger import RunLogger
    from quantexp.tracking.store import open_client

    client, experiment_id = open_client(exp.tracking.uri, PROJECT_ROOT, exp.tracking.experiment)
    with RunLogger(client, experiment_id, f"analyze {analysis.name}", tags={"quantexp.kind": "analyze"}) as log:
        log.log_params({f"analysis.{k}": v for k, v in analysis.summary().items()})
        log.log_metrics({f"feature.{k}": v for k, v in analysis.features().items()})
        for path in files.values():
            log.log_artifact(path, "analysis")
        return log.run_id


def read_analysis(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


__all__ = ["Analysis", "analyze", "analyze_config", "analyze_model", "log_analysis", "read_analysis"]
