"""The command line: ``python run.py ...`` and the ``quantexp`` command.

``quantexp run <overrides>`` is ``python run.py <overrides>``: the same Hydra app
(``hydra_app``), whose job validates, runs the pipeline under an MLflow run,
writes results.json, prints the summary and returns the objective.

``--check`` (alias ``--dry-run``; ``quantexp check``) stops after validation: the job
prints what ``quantexp.check`` found and exits 0 without training, without an MLflow
run and without outputs (Hydra's own run directory goes to a temporary folder that
is removed afterwards).

Bad input (a ConfigError or an unavailable hardware target) is refused before
any model loads: one line on stderr and exit code 2 in a single run; in a
multirun it is raised so that only that job fails and the sweep goes on.

Each job of a multirun runs through ``quantexp.launch.job.run_sweep_job``: its thread
budget under a parallel launcher, then ``run_one`` in a fresh process.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from quantexp.api import CONF_DIR, execute, register, run_name_of, validate
from quantexp.config import ConfigError
from quantexp.hardware.probe import HardwareUnavailable
from quantexp.help import register_resolvers as register_help

EXIT_BAD_CONFIG = 2
EXIT_GATE_FAILED = 4  # eval.gate_fails_run=true and the quality gate FAILED
REFERENCE_CACHE = ".fp32_reference"  # inside the sweep folder
CHECK_FLAGS = ("--check", "--dry-run")
COMMANDS = {
    "run": "run one experiment, or a sweep with -m (what `python run.py` does)",
    "check": "validate a configuration without running it (`python run.py --check`)",
    "report": "compare runs: table, Pareto fronts, report.html (`quantexp report --help`)",
    "compare": "did a candidate run regress against a baseline? (`quantexp compare --help`)",
    "baseline": "pin the baseline run `compare --baseline @name` uses (`quantexp baseline --help`)",
    "history": "one configuration over time: accuracy and latency per run/commit (`quantexp history --help`)",
    "analyze": "what a model is made of, its quantization risks, what can run on it (`quantexp analyze --help`)",
    "recommend": "which method to apply for a target under constraints (`quantexp recommend --help`)",
}


class _Mode:
    check: bool = False  # set by run_main when argv carried --check / --dry-run


MODE = _Mode()

register()
register_help()
# Hydra 1.4rc3 warns on every run that hydra.callbacks targets are instantiated
# without an execution whitelist; the only targets are our own callbacks.
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_='quantexp\.")


def _run_log_only() -> logging.Logger | None:
    """Send library warnings (``warnings.warn``) to this job's run.log instead of the
    terminal, and return a logger that writes to run.log only (the summary goes there
    too). Hydra sets up a file handler per job, so this is redone for every job."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return None
    logging.captureWarnings(True)
    for name in ("py.warnings", "quantexp.summary"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = list(files), False
        logger.setLevel(logging.INFO)
    return logging.getLogger("quantexp.summary")


def run_job(cfg: DictConfig) -> float | None:
    if not MODE.check and HydraConfig.get().mode == RunMode.MULTIRUN:
        # each job of a sweep in a fresh process, with its thread budget (quantexp.launch)
        from quantexp.launch.job import run_sweep_job

        return run_sweep_job(run_one, cfg)
    return run_one(cfg)


def run_one(cfg: DictConfig, placement: dict | None = None) -> float | None:
    """One job: validate, run the pipeline under an MLflow run, return the objective
    (``placement``: where a sweep put it, recorded in results.json and MLflow)."""
    hc = HydraConfig.get()
    run_log = _run_log_only()
    output_dir = Path(hc.runtime.output_dir)
    project_root = Path(hc.runtime.cwd)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        if MODE.check:
            from quantexp.check import check

            print(check(cfg, project_root).format())
            return None
        exp = validate(cfg)
        run_name = run_name_of(exp)
        reference_cache = None
        if multirun:
            run_name += f" #{hc.job.num}"
            # the jobs of a sweep share one fp32 reference per model/exporter/target
            reference_cache = project_root / hc.sweep.dir / REFERENCE_CACHE
        # User errors found while running (a model path that does not exist, a
        # calibration set larger than the data) end the same way; the MLflow run,
        # if one was opened, is already marked FAILED with its traceback.
        results = execute(exp, cfg, output_dir, project_root, run_name, reference_cache, placement=placement)
    except (ConfigError, HardwareUnavailable) as exc:
        if multirun:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    if run_log is not None:
        from quantexp.report.summary import summary_text

        run_log.info("summary\n%s", summary_text(results))
    if exp.eval.gate_fails_run and results["gate"]["passed"] is False:
        from quantexp.tracking import EXIT

        # the run is complete and recorded; the exit code tells CI the gate failed
        EXIT.code = EXIT_GATE_FAILED
    return results["objective"]


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig):
    return run_job(cfg)


