"""Shared fixtures: a tiny HuggingFace BERT written by the tests themselves (the
real loading code for `model=hf` is exercised on it; nothing is downloaded)."""

from __future__ import annotations

import base64
import json
import os
import string
from pathlib import Path

import pytest
import torch

from quantexp.config import usable_cpus

_HOST_CORES: list[int] = []  # the cores this session may use, before any pinning
_SHARE: list[int] = []  # this xdist worker's share of them ([] = not under xdist)


def pytest_configure(config):
    """Under pytest-xdist (``-n N``), each worker runs its tests on its own share of the
    CPU cores (``pytest_runtest_setup``).

    The runs measure the host (``hardware.threads`` defaults to the cores this process
    may use) and the ``run.py`` processes a test starts inherit the affinity: pinned,
    two workers on two cores each run one thread per process instead of four threads
    fighting over two cores (torch's and ONNX Runtime's pools spin while they wait).
    Collection is not pinned, so what a module reads from the host at import is the
    whole host; a test marked ``whole_host`` runs with every core."""
    if not hasattr(os, "sched_setaffinity"):
        return
    _HOST_CORES[:] = usable_cpus()
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count:
        i, n = int(worker.removeprefix("gw")), int(count)
        # more workers than cores (their tests also wait: servers, polls, real-time load):
        # a core each, shared
        _SHARE[:] = _HOST_CORES[i::n] if n <= len(_HOST_CORES) else [_HOST_CORES[i % len(_HOST_CORES)]]


def pytest_runtest_setup(item):
    if not _SHARE:
        return
    cores = _HOST_CORES if item.get_closest_marker("whole_host") else _SHARE
    if usable_cpus() != cores:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))  # in-process work follows the cores it now has


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under coverage (``make coverage``), the processes a test starts (``run.py`` and
    the commands) record their lines under the test's name, as ``--cov-context=test``
    does for the test's own process: which lines only one test reaches is then known
    (``benchmarks/suite_coverage.py``)."""
    config = os.environ.get("COVERAGE_PROCESS_CONFIG")
    if not config:
        yield
        return
    data = json.loads(base64.b64decode(config))
    data["context"] = item.nodeid
    os.environ["COVERAGE_PROCESS_CONFIG"] = base64.b64encode(json.dumps(data).encode()).decode()
    try:
        yield
    finally:
        os.environ["COVERAGE_PROCESS_CONFIG"] = config


@pytest.fixture(scope="session", autouse=True)
def _session_folder(tmp_path_factory):
    """The folder this session's xdist workers share (``tests/session.py``: the empty
    MLflow store of ``tests/mlflow_store.py``, the fixtures built once): the one their
    temporary folders share (pytest-xdist's own pattern), or this session's own."""
    from tests.session import use_session_dir

    base = tmp_path_factory.getbasetemp()
    use_session_dir(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


def write_tiny_bert(directory: Path, seed: int) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["the", "a", "and", "of", "to", "is", "it", "this", "that", "film", "movie", "good",
             "bad", "great", "not", "funny", "story"]
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase)
             + ["##" + c for c in string.ascii_lowercase] + list(".,!?'-") + words)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"))
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=37,
                                 max_position_embeddings=64))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory




@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), seed=0)


def _postgres_installed() -> bool:
    from quantexp.tracking.postgres import PostgresUnavailable, bin_dir

    try:
        bin_dir()
        return True
    except PostgresUnavailable:
        return False


needs_postgres = pytest.mark.skipif(not _postgres_installed(),
                                    reason="needs Debian's postgresql package (.ci/run installs it)")


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL cluster of this test session (its own folder under /tmp, a
    free port on 127.0.0.1), stopped and removed at the end."""
    import shutil

    from quantexp.tracking.postgres import PostgresCluster

    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)
