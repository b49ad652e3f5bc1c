"""What one test session shares across its pytest-xdist workers: a folder they all see
(set by the conftest), and work done in it once, by whichever worker needs it first
(pytest-xdist's documented pattern for a fixture that must run once: the shared
folder and a file lock).

Under ``--dist worksteal`` a module's tests can land on both workers, and on one worker
between other modules' tests; a module-scoped fixture is then set up each time its
module comes back (the bitsandbytes sweep, ~20 s, was set up three times in one run of
the suite). ``built_once`` builds such a folder once; the tests read it, and what a
test writes goes under a name of its own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_SESSION_DIR: list[Path] = []  # set by the conftest


def use_session_dir(path: Path) -> None:
    _SESSION_DIR[:] = [path]


def session_dir() -> Path:
    """The folder every worker of this session shares (outside a session: the system's
    temporary folder)."""
    return _SESSION_DIR[0] if _SESSION_DIR else Path(tempfile.gettempdir())


def built_once(key: str, build: Callable[[Path], None]) -> Path:
    """``session_dir()/built-once/<key>``, filled by ``build(folder)`` the first time any
    worker asks for it; a build that raised is started over by the next caller."""
    from filelock import FileLock

    folder = session_dir() / "built-once" / key
    done = folder / ".built"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
