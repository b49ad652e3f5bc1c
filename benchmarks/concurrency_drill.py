"""Reliability drill for the MLflow store and the persistent search (figures printed,
never asserted):

1. N run.py processes (default 8) started together on one fresh sqlite MLflow store:
   ``landed k/N`` (exit 0 and the run FINISHED in the store).
2. A mixed-precision search of T trials (default 6) killed with SIGKILL while a trial
   runs, then resumed by rerunning the same command: ``trials lost`` (COMPLETE before
   the kill, gone after), ``duplicated`` (COMPLETE trials whose parameter set repeats
   an earlier one), ``zombie runs`` (MLflow runs still RUNNING), ``repeated run names``,
   and the parent run's n_failed.

    .venv/bin/python benchmarks/concurrency_drill.py [--runs 8] [--trials 6] [--repo PATH]

``--repo`` runs another checkout's code (e.g. /work/main) for a before/after figure.
Everything lives in a temporary folder; one fp32 model is trained first (serially)
into a shared cache that the concurrent runs only read.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TINY = ["model=cnn", "model.n_train=300", "model.n_test=100", "model.epochs=1", "+debug=tiny",
        "eval.bootstrap=100", "tracking.log_model=false"]


def _env(repo: Path, db: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}


def _rows(db: Path, query: str) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []


def concurrent_runs(repo: Path, tmp: Path, n: int) -> None:
    cache = tmp / "cache"
    warm = subprocess.run([sys.executable, str(repo / "run.py"), "method=fp32", *TINY, f"cache_dir={cache}",
                           f"hydra.run.dir={tmp}/warm"], cwd=repo, env=_env(repo, tmp / "warm.db"),
                          capture_output=True, text=True, check=False)
    if warm.returncode != 0:
        sys.exit(f"warm-up run failed:\n{warm.stderr[-2000:]}")
    db = tmp / "concurrent" / "mlflow.db"
    db.parent.mkdir()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(repo / "run.py"), "method=fp32", *TINY,
                               "compare_fp32=false", f"cache_dir={cache}", f"hydra.run.dir={tmp}/run{i}"],
                              cwd=repo, env=_env(repo, db), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    finished = _rows(db, "select count(*) from runs where status = 'FINISHED'")
    ok = sum(p.returncode == 0 for p in procs)
    landed = min(ok, finished[0][0] if finished else 0)
    print(f"concurrent run.py on a fresh store: landed {landed}/{n} "
          f"(exit 0: {ok}, FINISHED in store: {finished[0][0] if finished else 0}; {wall:.0f} s wall)")
    for err in errors:
        last = [line for line in err.splitlines() if "Error" in line][-1:]
        if last:
            print(f"  failure: {last[0][:160]}")


def search_cmd(repo: Path, tmp: Path, sweep: str, trials: int) -> list[str]:
    return [sys.executable, str(repo / "run.py"), "-m", "+search=mixed_precision", *TINY,
            "method.calibration.size=32", "method.hessian_samples=0", f"search.n_trials={trials}",
            f"cache_dir={tmp}/cache", f"hydra.sweep.dir={tmp}/{sweep}",
            f"hydra.sweeper.storage=sqlite:///{tmp}/optuna/study.db"]


def kill_and_resume(repo: Path, tmp: Path, trials: int) -> None:
    study_db, mlflow_db = tmp / "optuna" / "study.db", tmp / "search_mlflow.db"
    env = _env(repo, mlflow_db)
    proc = subprocess.Popen(search_cmd(repo, tmp, "sweep1", trials), cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = max(trials // 3, 1)  # kill during trial `target` (0-based)

    def states() -> list[str]:
        return [r[0] for r in _rows(study_db, "select state from trials order by number")]

    while not (states().count("COMPLETE") >= target and states()[-1:] == ["RUNNING"]
               and _rows(mlflow_db, "select 1 from runs where status='RUNNING' and name like 'cnn/%'")):
        if proc.poll() is not None:
            sys.exit(f"search ended before the kill:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    first_err = proc.communicate()[1]
    before = {r[0] for r in _rows(study_db, "select number from trials where state='COMPLETE'")}
    resumed = subprocess.run(search_cmd(repo, tmp, "sweep2", trials), cwd=repo, env=env,
                             capture_output=True, text=True, check=False)
    names = [r[0] for r in _rows(study_db, "select study_name from studies")]
    complete = _rows(study_db, "select number from trials where state='COMPLETE'")
    after = {r[0] for r in complete}
    params = collections.defaultdict(list)
    for number, name, value in _rows(study_db, "select t.number, p.param_name, p.param_value from trials t "
                                               "join trial_params p on p.trial_id = t.trial_id "
                                               "where t.state='COMPLETE'"):
        params[number].append((name, value))
    sets = [tuple(sorted(v)) for _, v in sorted(params.items())]
    duplicated = len(sets) - len(set(sets))
    zombies = _rows(mlflow_db, "select name from runs where status = 'RUNNING' and name like 'cnn/%'")
    run_names = [r[0] for r in _rows(mlflow_db, "select name from runs where name like 'cnn/%'")]
    repeated = len(run_names) - len(set(run_names))
    n_failed = _rows(mlflow_db, "select m.value from metrics m join runs r on r.run_uuid = m.run_uuid "
                                "where m.key = 'n_failed' and r.name like 'study%'")
    killed = _rows(mlflow_db, "select count(*) from runs where status = 'KILLED'")
    print(f"search kill -9 + resume ({trials} trials, killed during trial {target}; "
          f"first run's stderr mentions 'unable to open database file': "
          f"{'unable to open database file' in first_err}; resume exit {resumed.returncode}):")
    print(f"  studies in storage {len(names)}; COMPLETE trials {len(after)}/{trials}; "
          f"trials lost {len(before - after)}; duplicated {duplicated}; zombie runs {len(zombies)}; "
          f"KILLED runs {killed[0][0] if killed else 0}; parent n_failed "
          f"{n_failed[-1][0] if n_failed else 'n/a'}; repeated run names {repeated}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repo", type=Path, default=HERE)
    args = parser.parse_args()
    repo = args.repo.resolve()
    with tempfile.TemporaryDirectory(prefix="quantexp-drill-") as tmp:
        print(f"code: {repo}")
        concurrent_runs(repo, Path(tmp), args.runs)
        kill_and_resume(repo, Path(tmp), args.trials)


if __name__ == "__main__":
    main()
