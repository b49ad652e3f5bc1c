"""Scale-out figures (printed, never asserted):

1. sweep: one 12-job sweep (cnn, lstm x fp32, ptq_static, ptq_dynamic x bench batch 4, 16)
   run three ways on a warm fp32 cache: Hydra's basic launcher (serial), ``hydra/launcher=joblib``
   with 2 workers, ``hydra/launcher=ray`` on a local Ray cluster started beforehand
   (``ray start --head``; its start-up is printed apart). Wall time of each, jobs landed
   (results.json + FINISHED MLflow run) / lost, and whether every job's accuracy is the
   same in all three.
2. study: 2 run.py processes started together on one Optuna study of 16 trials
   (``search.n_trials=16``): trials, duplicates (a trial number run by more than one
   job, or with more than one MLflow run), lost (trials not COMPLETE/FAIL, or missing
   below the total), trials per process, repeated parameter sets (informational).
   PostgreSQL when Debian's postgresql is installed, else Optuna's journal file.
3. server: 8 run.py started together against an ``mlflow server`` on a free port, over
   sqlite and over PostgreSQL: landed k/8.

    .venv/bin/python benchmarks/scale_out.py [--only sweep,study,server]

Wall times are those of this host at that moment: on a shared machine they are
measured under load and are not speed figures (the script says so when the load
average exceeds the cores). Everything lives in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantexp.tracking.server import MlflowServer, free_port  # noqa: E402

TINY = ["model.n_train=1000", "model.n_test=500", "model.epochs=1", "+debug=tiny", "eval.bootstrap=200",
        "tracking.log_model=false"]
SWEEP = ["model=cnn,lstm", "method=fp32,ptq_static,ptq_dynamic", "bench.batch_size=4,16"]
SEARCH = ["+search=mixed_precision", "model=cnn", "model.n_train=300", "model.epochs=1", "+debug=tiny",
          "eval.bootstrap=100", "method.calibration.size=32", "method.hessian_samples=0", "tracking.log_model=false"]


def _env(tracking_uri: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking_uri, **extra}


def _run_py(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load_note() -> str:
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    return (f"measured under load (load average {load:.1f} on {cores} cores): not speed figures"
            if load > cores * 0.75 else f"load average {load:.1f} on {cores} cores")


def _finished(client, experiment: str = "quantexp") -> list:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)


# ----------------------------------------------------------------------------- sweep
class LocalRay:
    """``ray start --head --block`` in a session of its own (stopped by killing that session)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.temp = Path("/tmp") / f"qx-ray-{self.port}"
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                      "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=2",
                                      "--include-dashboard=false", f"--temp-dir={self.temp}",
                                      "--disable-usage-stats"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("ray start failed")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=300)
        shutil.rmtree(self.temp, ignore_errors=True)


