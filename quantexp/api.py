"""The Python API: what ``run.py`` does, callable from Python.

- ``run(model=..., method=..., **overrides) -> Results``: compose the Hydra config
  (the same ``conf/`` tree, through Hydra's compose API), validate it (schema,
  compatibility, hardware), run the pipeline under an MLflow run, write
  results.json and print the summary - exactly what ``python run.py`` does.
- ``quantize(module, method, ...) -> QuantizedModel``: a method applied to a
  user's own ``nn.Module`` (wrapped by ``ModelBundle.from_module``).
- ``validate`` / ``execute``: the two halves ``run`` and the Hydra job share.

Heavy imports (torch, mlflow, the pipeline) happen inside the functions: importing
this module costs what importing Hydra costs.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from quantexp.config import ConfigError, ExperimentConfig, build, register_configs
from quantexp.files import atomic_write_json, atomic_write_text
from quantexp.hardware.probe import require_available

if TYPE_CHECKING:
    import torch
    from torch import nn

    from quantexp.methods.base import QuantizedModel
    from quantexp.models.base import Split
    from quantexp.results import Results

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def register() -> None:
    """Everything a composed config needs before Hydra reads it: the schemas in the
    ConfigStore and the resolvers of the precision search (idempotent)."""
    from quantexp.search import register_resolvers

    register_configs()
    register_resolvers()
    if not OmegaConf.has_resolver("quantexp.pid"):
        # hydra.run.dir ends with it: runs started in the same second get their own folders
        OmegaConf.register_resolver("quantexp.pid", os.getpid)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config of ``python run.py <overrides>`` (no Hydra job started)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return hydra_compose(config_name="config", overrides=list(overrides))


def compose_checked(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``compose``, with what Hydra cannot compose (an unknown option, a value of the
    wrong type, a bad override) raised as a one-line ``ConfigError`` carrying Hydra's
    own message."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[0]
        if "Available options" in str(exc):  # an unknown group option: list the valid ones
            options = [line for line in lines[1:] if line and " " not in line]
            reason += f" (options: {', '.join(options)})" if options else ""
        elif reason.endswith(":") and len(lines) > 1:
            # "In 'scenario/drift': ConfigKeyError raised while composing config:" + which key
            reason += f" {lines[1]}"
        elif exc.__cause__ is not None and str(exc.__cause__).strip():
            # "Error merging override model.hidden=abc" + why: "Value 'abc' ... not be converted"
            reason += f": {str(exc.__cause__).strip().splitlines()[0]}"
        scenario = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("scenario=")), None)
        if scenario and f"In 'scenario/{scenario}'" in reason:
            # the scenario selects its own method, which an explicit method=... overrode
            reason = _scenario_conflict(scenario, overrides) or reason
        raise ConfigError(reason) from None


def _scenario_conflict(scenario: str, overrides) -> str | None:
    """"+scenario=drift runs on method=cascade ..." when a method=... override displaced
    the method the scenario's config selects (``override /method: <name>``)."""
    import re

    path = CONF_DIR / "scenario" / f"{scenario}.yaml"
    found = re.search(r"override /method: *(\w+)", path.read_text()) if path.is_file() else None
    given = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), None)
    if not found or not given or given == found.group(1):
        return None
    return (f"+scenario={scenario} runs on method={found.group(1)} (conf/scenario/{scenario}.yaml selects it), "
            f"not method={given}: drop the method= override")


def validate(cfg: DictConfig) -> ExperimentConfig:
    """Schema + compatibility + hardware availability: everything that can be
    refused without loading a model."""
    exp = build(cfg)
    require_available(exp.hardware)
    return exp