def run_main(argv: list[str] | None = None) -> None:
    """``python run.py <argv>``: the Hydra app, then the exit code a search set."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = sys.argv[1:]
    check_dir = None
    MODE.check = False
    if any(a in CHECK_FLAGS for a in args):
        args = [a for a in args if a not in CHECK_FLAGS]
        if any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args):
            # A sweep opens its MLflow parent run and sweep folder before any job starts.
            print("error: --check validates one configuration; drop -m/--multirun", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)
        MODE.check = True
        # Hydra always creates the run directory (.hydra/, run.log): a throwaway one,
        # last on the line so that it wins over a hydra.run.dir given before it.
        check_dir = tempfile.mkdtemp(prefix="quantexp-check-")
        args.append(f"hydra.run.dir={check_dir}")
    if _shows_resolved_hydra_cfg(args):
        _resolve_hydra_cfg_in_full_config()
    _refuse_what_hydra_cannot_compose(args)
    sys.argv = [sys.argv[0], *args]
    try:
        status = hydra_app()
    finally:
        if check_dir is not None:
            shutil.rmtree(check_dir, ignore_errors=True)
    # A precision search whose budget no trial meets ends non-zero (quantexp.search).
    from quantexp.search import EXIT

    sys.exit(status or EXIT.code)


def _refuse_what_hydra_cannot_compose(args: list[str]) -> None:
    """A single run whose overrides Hydra cannot compose (an unknown option, a value of
    the wrong type, a bad override) ends with one line and exit code 2, not Hydra's
    multi-line report and exit 1 (``api.compose_checked``). Command lines with flags
    (-m, --help, --cfg, ...) go to Hydra untouched: a sweep's jobs are refused one by
    one and the sweep goes on."""
    if any(a.startswith("-") for a in args):
        return
    from quantexp.api import compose_checked

    try:
        compose_checked(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)


def _shows_resolved_hydra_cfg(args: list[str]) -> bool:
    """``--cfg hydra --resolve`` (also ``-c hydra``, ``--cfg=hydra``)."""
    if "--resolve" not in args:
        return False
    pairs = zip(args, [*args[1:], ""])
    return any((a in ("--cfg", "-c") and b == "hydra") or a == "--cfg=hydra" for a, b in pairs)


def _resolve_hydra_cfg_in_full_config() -> None:
    """Make ``--cfg hydra --resolve`` resolve the hydra node inside the whole config.

    Hydra 1.4 drops every other key before resolving (``get_sanitized_hydra_cfg``), so
    ``hydra.run.dir: outputs/.../${model.name}_${method.name}`` fails with
    "Interpolation key 'model.name' not found". The replacement resolves the hydra
    node first (its help templates, which --cfg hydra does not print, excepted), then
    sanitizes as Hydra does. Left alone if this Hydra has no such method."""
    import copy

    from hydra._internal import hydra as internal
    from omegaconf import MISSING, OmegaConf, flag_override
    from omegaconf.errors import InterpolationToMissingValueError

    original = getattr(internal.Hydra, "get_sanitized_hydra_cfg", None)
    resolve_for_output = getattr(internal, "_resolve_for_cfg_output", None)
    if original is None or resolve_for_output is None or getattr(original, "_quantexp_resolving", False):
        return

    def sanitized(src_cfg: DictConfig) -> DictConfig:
        cfg = copy.deepcopy(src_cfg)
        with flag_override(cfg, ["struct", "readonly"], [False, False]):
            for key in list(cfg.hydra.keys()):
                if key in ("help", "hydra_help"):
                    continue
                node = cfg.hydra._get_node(key)
                if OmegaConf.is_config(node):
                    # Hydra's own --resolve: a value that needs a missing one (hydra.job.num,
                    # set only in a multirun) is printed as ???.
                    resolve_for_output(node)
                elif not OmegaConf.is_missing(cfg.hydra, key):
                    try:
                        cfg.hydra[key] = cfg.hydra[key]
                    except InterpolationToMissingValueError:
                        cfg.hydra[key] = MISSING
        return original(cfg)

    sanitized._quantexp_resolving = True
    internal.Hydra.get_sanitized_hydra_cfg = staticmethod(sanitized)


def main(argv: list[str] | None = None) -> None:
    """The ``quantexp`` console command: ``quantexp <command> [args]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: quantexp <command> [args]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:10s} {text}")
        print("\n`quantexp run --help` lists the config groups and their options.")
        sys.exit(0 if argv else EXIT_BAD_CONFIG)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    if command == "report":
        from quantexp.report.command import main as report

        sys.exit(report(rest))
    if command in ("compare", "baseline"):
        from quantexp.regression import command as regression

        sys.exit((regression.compare_main if command == "compare" else regression.baseline_main)(rest))
    if command == "recommend":
        from quantexp.recommend.command import main as recommend

        sys.exit(recommend(rest))
    if command == "analyze":
        from quantexp.architecture.command import main as analyze

        sys.exit(analyze(rest))
    if command == "history":
        from quantexp.regression.history import main as history

        sys.exit(history(rest))
    if command == "check":
        command, rest = "run", ["--check", *rest]
    sys.argv = [f"quantexp {command}", *rest]
    run_main()


__all__ = ["CHECK_FLAGS", "EXIT_BAD_CONFIG", "EXIT_GATE_FAILED", "MODE", "hydra_app", "main", "run_job", "run_main",
           "run_one"]
