"""Shared fixtures: a tiny HuggingFace BERT written by the tests themselves (the
real loading code for `model=hf` is exercised on it; nothing is downloaded)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch


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
