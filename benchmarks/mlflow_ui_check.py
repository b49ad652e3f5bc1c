"""Does MLflow's own UI show what a user needs after a sweep? Runs a 3-job sweep into a
fresh store, starts `mlflow ui` on a free port, and opens it in headless Chromium
(Debian's, through Playwright): the experiment's runs table (the link a run prints),
the sweep's parent run with its children, and the parent's report artifact. Prints what
it found and writes screenshots to test-artifacts/mlflow_ui_*.png.

    .venv/bin/python benchmarks/mlflow_ui_check.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="quantexp-ui-"))
    uri = f"sqlite:///{work}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "method=fp32,ptq_static,ptq_dynamic", "model=cnn",
                    "model.epochs=1", "model.n_train=400", "+debug=tiny", f"hydra.sweep.dir={work}/sweep",
                    f"cache_dir={work}/cache"], cwd=work, env=env, check=True, capture_output=True)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quantexp")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        OUT.mkdir(exist_ok=True)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            table = f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
            page.goto(table)
            page.wait_for_selector(f"text={parent.info.run_name}", timeout=60_000)
            time.sleep(2)
            page.screenshot(path=str(OUT / "mlflow_ui_runs.png"))
            print(f"runs table ({table}): the parent run {parent.info.run_name!r} is listed")
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click(timeout=10_000)
            time.sleep(2)
            page.screenshot(path=str(OUT / "mlflow_ui_children.png"))
            print("children shown under the parent in the runs table:",
                  sum(page.locator(f"text={name}").count() > 0 for name in ("#0", "#1", "#2")), "of 3 job suffixes")
            page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                      "?workflowType=machine_learning")
            page.wait_for_selector(f"text={parent.info.run_name}", timeout=60_000)
            time.sleep(3)
            page.screenshot(path=str(OUT / "mlflow_ui_parent.png"), full_page=True)
            print("parent run page: description and best.* metrics shown:",
                  page.locator("text=best.speedup").count() > 0)
            page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts"
                      "?workflowType=machine_learning")
            time.sleep(4)
            page.screenshot(path=str(OUT / "mlflow_ui_artifacts.png"), full_page=True)
            print("parent artifacts tab: report folder shown:", page.locator("text=report").count() > 0)
            browser.close()
        children = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        print(f"children of the parent in the store: {children}")
        print(f"screenshots: {OUT}/mlflow_ui_*.png")
    finally:
        os.killpg(server.pid, 15)  # mlflow ui runs uvicorn workers of its own: end the group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
    return 0


if __name__ == "__main__":
    sys.exit(main())