def sweep(tmp: Path) -> None:
    from mlflow.tracking import MlflowClient

    cache = tmp / "cache"
    for model in ("cnn", "lstm"):  # train each fp32 model once: the sweeps time the jobs
        warm = subprocess.run([sys.executable, str(ROOT / "run.py"), f"model={model}", "method=fp32", *TINY,
                               f"cache_dir={cache}", f"hydra.run.dir={tmp}/warm-{model}"], cwd=ROOT,
                              env=_env(f"sqlite:///{tmp}/warm.db"), capture_output=True, text=True, check=False)
        if warm.returncode != 0:
            sys.exit(f"warm-up failed:\n{warm.stderr[-2000:]}")
    t0 = time.perf_counter()
    ray = LocalRay(tmp)
    ray_start = time.perf_counter() - t0
    modes = {"serial (basic launcher)": [],
             "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "ray, local cluster": ["hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{ray.port}"]}
    accuracy: dict[str, dict[str, float]] = {}
    rows = []
    try:
        for i, (name, launcher) in enumerate(modes.items()):
            db, out = tmp / f"sweep{i}.db", tmp / f"sweep{i}"
            t0 = time.perf_counter()
            proc = _run_py(["-m", *SWEEP, *launcher, *TINY, f"cache_dir={cache}", f"hydra.sweep.dir={out}"],
                           _env(f"sqlite:///{db}", **(ray.env if "ray" in name else {})))
            _, err = proc.communicate()
            wall = time.perf_counter() - t0
            results = {p.parent.name.split("_", 1)[1] + f"#{p.parent.name.split('_', 1)[0]}":
                       json.loads(p.read_text()) for p in out.glob("*/results.json")}
            accuracy[name] = {k.rsplit("#", 1)[1]: r["candidates"][r["method"]["name"]]["accuracy"]
                              for k, r in results.items()}
            runs = [r for r in _finished(MlflowClient(f"sqlite:///{db}")) if r.info.run_name.startswith(("cnn/", "lstm/"))]
            landed = sum(r.info.status == "FINISHED" for r in runs)
            rows.append((name, wall, len(results), landed, proc.returncode))
            if proc.returncode != 0:
                print(f"  {name}: exit {proc.returncode}\n{err[-1500:]}")
    finally:
        ray.stop()
    print(f"\n1. a 12-job sweep ({' '.join(SWEEP)}), warm fp32 cache; {_load_note()}")
    print(f"   {'launcher':26s} {'wall s':>8s} {'results':>8s} {'MLflow FINISHED':>16s} {'lost':>5s}")
    for name, wall, n_results, landed, _ in rows:
        print(f"   {name:26s} {wall:8.1f} {n_results:>5d}/12 {landed:>13d}/12 {12 - min(n_results, landed):>5d}")
    print(f"   (Ray head start-up until its port answered, not in its wall time: {ray_start:.1f} s)")
    reference = next(iter(accuracy.values()))
    same = all(acc == reference for acc in accuracy.values()) and len(reference) == 12
    print(f"   accuracies identical in all three: {'yes' if same else 'NO'}"
          + ("" if same else f" {json.dumps(accuracy, indent=1)}"))


# ----------------------------------------------------------------------------- study
def study(tmp: Path, cluster) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    from quantexp.search.shared import open_storage

    storage = cluster.database("optuna_bench") if cluster else f"journal:///{tmp}/optuna/study.log"
    db = tmp / "study.db"
    t0 = time.perf_counter()
    procs = [_run_py(["-m", *SEARCH, f"cache_dir={tmp}/study-cache", f"hydra.sweep.dir={tmp}/worker{i}",
                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=bench", "search.n_trials=16"],
                     _env(f"sqlite:///{db}")) for i in range(2)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name="bench", storage=open_storage(storage)).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    runs = [r for r in _finished(MlflowClient(f"sqlite:///{db}")) if "mlflow.parentRunId" in r.data.tags]
    per_trial: dict[int, int] = {}
    for r in runs:
        n = int(r.info.run_name.rsplit("#", 1)[1])
        per_trial[n] = per_trial.get(n, 0) + 1
    duplicates = (len(numbers) - len(set(numbers))) + sum(c - 1 for c in per_trial.values() if c > 1)
    done = [t for t in trials if t.state.name in ("COMPLETE", "FAIL")]
    lost = (len(trials) - len(done)) + max(0, 16 - len(trials))
    owners: dict[int, int] = {}
    for t in trials:
        pid = json.loads(t.user_attrs.get("quantexp.owner", "{}")).get("pid", 0)
        owners[pid] = owners.get(pid, 0) + 1
    params = [tuple(sorted(t.params.items())) for t in trials]
    print(f"\n2. 2 processes on one study of 16 trials ({'PostgreSQL' if cluster else 'journal file'}); "
          f"exit codes {codes}; wall {wall:.0f} s; {_load_note()}")
    print(f"   trials {len(trials)} ({sum(t.state.name == 'COMPLETE' for t in trials)} COMPLETE), duplicates "
          f"{duplicates}, lost {lost}; trials per process {sorted(owners.values())}; MLflow child runs "
          f"{len(runs)}; repeated parameter sets {len(params) - len(set(params))} (the sampler's own choice)")


# ----------------------------------------------------------------------------- server
def server(tmp: Path, cluster) -> None:
    from mlflow.tracking import MlflowClient

    cache = tmp / "server-cache"
    warm = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=cnn", "method=fp32", *TINY,
                           f"cache_dir={cache}", f"hydra.run.dir={tmp}/server-warm"], cwd=ROOT,
                          env=_env(f"sqlite:///{tmp}/warm.db"), capture_output=True, text=True, check=False)
    if warm.returncode != 0:
        sys.exit(f"warm-up failed:\n{warm.stderr[-2000:]}")
    backends = {"sqlite": f"sqlite:///{tmp}/server-sqlite/mlflow.db"}
    if cluster:
        backends["PostgreSQL"] = cluster.database("mlflow_bench")
    print(f"\n3. 8 run.py started together against an mlflow server; {_load_note()}")
    for name, backend in backends.items():
        with MlflowServer(backend, tmp / f"server-{name}" / "artifacts", workers=2) as srv:
            t0 = time.perf_counter()
            procs = [_run_py(["model=cnn", "method=ptq_static", *TINY, f"cache_dir={cache}",
                              f"hydra.run.dir={tmp}/server-{name}/run{i}", f"tracking.uri={srv.uri}"],
                             _env(srv.uri)) for i in range(8)]
            outs = [p.communicate() for p in procs]
            codes = [p.returncode for p in procs]
            wall = time.perf_counter() - t0
            for p, (_, err) in zip(procs, outs):
                if p.returncode != 0:
                    print(f"   a run exited {p.returncode}:\n{err[-2500:]}")
            runs = _finished(MlflowClient(srv.uri))
            landed = sum(r.info.status == "FINISHED" for r in runs)
        print(f"   {name:10s} backend: landed {landed}/8 (exit 0: {codes.count(0)}/8), wall {wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="sweep,study,server")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    cluster = None
    try:
        from quantexp.tracking.postgres import PostgresCluster, PostgresUnavailable

        try:
            cluster = PostgresCluster().start() if parts & {"study", "server"} else None
        except PostgresUnavailable as exc:
            print(f"PostgreSQL not measured on this host: {exc}")
        with tempfile.TemporaryDirectory(prefix="quantexp-scale-") as tmp:
            if "sweep" in parts:
                sweep(Path(tmp))
            if "study" in parts:
                study(Path(tmp), cluster)
            if "server" in parts:
                server(Path(tmp), cluster)
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
