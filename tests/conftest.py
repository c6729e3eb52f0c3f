"""Shared, session-scoped fixtures: a tiny real corpus (stdlib text) and a tokenizer trained on it."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hub_server import Hub
from trainer.data import build_stdlib_corpus, iter_documents, split_shards
from trainer.tokenizer import Tokenizer, train_tokenizer

# SkyPilot, wherever a test touches it: no API server is ever started (an SDK call that would start one
# fails instead), no usage reports, and no catalog but the ones a test seeds.
os.environ["SKYPILOT_DISABLE_LOCAL_API_SERVER"] = "1"
os.environ["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
os.environ["SKY_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="nl-test-sky-runtime-")

# Hugging Face, in this process and every trainer it starts: the Hub is the one served below on loopback
# (set before huggingface_hub is imported: it reads HF_ENDPOINT once), no cache or token of the user's.
HUB = Hub()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="nl-test-hf-home-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)

# W&B: the real client is installed (the `test` extra); a trainer started with a W&B project by a test that
# asked for neither wandb_offline nor wandb_stub logs nowhere, and never goes online.
os.environ["WANDB_MODE"] = "disabled"


@pytest.fixture
def hub(monkeypatch):
    """The loopback Hub (tests/hub_server.py); give each test its own dataset names. No HF_TOKEN unless set."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return HUB


@pytest.fixture
def sky_home(tmp_path, monkeypatch):
    """HOME for SkyPilot (it keeps state under ~/.sky): a temporary one, never the user's. SkyPilot fetches a
    missing catalog from GitHub (even to print a Task): the loopback guard refuses it in this process."""
    import loopback_guard

    loopback_guard.install(monkeypatch.setattr)
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
    return ["--data", corpus[0].parent, "--data-dir", tmp_path_factory.mktemp("data"), "--tokenizer-dir", tok_dir]


def nl(home, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`nanolaunch ARGS` as a user runs it, with NANOLAUNCH_HOME=home (in `env`, default this environment);
    waits for it to end, however long."""
    return subprocess.run([sys.executable, "-m", "nanolaunch.cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL,
                          env={**(os.environ if env is None else env), "NANOLAUNCH_HOME": str(home)})


def tiny_preset(iterations: int, **config) -> str:
    """A preset of a model that trains in seconds on 2 cores; `config` adds or overrides [config] fields."""
    fields = {"depth": 2, "head_dim": 32, "vocab_size": 512, "seq_len": 64, "device_batch": 4, "total_batch": 512,
              "iterations": iterations, "eval_every": 5, "eval_tokens": 2048, "gpu": "cpu",
              "data": "stdlib", "dtype": "fp32", **config}
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]  # JSON scalars are TOML scalars
    return 'description = "a test model: seconds on 2 cores"\n[config]\n' + "\n".join(lines) + \
        '\n[provenance]\nsource = "tests"\n'



@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """The real W&B client, offline, for every process started from the test; yields WANDB_DIR (each run is
    a folder wandb/offline-run-*/ there, read by tests/test_wandb.py). No key, no user settings, nothing of
    the user's home; no system metrics, git or code capture, console capture or error reports. The loopback
    guard is on here and in every Python started (tests/loopback_guard.py): an attempt to reach beyond
    loopback is refused, logged, and fails the test. wandb-core, the client's service, is a Go binary the
    guard cannot see: offline it opens only a Unix socket to the client (seen with strace)."""
    for name in [n for n in os.environ if n.startswith("WANDB_")]:  # no key, server, entity or mode of the user's
        monkeypatch.delenv(name)
    root = tmp_path / "wandb"
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": root, "WANDB_CONFIG_DIR": root / "config",
                        "WANDB_CACHE_DIR": root / "cache", "WANDB_DATA_DIR": root / "data",
                        "WANDB_ARTIFACT_DIR": root / "artifacts", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_ERROR_REPORTING": "false",
                        "WANDB__DISABLE_STATS": "true", "WANDB__DISABLE_META": "true",
                        "WANDB__DISABLE_MACHINE_INFO": "true"}.items():
        monkeypatch.setenv(name, str(value))
    root.mkdir()
    # wandb-core leaves its socket's folder in TMPDIR: a short one of the test's (a socket's path is short)
    sockets = Path(tempfile.mkdtemp(prefix="nl-wandb-"))
    monkeypatch.setenv("TMPDIR", str(sockets))
    network = tmp_path / "network.log"
    monkeypatch.setenv("NL_TEST_NETWORK_LOG", str(network))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent / "loopback_only"),
                                                      os.environ.get("PYTHONPATH", "")]))
    import loopback_guard

    loopback_guard.install(monkeypatch.setattr)  # and here, where the test reads the run with wandb's reader
    yield root
    shutil.rmtree(sockets, ignore_errors=True)
    assert not network.exists(), f"beyond loopback: {network.read_text()}"


@pytest.fixture
def wandb_stub(tmp_path, monkeypatch) -> Path:
    """The W&B client replaced by tests/stubs/wandb.py for every process started from the test; returns the
    file its logging goes to. Only where a test needs a run's URL: offline, the real client has none (see
    wandb_offline for the real one)."""
    stubs = Path(__file__).parent / "stubs"
    monkeypatch.setenv("PYTHONPATH", f"{stubs}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("WANDB_STUB_LOG", str(tmp_path / "wandb.jsonl"))
    monkeypatch.setenv("WANDB_API_KEY", os.environ.get("WANDB_API_KEY") or "test-key")
    return tmp_path / "wandb.jsonl"
