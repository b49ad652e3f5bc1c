"""``python run.py --check <overrides>``: everything a run would refuse, without running it.

``check(cfg)`` goes through what a run does before its first costly step and stops
there: the schema, the compatibility check and the hardware (``quantexp.api.validate``),
the run's pre-flight (``quantexp.preflight``: cache dir writable, tracking store
readable, model directory, calibration size, assignment, engine, ISA, deployment
profile), the host probe, the model's data and its architecture (built by the family
builder, untrained: never trained, never read from or written to the fp32 cache), the
method's own model check (``check_model``), the exporter's construction (its runtime
and providers) and the calibration draw. Nothing is trained, no MLflow run is opened
and nothing is written. The report lists the choices, the values the checks resolved
and the model's assignable layers with the dtypes each supports (what
``method.assignment`` of ``method=mixed`` accepts).

Refusals are the run's own: a ``ConfigError`` or ``HardwareUnavailable`` (one line,
exit code 2 from the command line).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quantexp.api import run_name_of, validate
from quantexp.config import ExperimentConfig
from quantexp.config.registry import GROUPS


@dataclass
class Layer:
    name: str
    kind: str  # module class name: Conv2d, Linear, LSTM, ...
    dtypes: tuple[str, ...]  # what method.assignment may give it on this host
    assigned: str | None = None  # what method=mixed (manual) would run it in


@dataclass
class CheckReport:
    exp: ExperimentConfig
    # "group.field" -> value the compatibility rules set (e.g. exporter.quantization).
    resolved: dict[str, Any] = field(default_factory=dict)
    # What the host probe and the model/data build found.
    host: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    calibration: int | None = None
    layers: list[Layer] = field(default_factory=list)

    def format(self) -> str:
        exp = self.exp
        prec = exp.precision
        rows = [
            ("model", exp.model.name, f"family {_plain(exp.model.family)}, dataset {exp.model.dataset}"
             + (f" ({self.model['n_train']} train / {self.model['n_test']} test items, "
                f"{self.model['num_classes']} classes, {self.model['parameters']:,} parameters)"
                if self.model else "")),
            ("method", exp.method.name,
             f"calibration {self.calibration} items" if self.calibration is not None else "no calibration"),
            ("precision", prec.name, f"weights {_plain(prec.weight_dtype)}, activations "
             f"{_plain(prec.activation_dtype)}, {_plain(prec.granularity)}"),
            ("hardware", exp.hardware.name, ", ".join(f"{k} {v}" for k, v in self.host.items())),
            ("exporter", exp.exporter.name, ""),
        ]
        out = [f"check: {run_name_of(exp)} is valid (nothing trained, no MLflow run opened, nothing written)"]
        out += [f"  {group:<10} {name:<12} {detail}".rstrip() for group, name, detail in rows]
        if self.resolved:
            out.append("  resolved   " + " ".join(f"{k}={_plain(v)}" for k, v in self.resolved.items()))
        tracking = exp.tracking
        out.append(f"  tracking   {'MLflow experiment ' + tracking.experiment if tracking.enabled else 'off'}")
        if self.layers:
            assigned = any(layer.assigned for layer in self.layers)
            out += ["", f"assignable layers of {exp.model.name} ({len(self.layers)}; "
                    "method=mixed '+method.assignment={layer: dtype, ...}' takes these):"]
            name_w = max(len(layer.name) for layer in self.layers)
            kind_w = max(len(layer.kind) for layer in self.layers)
            for layer in self.layers:
                line = f"  {layer.name:<{name_w}}  {layer.kind:<{kind_w}}  {' '.join(layer.dtypes)}"
                if assigned:
                    line = f"{line:<{name_w + kind_w + 30}} -> {layer.assigned}"
                out.append(line)
        return "\n".join(out)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _resolved(cfg: DictConfig, exp: ExperimentConfig) -> dict[str, Any]:
    """Fields of the five groups whose validated value differs from the composed one."""
    composed = OmegaConf.to_object(cfg)  # validate() already accepted it
    out: dict[str, Any] = {}
    for group in GROUPS:
        before, after = getattr(composed, group), getattr(exp, group)
        for f in dataclasses.fields(after):
            if getattr(before, f.name, None) != getattr(after, f.name):
                out[f"{group}.{f.name}"] = getattr(after, f.name)
    return out


def check(cfg: DictConfig, project_root: Path | None = None) -> CheckReport:
    """Validate the composed config ``cfg`` as far as possible without training;
    ``project_root`` (default: the working directory) is what relative paths in it
    (cache_dir, the default MLflow store) are relative to, as in a run."""
    from quantexp.preflight import preflight

    exp = validate(cfg)
    preflight(exp, project_root or Path.cwd())  # what a run refuses before its model loads
    # torch and the method/exporter registries only now: input refused above is refused
    # in well under a second
    from quantexp.exporters import get_exporter
    from quantexp.hardware import probe_host
    from quantexp.methods import get_method
    from quantexp.models.base import ModelBundle
    from quantexp.models.zoo import family_builder, family_name
    from quantexp.quant.calibration import draw_calibration
    from quantexp.quant.mixed_layers import assignable_layers, full_assignment, supported_dtypes

    report = CheckReport(exp, resolved=_resolved(cfg, exp))
    host = probe_host(exp.hardware)
    report.host = {"device": host.device, "threads": host.threads, "quantized engine": host.quantized_engine}

    builder = family_builder(exp.model)
    train, test, raw = builder.data()
    module = builder.build(raw.num_classes).eval()  # random weights: the architecture only
    bundle = ModelBundle(model=module, name=exp.model.name, family=family_name(exp.model), train=train,
                         test=test, num_classes=raw.num_classes, input_names=list(builder.input_names),
                         load_time_s=0.0)
    report.model = {"n_train": len(train), "n_test": len(test), "num_classes": raw.num_classes,
                    "parameters": bundle.num_parameters}

    method_cls = get_method(exp.method.name)
    method = method_cls(exp.method, exp.precision, host)
    method.log = None
    method.check_model(bundle)
    get_exporter(exp.exporter.name)(exp.exporter, host)
    if method_cls.needs_calibration:
        cal = exp.method.calibration
        report.calibration = len(draw_calibration(train, test, cal.size, exp.seed if cal.seed is None else cal.seed))

    layers = assignable_layers(module)
    assignment: dict[str, str] = {}
    if _plain(getattr(exp.method, "strategy", None)) == "manual" and hasattr(exp.method, "assignment"):
        assignment = full_assignment(layers, exp.method.assignment, exp.method.default)
    report.layers = [Layer(name, type(m).__name__, supported_dtypes(m), assignment.get(name))
                     for name, m in layers.items()]
    return report


__all__ = ["CheckReport", "Layer", "check"]
