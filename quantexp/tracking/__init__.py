"""MLflow tracking for quantexp: where the store is, one run per job, one parent per sweep.

- ``store``: tracking-URI resolution, the artifact root, get-or-create experiment.
- ``run_logger``: ``RunLogger``, a context manager around one MLflow run.
- ``callbacks``: ``MlflowSweepCallback`` (the parent run of a Hydra multirun)
  and ``parent_run_id()`` for the jobs.
- ``sweep_summary``: ``SweepSummaryCallback``, the end-of-sweep list of failed jobs.
- ``lookup``: the MLflow run of a job, found by its output folder (and ended FAILED
  when the job's process died).
- ``server`` / ``postgres``: a shared ``mlflow server`` on 127.0.0.1 (``make server``) and
  a PostgreSQL cluster of its own behind it (``make server-postgres``).

``EXIT`` carries the exit code of a multirun to run.py (Hydra returns none): set by
the sweep summary (failed jobs) and by the search report (a budget no trial meets).

Nothing here imports mlflow at package import time: Hydra imports the callback
module on every start, including ``run.py --help``, and mlflow takes seconds
to import. Import the submodules explicitly (``from quantexp.tracking.run_logger
import RunLogger``).
"""

PARENT_RUN_ENV = "QUANTEXP_MLFLOW_PARENT_RUN_ID"
PARENT_RUN_FILE = "mlflow_parent_run_id.txt"
# The store the sweep's parent run is in, for jobs whose environment differs from the
# launching one (a Ray worker does not see the driver's MLFLOW_TRACKING_URI).
TRACKING_URI_FILE = "mlflow_tracking_uri.txt"


class _Exit:
    code: int = 0


EXIT = _Exit()

__all__ = ["EXIT", "PARENT_RUN_ENV", "PARENT_RUN_FILE", "TRACKING_URI_FILE"]
