"""Shared, session-scoped fixtures: a tiny real corpus (stdlib text) and a tokenizer trained on it."""
import os
import tempfile
from pathlib import Path

import pytest

from trainer.data import build_stdlib_corpus, iter_documents, split_shards
from trainer.tokenizer import Tokenizer, train_tokenizer

# SkyPilot, wherever a test touches it: no API server is ever started (an SDK call that would start one
# fails instead), no usage reports, and no catalog but the ones a test seeds.
os.environ["SKYPILOT_DISABLE_LOCAL_API_SERVER"] = "1"
os.environ["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
os.environ["SKY_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="nl-test-sky-runtime-")


@pytest.fixture
def sky_home(tmp_path, monkeypatch):
    """HOME for SkyPilot (it keeps state under ~/.sky): a temporary one, never the user's."""
    home = tmp_path / "sky-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[Path]:
    """4 parquet shards, ~2M characters, row groups of 32 documents (9 train row groups, 3 val)."""
    return build_stdlib_corpus(tmp_path_factory.mktemp("corpus"), n_shards=4, docs_per_row_group=32,
                               max_chars=2_000_000)


@pytest.fixture(scope="session")
def tokenizer(corpus) -> Tokenizer:
    train, _ = split_shards(corpus)
    return train_tokenizer(iter_documents(train), 1024)


@pytest.fixture(scope="session")
def data_args(corpus, tokenizer, tmp_path_factory):
    """Trainer flags that point at the shared corpus and its saved tokenizer."""
    tok_dir = tmp_path_factory.mktemp("tok")
    tokenizer.save(tok_dir)
    return ["--data-dir", corpus[0].parent, "--tokenizer-dir", tok_dir]
