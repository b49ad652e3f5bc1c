"""A fork server: functions run in fresh processes forked from a clean copy of this one.

Why: a speed-up measured in one process carries a level that the process holds from
start to end (the same int8/fp32 pair read 1.10x in one process and 1.17x in the
next, steady within each; ``bench/interleaved.py``), so an interval computed inside one
process cannot cover it; timing in several processes can (``bench.processes``). A
fresh interpreter costs seconds (``import torch`` alone is 2-6 s on the CI hosts), a
fork costs milliseconds - but a process forked after its parent has run an OpenMP
parallel region hangs in libgomp at its first parallel op (its thread pool is not in
the copy). So the server is forked from this process *before* the run does any torch
work (``pipeline.run`` starts it first), sits idle, and forks one worker per call; a
worker's OpenMP pool is its own. ``multiprocessing``'s own forkserver does the same
but starts from a new interpreter, paying the imports again.

Each worker first proves that it can run a parallel op (``alive`` within
``alive_timeout_s``): a server forked too late (this process had already run torch
work, e.g. a second run in a notebook) is found out once, in seconds, and every later
call is refused with the reason, so that the caller falls back to one process.

Messages are pickled with the standard pickler (torch tensors travel as bytes, not as
shared-memory handles). A worker's output goes to /dev/null; its exceptions come back
as ``ForkError`` with the traceback's last line.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

ALIVE_TIMEOUT_S = 15.0  # fork + one parallel op: milliseconds on an idle host, seconds under load


class ForkError(RuntimeError):
    """A call that did not return: the worker raised, hung or died (one-line reason)."""


class ForkServer:
    """An idle copy of this process, forked now, that runs ``call``s in fresh forks of itself."""

    def __init__(self, alive_timeout_s: float = ALIVE_TIMEOUT_S) -> None:
        self.broken: str | None = None  # why calls are refused, once a worker could not start
        ours, theirs = Pipe(duplex=True)
        self.pid = os.fork()
        if self.pid == 0:  # the server
            ours.close()
            _serve(theirs, alive_timeout_s)  # never returns
        theirs.close()
        self.owner = os.getpid()
        self._conn: Connection | None = ours

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        """``fn(*args)`` in a fresh fork of the server; its result, or ``ForkError``.

        ``fn`` must be importable by name (a module-level function); ``timeout_s``
        bounds the call after the worker is alive."""
        if self.broken is not None:
            raise ForkError(self.broken)
        if self._conn is None:
            raise ForkError("the fork server is closed")
        try:
            # the server reads the time limit; only the worker unpickles the call
            self._conn.send_bytes(pickle.dumps((timeout_s, pickle.dumps((fn, args)))))
            status, value = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self.broken = f"the fork server is gone ({type(exc).__name__})"
            raise ForkError(self.broken) from exc
        if status == "ok":
            return value
        if status == "not alive":
            self.broken = value
        raise ForkError(value)

    def close(self) -> None:
        """End the server (it exits when its pipe closes) and reap it."""
        if self._conn is None:
            return
        self._conn.close()
        self._conn = None
        if os.getpid() == self.owner:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass


def _serve(conn: Connection, alive_timeout_s: float) -> None:
    """The server's loop: one forked worker per request, answers forwarded; exits (without
    the parent's atexit handlers or buffered output) when the parent closes the pipe."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # nothing on the parent's terminal, no pipe held open for its reader
            os.dup2(devnull, fd)
        logging.disable(logging.CRITICAL)  # the parent's handlers write to its run.log
        while True:
            try:
                request = conn.recv_bytes()
            except (EOFError, OSError):
                break
            timeout_s, call = pickle.loads(request)
            conn.send_bytes(pickle.dumps(_run_one(call, timeout_s, alive_timeout_s)))
    except BaseException:  # noqa: BLE001 - nothing can be reported; the parent sees EOF
        code = 1
    finally:
        os._exit(code)


def _run_one(call: bytes, timeout_s: float, alive_timeout_s: float) -> tuple[str, Any]:
    """Fork a worker for one pickled (fn, args); wait for its answer or kill it."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(reader)
        _work(call, writer)
    os.close(writer)
    try:
        return _answer_of(reader, pid, timeout_s, alive_timeout_s)
    finally:
        os.close(reader)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


def _work(call: bytes, writer: int) -> None:
    code = 0
    try:
        _probe_parallel()
        _write(writer, ("alive", None))
        fn, args = pickle.loads(call)
        try:
            _write(writer, ("ok", fn(*args)))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            _write(writer, ("error", f"{getattr(fn, '__name__', fn)} failed in a forked process: {last}"))
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def _probe_parallel() -> None:
    """One op large enough for torch to split it over two threads or more: it hangs in a
    process forked after its parent's OpenMP pool ran, which is what ``alive`` rules out.
    (On one thread it would pass there too: no pool is involved.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    torch.ones(1 << 20).sin_()
    torch.set_num_threads(threads)


def _write(fd: int, message: tuple[str, Any]) -> None:
    data = pickle.dumps(message)
    os.write(fd, len(data).to_bytes(8, "little"))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _answer_of(reader: int, pid: int, timeout_s: float, alive_timeout_s: float) -> tuple[str, Any]:
    """The worker's answer: ("ok", value), ("error", line) or ("not alive", line)."""
    buffer = bytearray()
    deadline = time.monotonic() + alive_timeout_s
    alive = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if not alive:
                return ("not alive", f"a process forked for timing did not run a parallel op within "
                        f"{alive_timeout_s:.0f} s: this process had already run torch work when the "
                        "fork server started (start runs from a fresh process, or set bench.processes=1)")
            return ("error", "a forked timing process ran past its time limit and was stopped")
        ready, _, _ = select.select([reader], [], [], left)
        if not ready:
            continue
        chunk = os.read(reader, 1 << 20)
        if not chunk:  # the worker exited
            status = os.waitpid(pid, os.WNOHANG)
            return ("error", f"a forked timing process exited without an answer ({_exit_of(status)})")
        buffer += chunk
        while len(buffer) >= 8 and len(buffer) >= 8 + int.from_bytes(buffer[:8], "little"):
            size = int.from_bytes(buffer[:8], "little")
            message = pickle.loads(bytes(buffer[8:8 + size]))
            del buffer[:8 + size]
            if message[0] != "alive":
                return message
            alive = True
            deadline = time.monotonic() + timeout_s


def _exit_of(status: tuple[int, int]) -> str:
    pid, code = status
    if pid == 0:
        return "still running"
    if os.WIFSIGNALED(code):
        return f"signal {os.WTERMSIG(code)}"
    return f"exit code {os.WEXITSTATUS(code)}"


_shared: ForkServer | None = None


def shared_fork_server() -> ForkServer:
    """This process's fork server, started at the first call (and again in a process
    forked from one that had it). Start it before any torch work: ``pipeline.run``
    does, so a run from a fresh process gets a working one."""
    global _shared
    if _shared is None or _shared.owner != os.getpid():
        _shared = ForkServer(alive_timeout_s=ALIVE_TIMEOUT_S)
        import atexit

        atexit.register(_shared.close)
    return _shared


__all__ = ["ALIVE_TIMEOUT_S", "ForkError", "ForkServer", "shared_fork_server"]