def execute(exp: ExperimentConfig, cfg: DictConfig, output_dir: Path, project_root: Path,
            run_name: str, reference_cache: Path | None = None,
            placement: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the pipeline under an MLflow run (or none when tracking is disabled),
    write config.yaml and results.json into ``output_dir``, print the summary.
    ``reference_cache``: where a sweep keeps its fp32 reference (``pipeline.reference``);
    ``placement``: where a sweep ran this job (quantexp.launch.placement), recorded."""
    from quantexp.preflight import cache_dir_of, preflight

    preflight(exp, project_root)  # before any model loads and before the MLflow run opens
    # the pipeline (torch) only now: input the pre-flight refuses is refused in under a second
    from quantexp import pipeline
    from quantexp.bench.memory import reset_process_peak_rss
    from quantexp.provenance import git_commit, library_versions, process_identity
    from quantexp.report.summary import print_summary

    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir_of(exp, project_root)
    config_yaml = OmegaConf.to_yaml(cfg)
    atomic_write_text(output_dir / "config.yaml", config_yaml)
    # the commit of the code that measured (this package's checkout), not of the cwd
    commit = git_commit(PROJECT_ROOT)
    tags = {"quantexp.git_commit": commit, "quantexp.output_dir": str(output_dir),
            "quantexp.started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **{f"version.{k}": v for k, v in library_versions().items()},
            # the process measuring: a resumed sweep closes a RUNNING run only once it is gone
            **{f"quantexp.process.{k}": v for k, v in process_identity().items()}}
    if placement is not None:
        tags.update(placement.get("tags", {}))
    mlflow_tags = {"mlflow.source.name": "quantexp run", "mlflow.source.type": "LOCAL"}
    if commit != "unknown":
        mlflow_tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")

    link = None
    with _tracking(exp, project_root, run_name, {**tags, **mlflow_tags}) as log:
        if log is not None:
            from quantexp.tracking.run_logger import flatten

            log.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
            log.log_text(config_yaml, "config.yaml")
        reset_process_peak_rss()  # process_peak_rss_mb: this run's peak, not the process's so far
        results = pipeline.run(exp, output_dir, cache_dir, log, reference_cache=reference_cache)
        if placement is not None:
            results["placement"] = {k: v for k, v in placement.items() if k != "tags"}
        results["config"] = OmegaConf.to_container(cfg, resolve=True)
        results["provenance"] = tags
        results["results_path"] = str(output_dir / "results.json")
        if log is not None:
            results["mlflow_run_id"] = log.run_id
        atomic_write_json(output_dir / "results.json", results)
        if log is not None:
            link = _log_outcome(log, exp, results)
    print_summary(results)
    if placement is not None:
        print(placement["description"])
    if results.get("budget"):
        b = results["budget"]
        measured = ", ".join(f"{k.removeprefix('measured.')}={v:.4g}" for k, v in b.items()
                             if k.startswith("measured."))
        print(f"budget {b['budget']}: {'met' if b['met'] else 'NOT met'} (measured {measured})")
    if link:
        print(f"MLflow: {link}  (`make ui` serves it)")
    return results


def _log_outcome(log, exp: ExperimentConfig, results: dict[str, Any]) -> str:
    """results.json, the deployed model (an MLflow model where a flavour exists, else a
    plain artifact), the summary as the run's description; the run's UI link."""
    from quantexp.report.summary import summary_text
    from quantexp.tracking.models import log_deployed_model
    from quantexp.tracking.store import run_url, ui_base

    log.log_artifact(Path(results["results_path"]))
    if exp.tracking.log_model:
        label = results["method"]["name"]
        for name, cand in results["candidates"].items():
            artifact = Path(cand["artifact"])
            flavoured = name == label and log_deployed_model(
                log.client, log.experiment_id, log.run_id, artifact, f"{results['model']['name']}-{label}",
                {"quantexp.method": label, "quantexp.precision": str(results["method"]["precision"])})
            if not flavoured:  # the fp32 reference, or a format MLflow has no flavour for
                log.log_artifact(artifact, "model")
    log.set_tags({"mlflow.note.content": "```\n" + summary_text(results) + "```\n"})
    return run_url(ui_base(log.client.tracking_uri), log.experiment_id, log.run_id)


def run_name_of(exp: ExperimentConfig) -> str:
    return f"{exp.model.name}/{exp.method.name}/{exp.precision.name}/{exp.hardware.name}"


def new_output_dir(root: Path, name: str) -> Path:
    """``root/<date>/<time>_<name>_<pid>``, created here and never shared: two calls in
    one second (one process) get ``-2``, ``-3``... (mkdir without exist_ok is atomic)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    base = root / f"{stamp}_{name}_{os.getpid()}"
    base.parent.mkdir(parents=True, exist_ok=True)
    candidates = (base if n == 1 else base.with_name(f"{base.name}-{n}") for n in itertools.count(1))
    while True:
        candidate = next(candidates)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def run(model: str | None = None, method: str | None = None, *overrides: str,
        output_dir: str | Path | None = None, **settings: Any) -> "Results":
    """Run one experiment as ``python run.py`` would and return its typed results.

    ``model`` and ``method`` pick config group options; ``overrides`` are Hydra
    override strings (``"precision=w4a8"``, ``"+search=..."``); ``settings`` are
    ``key=value`` overrides with dots spelled as double underscores
    (``bench__batch_size=4`` is ``bench.batch_size=4``). A bad configuration
    raises ``ConfigError`` before any model loads or any MLflow run opens."""
    from quantexp.results import Results

    args = [f"model={model}"] if model else []
    args += [f"method={method}"] if method else []
    args += list(overrides)
    args += [f"{key.replace('__', '.')}={_override_value(value)}" for key, value in settings.items()]
    cfg = compose(args)
    exp = validate(cfg)
    if output_dir is None:
        output_dir = new_output_dir(PROJECT_ROOT / "outputs", f"{exp.model.name}_{exp.method.name}")
    results = execute(exp, cfg, Path(output_dir), PROJECT_ROOT, run_name_of(exp))
    return Results.from_dict(json.loads(json.dumps(results, default=str)))


def quantize(module: "nn.Module", method: str, *, precision: str | None = None,
             calibration: "Split | torch.Tensor | tuple[torch.Tensor, ...] | None" = None,
             example_inputs: tuple | None = None,
             overrides: list[str] | tuple[str, ...] = (), hardware: str = "cpu") -> "QuantizedModel":
    """Quantize a user's own ``module`` with ``method`` (any method of ``conf/method``),
    at ``precision`` (default: the method's own). ``calibration``: representative
    inputs - a tensor, a tuple of tensors (one per model input) or a ``Split``; labels
    are never used to quantize. Methods that calibrate refuse to run without it. ``overrides`` are Hydra overrides of the method group
    (``"method.calibration.size=64"``). Artifact-stage methods (ort_*) work on an
    exported file, not a module, and are refused here with the reason."""
    from quantexp.hardware import probe_host
    from quantexp.methods.base import get_method
    from quantexp.models.base import ModelBundle, guess_family

    # The model group only lends its family to the compatibility check here.
    args = [f"method={method}", f"hardware={hardware}", f"model.family={guess_family(module)}", *overrides]
    if precision:
        args.append(f"precision={precision}")
    cfg = compose(args)
    exp = validate(cfg)
    from quantexp.preflight import check_engine, check_precision_isa

    # the pre-flight checks that concern a module (no cache, store or model path here)
    check_engine(exp)
    check_precision_isa(exp)
    method_cls = get_method(exp.method.name)
    if method_cls.stage != "model":
        raise ConfigError(f"method={method} rewrites an exported artifact, not a module: use "
                          "quantexp.run(...) with exporter=onnx for it")
    holdout = getattr(exp.method, "holdout", None) if method_cls.needs_labels else None
    if holdout is not None:
        # The method calibrates against labels (the cascade's escalation threshold): the
        # last ``holdout`` items of a labelled Split are held out, the rest calibrate.
        from quantexp.models.base import Split

        if not isinstance(calibration, Split) or len(calibration) <= holdout:
            raise ConfigError(f"method={method} calibrates on labelled held-out items: pass calibration="
                              f"Split(inputs, labels, ids) with more than method.holdout={holdout} items")
    calibration = as_split(calibration)
    if calibration is None and method_cls.needs_calibration:
        raise ConfigError(f"method={method} needs calibration data: pass calibration=<inputs tensor>")
    bundle = ModelBundle.from_module(module, calibration=calibration, example_inputs=example_inputs)
    if holdout is not None:
        calibration = calibration.subset(list(range(len(calibration) - holdout)))
    impl = method_cls(exp.method, exp.precision, probe_host(exp.hardware))
    impl.log = None
    impl.check_model(bundle)
    return impl.quantize(bundle, calibration)


def as_split(data: "Split | torch.Tensor | tuple[torch.Tensor, ...] | None") -> "Split | None":
    """Calibration inputs as a ``Split`` (dummy labels: quantization never reads them)."""
    import torch

    from quantexp.models.base import Split

    if data is None or isinstance(data, Split):
        return data
    return Split.unlabelled((data,) if isinstance(data, torch.Tensor) else tuple(data))


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


class _NoTracking:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _tracking(exp: ExperimentConfig, project_root: Path, run_name: str, tags: dict[str, str]):
    if not exp.tracking.enabled:
        return _NoTracking()
    from quantexp.tracking.callbacks import parent_run_id
    from quantexp.tracking.run_logger import RunLogger
    from quantexp.tracking.store import open_client

    client, experiment_id = open_client(exp.tracking.uri, project_root, exp.tracking.experiment)
    return RunLogger(client, experiment_id, run_name, parent_run_id=parent_run_id(), tags=tags)


__all__ = ["compose", "compose_checked", "execute", "quantize", "register", "run", "validate"]
