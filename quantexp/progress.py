"""One progress display per run: a line per stage of the pipeline (with its time once
done) and a bar for each long loop inside it (training epochs, calibration, evaluation,
sensitivity), drawn by rich on stderr.

``display()`` opens it around a run; ``stage(name)`` and ``track(iterable, ...)`` are
called from wherever the work happens (pipeline, training, methods, sensitivity)
without passing an object down: the active display lives in a context variable. With
no display open (a function used on its own, a benchmark), ``track`` falls back to a
plain tqdm bar and ``stage`` does nothing.

The display never refreshes on its own (``auto_refresh=False``): a refresh thread
waking ten times a second would run beside the latency measurement. It redraws when a
stage starts or ends and at most every 0.2 s while a loop advances; nothing redraws
during the timing stage, which has no loop of its own here.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("quantexp_progress", default=None)
_REDRAW_S = 0.2


class _Display:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), auto_refresh=False)
        self._drawn = 0.0

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn >= _REDRAW_S:
            self.progress.refresh()
            self._drawn = now


@contextlib.contextmanager
def display(enabled: bool = True) -> Iterator[None]:
    """Open the run's display (nested calls reuse the open one)."""
    if not enabled or _ACTIVE.get() is not None:
        yield
        return
    shown = _Display()
    token = _ACTIVE.set(shown)
    shown.progress.start()
    try:
        yield
    finally:
        shown.redraw(force=True)
        shown.progress.stop()
        _ACTIVE.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """A line for one stage: '… name' while it runs, '✓ name' with its time after."""
    shown = _ACTIVE.get()
    if shown is None:
        yield
        return
    task = shown.progress.add_task(f"… {name}", total=None)
    shown.redraw(force=True)
    ok = False
    try:
        yield
        ok = True
    finally:
        shown.progress.update(task, total=1, completed=1, description=f"{'✓' if ok else '✗'} {name}")
        shown.progress.stop_task(task)
        shown.redraw(force=True)


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a bar under the current stage (removed when the loop ends)."""
    shown = _ACTIVE.get()
    if shown is None:
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=description, total=total, leave=False, disable=None)
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    task = shown.progress.add_task(f"    {description}", total=total)
    try:
        for item in iterable:
            yield item
            shown.progress.advance(task)
            shown.redraw()
    finally:
        shown.progress.remove_task(task)
        shown.redraw(force=True)


__all__ = ["display", "stage", "track"]
