"""`python run.py --help`, `quantexp --help` and `--cfg hydra --resolve`, run as a user
runs them (a subprocess in the project root, MLflow and outputs under the test's tmp)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
QUANTEXP = "from quantexp.cli import main; main()"


def run(args: list[str], tmp: Path, *, script: list[str] | None = None,
        python: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    return subprocess.run([sys.executable, *python, *(script or ["run.py"]), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def user_groups() -> dict[str, list[Path]]:
    """{group: option files} of every folder of conf/ except hydra/, read from disk."""
    out = {}
    for d in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = d.relative_to(CONF).as_posix()
        if group.split("/")[0] != "hydra" and list(d.glob("*.yaml")):
            out[group] = sorted(d.glob("*.yaml"))
    return out


def header_words(path: Path) -> str:
    """The yaml's leading comment block as one line of words (directives left out)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line[1:].strip().startswith("@package"):
            lines.append(line[1:].strip())
    return " ".join(" ".join(lines).split())


def test_help_lists_user_groups_with_a_description_per_option(tmp_path):
    proc = run(["--help"], tmp_path, python=["-X", "importtime"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "schema/" not in out
    groups = user_groups()
    assert {"model", "method", "precision", "hardware", "exporter", "search"} <= set(groups)
    section = out.split("== Config groups ==", 1)[1].split("== Defaults ==", 1)[0]
    for group, files in groups.items():
        options = [p.stem for p in files]
        head = f"\n{group}: {', '.join(options)}\n"
        assert head in section, group
        block = section.split(head, 1)[1].split("\n\n", 1)[0]  # this group's option lines
        assert len(block.splitlines()) == len(files), block
        for path in files:
            match = re.search(rf"^  [* ] {re.escape(path.stem)} +(\S.*)$", block, re.MULTILINE)
            assert match, f"{group}={path.stem} is not listed with a description"
            description = match.group(1).removesuffix("...")
            # The description is the start of the yaml's own header comment.
            assert header_words(path).startswith(description), (path, description)
    bnb_nf4 = re.search(r"^  [* ] bnb_nf4 .*$", section, re.MULTILINE).group(0)
    assert "QLoRA" in bnb_nf4 and "Linear4bit" in bnb_nf4
    # The defaults of conf/config.yaml are marked.
    assert re.search(r"^  \* cnn ", section, re.MULTILINE)
    assert re.search(r"^  \* ptq_static ", section, re.MULTILINE)
    assert not re.search(r"^  \* bnb_nf4 ", section, re.MULTILINE)
    # How to see a method's own keys, and how to validate without running.
    assert "python run.py --cfg job method=bnb_int8 --package method" in out
    assert "python run.py --check" in out and "--dry-run" in out
    # --help stays torch-free (and so as fast as Hydra itself).
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "omegaconf" in imported
    assert not imported & {"torch", "numpy", "mlflow", "sklearn"}


def test_the_package_hint_of_help_prints_the_methods_keys(tmp_path):
    proc = run(["--cfg", "job", "method=bnb_int8", "--package", "method"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("# @package method\n")
    assert "name: bnb_int8" in proc.stdout and "threshold:" in proc.stdout


def test_quantexp_command_lists_its_subcommands(tmp_path):
    proc = run(["--help"], tmp_path, script=["-c", QUANTEXP])
    assert proc.returncode == 0, proc.stderr
    commands = re.findall(r"^  (\w+) +(\S.*)$", proc.stdout, re.MULTILINE)
    assert [name for name, _ in commands] == ["run", "check", "report", "compare", "baseline", "history", "analyze", "recommend"]


def test_quantexp_refuses_an_unknown_subcommand_in_one_line(tmp_path):
    proc = run(["frobnicate", "model=cnn"], tmp_path, script=["-c", QUANTEXP])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown command 'frobnicate'; valid commands: run, check, report, compare, baseline, history, analyze, recommend"]


def test_cfg_hydra_resolve(tmp_path):
    """hydra.run.dir (outputs/<date>/<time>_${model.name}_${method.name}_<pid>) refers to the job
    config, which Hydra's own --cfg hydra drops before resolving."""
    proc = run(["--cfg", "hydra", "--resolve"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^    dir: outputs/\S+_cnn_ptq_static_\d+$", proc.stdout, re.MULTILINE)
    assert "${" not in proc.stdout
    # The template of --help is not part of --cfg hydra.
    assert "config_groups" not in proc.stdout


def test_cfg_hydra_resolve_with_the_precision_search(tmp_path):
    """hydra.sweeper.n_trials is a resolver over the study storage, which uses
    ${hydra:runtime.cwd}: the storage is moved under tmp so nothing lands in the project."""
    storage = f"sqlite:///{tmp_path}/optuna/study.db"
    proc = run(["--cfg", "hydra", "--resolve", "+search=mixed_precision", f"hydra.sweeper.storage={storage}",
                "search.n_trials=7"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "n_trials: 7\n" in proc.stdout  # a new study still needs every trial
    # keyed by a hash of what defines the search (quantexp/search/study.py)
    assert re.search(r"^    study_name: mixed_cnn_[0-9a-f]{10}$", proc.stdout, re.MULTILINE)
    assert re.search(r"^    dir: outputs/\S+_cnn_mixed_\d+$", proc.stdout, re.MULTILINE)
    assert "${" not in proc.stdout
