"""One job in a fresh process: ``run_in_fresh_process(fn, *args)``.

Every job of a multirun measures in a process of its own (optimum-benchmark's process
launcher is the model): a crash, an OOM kill or a leaked thread pool ends that process
only. The launcher's process (Hydra's basic launcher, a joblib worker, a Ray worker)
waits for the job's result, so one job that dies is one FAILED job and the sweep goes
on; a segfault inside a joblib or Ray worker would otherwise take the worker, and with
it the whole launch, down.

The processes come from multiprocessing's forkserver with torch, mlflow and the
pipeline imported once in the server: a job starts as a fork() of that clean server
(nothing measured in it, no thread pool started) instead of re-importing ~10 s of
libraries. The job's kernel peak-RSS counter starts at the server's size, so
``process_peak_rss_mb`` is this job's peak, not the sweep's so far.

What crosses the process boundary: the job's config and Hydra's config, the
environment and working directory of the launcher's process (the server's are those
of the moment it started), and back the job's return value, or its exception with the
child's traceback (``RemoteTraceback``, as ``concurrent.futures`` does). A child that
dies without answering raises ``JobCrashed`` with its exit code or signal and the
Python stack faulthandler wrote at the crash.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Imported once in the fork server; each job then starts with them loaded. Also what
# every job imports lazily on its way: the split of the data set (scikit-learn, ~1 s)
# and MLflow's database store (SQLAlchemy and alembic, ~0.8 s).
PRELOAD = ["quantexp.cli", "quantexp.pipeline", "quantexp.report.summary",
           "quantexp.tracking.run_logger", "mlflow.tracking", "sklearn.model_selection",
           "mlflow.store.tracking.sqlalchemy_store"]
CRASH_STACK_FILE = "crash_stack.txt"
_STD_METHODS = (None, "fork", "spawn", "forkserver")


class JobCrashed(RuntimeError):
    """The job's process ended without returning a result or raising (a signal such
    as SIGSEGV or the OOM killer's SIGKILL, or os._exit)."""


class RemoteTraceback(Exception):
    """The child's formatted traceback, chained as the cause of its exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    preload = list(PRELOAD)
    # Inside a loky (joblib) worker the default start method is "loky"; the server's
    # children set it again on start, so the module that defines it must be loaded.
    method = multiprocessing.get_start_method(allow_none=True)
    if method not in _STD_METHODS:
        preload.append(type(multiprocessing.get_context(method)).__module__)
    ctx.set_forkserver_preload(preload)
    return ctx


def run_in_fresh_process(fn: Callable[..., Any], *args: Any, hydra_cfg: Any = None,
                         env: dict[str, str] | None = None, crash_dir: Path | None = None,
                         name: str = "quantexp-job") -> Any:
    """``fn(*args)`` in a new process; its return value, or its exception re-raised here
    with the child's traceback as cause. ``hydra_cfg``: the HydraConfig of the job
    (``HydraConfig.instance().cfg``), set in the child with Hydra's job logging.
    ``env``: the child's whole environment (default: this process's). ``crash_dir``:
    where faulthandler writes the stack of a fatal signal (``crash_stack.txt``)."""
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)  # nothing is ever sent: its EOF is the message
    crash_file = str(Path(crash_dir) / CRASH_STACK_FILE) if crash_dir is not None else None
    proc = ctx.Process(target=_child, name=name,
                       args=(sender, life_r, fn, args, hydra_cfg, dict(os.environ if env is None else env),
                             os.getcwd(), crash_file))
    proc.start()
    sender.close()  # the child's ends: recv() sees EOF once the child is gone
    life_r.close()
    try:
        try:
            message = receiver.recv()
        except EOFError:
            message = None
        proc.join()
    except BaseException:  # Ctrl-C or the launcher giving up: the job goes too
        proc.terminate()
        proc.join(10)
        raise
    finally:
        receiver.close()
        life_w.close()
    if message is None:
        raise _crashed(proc.exitcode, crash_file)
    if crash_file is not None:
        Path(crash_file).unlink(missing_ok=True)  # no fatal signal: nothing was written
    kind, payload = message
    if kind == "ok":
        return payload
    raise _rebuilt(*payload)


def _crashed(exitcode: int | None, crash_file: str | None) -> JobCrashed:
    if exitcode is not None and exitcode < 0:
        try:
            what = f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            what = f"killed by signal {-exitcode}"
        if exitcode == -signal.SIGKILL:
            what += " (the kernel's OOM killer sends SIGKILL when memory runs out)"
    else:
        what = f"exited with code {exitcode}"
    exc = JobCrashed(f"the job's process died before returning a result: {what}")
    stack = Path(crash_file).read_text(errors="replace").strip() if crash_file and Path(crash_file).is_file() else ""
    if stack:
        exc.__cause__ = RemoteTraceback(f"Python stack at the crash (faulthandler, {crash_file}):\n{stack}\n")
    elif crash_file is not None:
        Path(crash_file).unlink(missing_ok=True)  # no fatal signal (os._exit, SIGKILL): empty
    return exc


def _rebuilt(blob: bytes | None, type_name: str, text: str, tb: str) -> BaseException:
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - a class that cannot be rebuilt here: keep its text
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"{type_name}: {text}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _die_with_launcher(lifeline: Any) -> None:
    """End this process when the launcher's process ends (kill -9 of the sweep, a Ray
    worker lost): only the launcher holds the lifeline's other end, so EOF on it means
    it is gone, and a job nobody waits for must not go on measuring. (The fork server,
    this process's parent, outlives the launcher while any of its children runs.)"""

    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="quantexp-lifeline", daemon=True).start()


def _child(conn: Any, lifeline: Any, fn: Callable[..., Any], args: tuple, hydra_cfg: Any,
           env: dict[str, str], cwd: str, crash_file: str | None) -> None:
    _die_with_launcher(lifeline)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    crash_fh = None
    if crash_file is not None:
        Path(crash_file).parent.mkdir(parents=True, exist_ok=True)
        crash_fh = open(crash_file, "w")  # noqa: SIM115 - open until the process ends
        faulthandler.enable(file=crash_fh, all_threads=True)
    if hydra_cfg is not None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log

        HydraConfig.instance().set_config(hydra_cfg)
        configure_log(hydra_cfg.hydra.job_logging, hydra_cfg.hydra.verbose)
    try:
        result = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the launcher
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            blob: bytes | None = pickle.dumps(exc)
        except Exception:  # noqa: BLE001
            blob = None
        conn.send(("error", (blob, type(exc).__name__, str(exc), tb)))
    else:
        try:
            conn.send(("ok", result))
        except Exception as exc:  # noqa: BLE001 - a return value that cannot be pickled
            conn.send(("error", (None, type(exc).__name__, f"the job's return value cannot be sent back: {exc}",
                                 traceback.format_exc())))
    finally:
        conn.close()
        if crash_fh is not None:
            faulthandler.disable()
            crash_fh.close()


__all__ = ["CRASH_STACK_FILE", "JobCrashed", "RemoteTraceback", "run_in_fresh_process"]
