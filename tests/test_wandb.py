"""The trainer's W&B logging through the real client, offline (the wandb_offline fixture in conftest): the run
it writes is read back from its transaction log with wandb's own reader, and compared with the trainer's event
lines. Nothing reaches beyond loopback: the guard is on in the trainer's Python, and this file checks that it is."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import settings

REPO = Path(__file__).resolve().parent.parent
SYNTH = ["--depth", "2", "--vocab-size", "512", "--seq-len", "64", "--head-dim", "64", "--device-batch", "4",
         "--total-batch", "512", "--data", "synthetic", "--device", "cpu", "--dtype", "fp32"]


def events(stdout: str) -> dict[str, list[dict]]:
    """The trainer's event lines, by kind."""
    by_kind: dict[str, list[dict]] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if "event" in e:
                by_kind.setdefault(e["event"], []).append(e)
    return by_kind


def offline_run(root: Path) -> list:
    """The records of the one offline run under WANDB_DIR, read from its .wandb log by wandb's own reader."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    logs = list(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"one offline run expected under {root}: {logs}"
    store = datastore.DataStore()
    store.open_for_scan(str(logs[0]))
    records = []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def values(items) -> dict:
    """Config, history or summary items (key, or nested_key for a top-level one, and its JSON) as a dict."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_the_trainer_logs_its_config_losses_and_val_bpb_to_an_offline_run(wandb_offline, tmp_path):
    given = {"NL_WANDB_PROJECT": "nl-wandb-test", "NL_RUN_NAME": "tiny-offline"}  # as the launcher gives them
    argv = [*SYNTH, "--iterations", "6", "--eval-every", "3", "--eval-tokens", "1024",
            "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run([sys.executable, "-m", "trainer.train", *argv], cwd=REPO, env={**os.environ, **given},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = events(done.stdout)
    assert got["wandb"] == [{**got["wandb"][0], "url": None, "project": "nl-wandb-test"}]  # offline: no URL
    start, result = got["start"][0], got["result"][0]

    records = offline_run(wandb_offline)
    kinds = [r.WhichOneof("record_type") for r in records]
    runs = [r.run for r in records if r.HasField("run")]
    assert len(runs) == 1 and runs[0].project == "nl-wandb-test" and runs[0].display_name == "tiny-offline"
    config = values(runs[0].config.update)
    for r in records:
        if r.HasField("config"):
            config.update(values(r.config.update))
    config.pop("_wandb", None)
    # every setting as given (the start event's config resolves some: threads, for one)
    assert config == json.loads(json.dumps(settings.from_sources(argv, given).to_dict()))
    assert {k: v for k, v in config.items() if k != "threads"} == \
        {k: v for k, v in start["config"].items() if k in config and k != "threads"}

    history = [values(r.history.item) for r in records if r.HasField("history")]
    assert len(got["step"]) == 6 and [e["step"] for e in got["eval"]] == [0, 3, 6]
    assert [(h["step"], h["loss"]) for h in history if "loss" in h] == \
        [(e["step"], pytest.approx(e["loss"])) for e in got["step"]]
    assert [(h["step"], h["val_bpb"]) for h in history if "val_bpb" in h] == \
        [(e["step"], pytest.approx(e["val_bpb"])) for e in got["eval"]]
    assert {"lr_mult", "tokens_per_second", "mfu", "step_ms"} <= {k for h in history for k in h}

    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(values(r.summary.update))
    assert summary["step"] == 6 and summary["val_bpb"] == pytest.approx(result["val_bpb"])
    assert summary["loss"] == pytest.approx(result["loss"])

    # wandb.finish() was called (not the client's exit hook), and the run closed with exit code 0
    assert [r.telemetry.feature.finish for r in records if r.HasField("telemetry")][-1]
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0


def test_the_loopback_guard_is_on_where_the_trainer_runs(wandb_offline, tmp_path):
    """The check above is not empty: a Python started with the trainer's environment refuses and logs an
    attempt to leave loopback (192.0.2.1 is TEST-NET-1; refused before any packet)."""
    probe = "import socket\ntry:\n    socket.socket().connect(('192.0.2.1', 9))\nexcept ConnectionRefusedError:\n" \
            "    print('refused')\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "refused", done.stderr
    network = Path(os.environ["NL_TEST_NETWORK_LOG"])
    assert "connect ('192.0.2.1', 9)" in network.read_text()
    network.unlink()  # the fixture fails a test whose processes tried
