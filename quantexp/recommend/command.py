"""``quantexp recommend``: which method to apply to this model for this target, under
these constraints - ranked, with predictions from measured history, costs and reasons;
``verify=true`` runs the top ones for real and reports the measured best.

    quantexp recommend model=cnn
    quantexp recommend model=minilm target.exporter=onnx constraints.max_accuracy_drop=0.5
    quantexp recommend model=cnn constraints.max_size_mb=0.2 verify=true top_k=2

Settings: target.hardware (cpu), target.exporter (none), constraints.max_accuracy_drop
(1.0 points), constraints.max_latency_ms, constraints.max_size_mb, verify (false), top_k
(3), history.experiment (quantexp), history.filter; anything else is a run.py override
selecting the model (model=..., model.*=..., seed=...). Exit code: 0 a recommendation,
3 no runnable method meets the constraints (the closest is named), 2 bad input.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from quantexp.recommend.rank import Constraints

EXIT_BAD_INPUT, EXIT_NONE_MEETS = 2, 3


@dataclass
class Settings:
    hardware: str = "cpu"
    exporter: str = "none"
    constraints: Constraints = field(default_factory=Constraints)
    verify: bool = False
    top_k: int = 3
    experiment: str = "quantexp"
    history_filter: str = ""
    overrides: list[str] = field(default_factory=list)


def parse(argv: list[str]) -> Settings:
    from quantexp.config import ConfigError

    s = Settings()
    numbers = {"constraints.max_accuracy_drop", "constraints.max_latency_ms", "constraints.max_size_mb"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"{arg!r} is not KEY=VALUE (quantexp recommend --help)")
        if key in numbers:
            try:
                number = None if value in ("null", "none", "") else float(value)
            except ValueError as exc:
                raise ConfigError(f"{key} must be a number, got {value!r}") from exc
            if number is not None and number < 0:
                raise ConfigError(f"{key} must be >= 0, got {number}")
            setattr(s.constraints, key.split(".", 1)[1], number)
        elif key == "target.hardware":
            s.hardware = value
        elif key == "target.exporter":
            s.exporter = value
        elif key == "verify":
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"verify must be true or false, got {value!r}")
            s.verify = value.lower() == "true"
        elif key == "top_k":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"top_k must be a whole number >= 1, got {value!r}")
            s.top_k = int(value)
        elif key == "history.experiment":
            s.experiment = value
        elif key == "history.filter":
            s.history_filter = value
        elif key.startswith(("target.", "constraints.", "history.")):
            raise ConfigError(f"unknown setting {key!r}; see quantexp recommend --help")
        else:
            s.overrides.append(arg)
    return s


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    from rich.console import Console

    from quantexp.config import ConfigError
    from quantexp.hardware.probe import HardwareUnavailable
    from quantexp.recommend.advise import advise, print_advice, verify

    try:
        settings = parse(argv)
        advice = advise(settings)
    except (ConfigError, HardwareUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    console = Console(width=None if sys.stdout.isatty() else 200)
    print_advice(advice, console)
    out = (Path("reports") / "recommend" / advice.model).resolve()
    advice.write(out / "recommendation.json")
    if not advice.ranked or not advice.ranked[0].meets:
        closest = advice.ranked[0] if advice.ranked else None
        print(f"error: no runnable method meets {settings.constraints.describe()} on {settings.exporter}/"
              f"{settings.hardware}" + (f"; closest: {closest.label}, predicted drop {closest.prediction.drop.describe()}"
                                        f" pts ({'; '.join(closest.why)})" if closest else ""), file=sys.stderr)
        return EXIT_NONE_MEETS
    if settings.verify:
        verify(advice, settings, out, console)
    console.print(f"recommendation: {out / 'recommendation.json'}")
    return 0


__all__ = ["EXIT_BAD_INPUT", "EXIT_NONE_MEETS", "Settings", "main", "parse"]
