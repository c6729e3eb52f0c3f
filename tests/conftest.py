"""Shared, session-scoped fixtures: a tiny real corpus (stdlib text) and a tokenizer trained on it."""
import os
import subprocess
import sys
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
    return ["--data-source", "local", "--data-dir", corpus[0].parent, "--tokenizer-dir", tok_dir]


def nl(home, *args) -> subprocess.CompletedProcess:
    """`nanolaunch ARGS` as a user runs it, with NANOLAUNCH_HOME=home; waits for it to end, however long."""
    return subprocess.run([sys.executable, "-m", "nanolaunch.cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NANOLAUNCH_HOME": str(home)})


@pytest.fixture
def wandb_stub(tmp_path, monkeypatch) -> Path:
    """The W&B client replaced by tests/stubs/wandb.py for every process started from the test; returns the
    file its logging goes to."""
    stubs = Path(__file__).parent / "stubs"
    monkeypatch.setenv("PYTHONPATH", f"{stubs}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("WANDB_STUB_LOG", str(tmp_path / "wandb.jsonl"))
    monkeypatch.setenv("WANDB_API_KEY", os.environ.get("WANDB_API_KEY") or "test-key")
    return tmp_path / "wandb.jsonl"
