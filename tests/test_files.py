"""quantexp.files: a reader sees the old file or the new one, never a part of one, and a
failed writer leaves the old one and no temporary file behind."""

from __future__ import annotations

import json
import threading

import pytest

from quantexp.files import atomic_path, atomic_write, atomic_write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"accuracy": 0.9})

    def half_then_crash(f):
        f.write(b'{"accuracy": 0.')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_readers_never_see_a_partial_file_while_a_writer_rewrites_it(tmp_path):
    target = tmp_path / "model.bin"
    sizes = (1 << 20, 3 << 20)  # two versions of different lengths
    atomic_write(target, lambda f: f.write(b"a" * sizes[0]))
    stop, seen = threading.Event(), set()

    def writer():
        for i in range(30):
            atomic_write(target, lambda f, i=i: f.write(b"ab"[i % 2:i % 2 + 1] * sizes[i % 2]))
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not stop.is_set():
        data = target.read_bytes()
        seen.add((len(data), data[:1] * len(data) == data))
    thread.join()
    assert seen <= {(sizes[0], True), (sizes[1], True)}, seen


def test_a_directory_artifact_is_replaced_whole(tmp_path):
    target = tmp_path / "model.mlpackage"
    for version in ("old", "new"):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "Data").mkdir(parents=True)
            (tmp / "Data" / "weights.bin").write_text(version)
            assert not target.exists() or (target / "Data" / "weights.bin").read_text() == "old"
    assert (target / "Data" / "weights.bin").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.mlpackage"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        with atomic_path(tmp_path / "x.onnx"):
            pass
    assert not any(tmp_path.iterdir())
