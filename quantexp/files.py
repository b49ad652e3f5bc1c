"""Atomic writes: a file (or a directory such as a Core ML ``.mlpackage``) is written
under a temporary name beside its target and renamed into place only once complete,
so a reader - a sibling sweep job, a report, a resumed run - sees either the old
artifact or the new one, never half of one.

Stdlib only, the bottom layer: the model cache, the exporters, the pipeline and the
Python API all write through it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(target: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target`` with the same suffix (libraries
    that pick a format from the extension keep working); on a clean exit rename it
    to ``target``, replacing what was there; on an error remove it.

    ``is_dir``: the writer creates a directory at the path (nothing is made for it).
    A directory cannot be replaced by a single rename, so an existing target is
    first moved aside and removed after the new one is in place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp: a private, unique parent on the same filesystem (rename stays atomic)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp = scratch / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer of {target} wrote nothing at {tmp}")
        if is_dir and target.exists():
            old = scratch / f"{target.name}.old"
            os.replace(target, old)
            os.replace(tmp, target)
        else:
            if tmp.is_file():
                os.chmod(tmp, 0o644)  # outputs are shareable, like any file the run writes
            os.replace(tmp, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def atomic_write(target: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``target`` through ``write(file)`` (binary), flushed and fsynced before the
    rename so that a crash right after leaves the complete file, not an empty one."""
    target = Path(target)
    with atomic_path(target) as tmp, tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return target


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write(target, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(target: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (values JSON cannot hold are written as ``str``)."""
    return atomic_write_text(target, json.dumps(data, indent=2, default=str))


def atomic_write_csv(target: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as CSV with a header; the columns are every key, in first-seen order
    (None is an empty cell)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(target) as tmp, Path(tmp).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(target)


__all__ = ["atomic_path", "atomic_write", "atomic_write_csv", "atomic_write_json", "atomic_write_text"]
