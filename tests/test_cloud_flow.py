"""The SkyPilot launch flow at the SDK boundary: a recording fake in place of `sky`, the real trainer behind it.

Only what cannot run on the local Slurm cluster (tests/test_slurm.py runs the rest, recovery included, for
real): GPU tasks with the bucket and a cloud's price, W&B's secret, Ctrl-C during provisioning, a spot job
cancelled, SkyPilot's cloud errors as one line; status, down and logs.
"""
import dataclasses
import re
import sys

import pytest
from typer.testing import CliRunner

from nanolaunch import session
from nanolaunch.backends import sky_sdk, skypilot
from nanolaunch.session import Follower
from nanolaunch.cli import app
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from nanolaunch.session import Request
from nanolaunch.ledger import Ledger

from fake_sky import FakeSky

TINY = dict(depth=2, head_dim=32, vocab_size=512, seq_len=64, device_batch=4, total_batch=512, eval_every=5,
            eval_tokens=2048, gpu="H100:1", data="synthetic", dtype="fp32")
SECRET = "wandb-secret-value-123"


@pytest.fixture
def env(tmp_path, sky_home, monkeypatch):
    home = tmp_path / "nl"
    monkeypatch.setenv("NANOLAUNCH_HOME", str(home))
    monkeypatch.setenv("NANOLAUNCH_BUCKET", "nl-test-bucket")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    return home


def install(monkeypatch, tmp_path, *, clouds=("AWS", "GCP", "Lambda"), **behaviour) -> FakeSky:
    """The fake SDK, and what `sky check` recorded (SkyPilot's state database is one per process: writing it
    here would leak into every later test)."""
    fake = FakeSky(tmp_path / "bucket", **behaviour)
    monkeypatch.setattr(sky_sdk, "sdk", lambda: fake)
    monkeypatch.setattr(sky_sdk, "enabled_clouds", lambda: list(clouds))
    return fake


def request(kind="run", probe=None, max_cost=None, **changes) -> Request:
    config = RunConfig.build(**{**TINY, "iterations": 12, "checkpoint_every": 5, **changes})
    return Request(kind, config, title=f"test {kind}", project="cloud", probe=probe, max_cost=max_cost, quiet=True)


def names(fake):
    return [c[0] for c in fake.calls]


def test_run_launches_follows_records_and_tears_down(env, tmp_path, monkeypatch):
    fake = install(monkeypatch, tmp_path)
    row = skypilot.run(request())
    assert row["status"] == "ok" and row["steps"] == 12 and row["val_bpb"] > 0
    assert row["backend"] == "sky" and row["cluster"] == f"nl-{row['id']}" and row["sky_job_id"] == 1
    assert names(fake) == ["launch", "tail_logs", "down"]
    assert fake.calls[0][2] == {"idle_minutes_to_autostop": 10, "down": True}  # autostop and down, always
    assert fake.clusters == {}  # nothing left billing
    assert row["cost_usd"] == pytest.approx(row["usd_per_hour"] * row["wall_seconds"] / 3600)
    assert row["usd_per_hour"] > 0 and "snapshot" in row["price_source"]
    events = Ledger().events(row["id"])
    assert [e["kind"] for e in events] == ["launch", "down", "checkpoint_kept"]
    assert events[-1]["detail"].startswith("step 12: ")  # the checkpoint that outlived the teardown
    assert f"runs/{row['id']:05d}/checkpoints/step_000012 " in events[-1]["detail"]
    assert fake.calls[-1][2] == {"graceful": True, "graceful_timeout": sky_sdk.UPLOAD_TIMEOUT_S}
    # the trainer wrote into the bucket, the launcher kept the log, and the secret reached only the job
    assert (tmp_path / "bucket" / "runs" / f"{row['id']:05d}" / "result.json").exists()
    assert fake.secrets_seen == [{"WANDB_API_KEY": SECRET}]
    for path in [*env.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_wandb_logs_with_the_secret_and_its_url_reaches_the_ledger(env, tmp_path, monkeypatch, wandb_stub):
    fake = install(monkeypatch, tmp_path)
    row = skypilot.run(dataclasses.replace(request(iterations=6), wandb_project="nl-proj"))
    assert row["status"] == "ok" and row["wandb_url"] == "https://wandb.ai/nanolaunch-test/nl-proj/runs/stub"
    assert fake.secrets_seen == [{"WANDB_API_KEY": SECRET}]
    assert '"val_bpb"' in wandb_stub.read_text()


def test_probe_sweep_reuses_one_cluster(env, tmp_path, monkeypatch):
    fake = install(monkeypatch, tmp_path)
    reqs = [request("dry", probe=3, device_batch=b) for b in (1, 2, 4)]
    rows = skypilot.sweep(reqs)
    assert [r["status"] for r in rows] == ["ok"] * 3 and [r["steps"] for r in rows] == [3, 3, 3]
    assert names(fake) == ["launch", "tail_logs", "exec", "tail_logs", "exec", "tail_logs", "down"]
    assert len({r["cluster"] for r in rows}) == 1
    # the bucket keeps what runs share (listing, tokenizer); shards go to the node's disk; each has its own run folder
    tasks = [(skypilot.run_dir(r["id"]) / "task.yaml").read_text() for r in rows]
    assert all("NL_STORE_DIR: /nl-store/data/synthetic" in t and "NL_DATA_DIR: ~/nl-data/synthetic" in t for t in tasks)
    assert len({r["run_dir"] for r in rows}) == 3


def test_cloud_probes_keep_their_memory_cap(env, tmp_path, monkeypatch):
    """`dry --memory-limit-gib` on SkyPilot used to lose the cap on the way to the trainer."""
    install(monkeypatch, tmp_path)
    req = dataclasses.replace(request("dry", probe=2), memory_limit_gib=6.5)
    row = skypilot.sweep([req])[0]
    assert row["status"] == "ok"
    log = (skypilot.run_dir(row["id"]) / "train.log").read_text()
    start = [line for line in log.splitlines() if '"event": "start"' in line][0]
    assert '"memory_limit_gib": 6.5' in start and "address space capped at 6.5 GiB" in log


def test_a_sweep_that_stops_early_still_tears_down(env, tmp_path, monkeypatch):
    fake = install(monkeypatch, tmp_path)
    reqs = [request("dry", probe=2, device_batch=b) for b in (4, 2, 1)]
    rows = skypilot.sweep(reqs, stop=lambda done: len(done) == 2 and done[-1]["status"] == "ok")
    assert [r["device_batch"] for r in map(lambda r: r["config"], rows)] == [4, 2]
    assert names(fake) == ["launch", "tail_logs", "exec", "tail_logs", "down"]
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_ctrl_c_while_provisioning_aborts_the_launch_request_then_tears_down(env, tmp_path, monkeypatch):
    """Without the abort, the API server goes on provisioning after we gave up, and the teardown waits."""
    fake = install(monkeypatch, tmp_path, launch_error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        skypilot.run(request())
    assert names(fake) == ["launch", "api_cancel", "down"] and fake.calls[1][1] == "request-1"  # the launch's
    assert Ledger().rows("cloud")[-1]["status"] == "cancelled"


def test_ctrl_c_cancels_a_managed_job(env, tmp_path, monkeypatch):
    fake = install(monkeypatch, tmp_path, interrupt_after_steps=2)
    with pytest.raises(KeyboardInterrupt):
        skypilot.run(request(spot=True, iterations=1000))
    assert fake.calls[-1][0] == "jobs.cancel" and fake.calls[-1][1] == (100,)
    assert Ledger().rows("cloud")[-1]["status"] == "cancelled"


@pytest.mark.parametrize("error, words, status", [
    ("NoCloudAccessError", "sky check", "failed_to_launch"),
    ("ResourcesUnavailableError", "no capacity", "failed_to_launch"),
    ("ResourcesUnavailableError:quota", "no quota", "failed_to_launch"),
    ("ClusterSetUpError", "during setup", "crashed"),  # a machine was had, and billed, before setup failed
])
def test_skypilot_errors_become_one_line(env, tmp_path, monkeypatch, sky_home, error, words, status):
    """...and a run that never got a machine is recorded as failed_to_launch, at $0 with no wall time."""
    import sky

    name, _, flavour = error.partition(":")
    message = "Failed to provision: Found no quota for H100 in us-east-1" if flavour else f"{name} happened\nmore"
    fake = install(monkeypatch, tmp_path, launch_error=getattr(sky.exceptions, name)(message))
    with pytest.raises(NanolaunchError) as caught:
        skypilot.run(request())
    assert words in str(caught.value) and "\n" not in str(caught.value)
    row = Ledger().rows("cloud")[-1]
    assert row["status"] == status and words in row["error"]
    if status == "failed_to_launch":
        assert row["cost_usd"] == 0 and row["wall_seconds"] is None
    else:
        assert row["wall_seconds"] > 0 and row["cost_usd"] > 0
    assert names(fake) == ["launch", "down"]  # teardown is tried even when the launch failed


def test_a_task_skypilot_rejects_closes_its_row(env, tmp_path, monkeypatch):
    install(monkeypatch, tmp_path)
    monkeypatch.setattr(session, "render", lambda *a, **k: {"name": "nl-x", "resources": {"acelerators": "H100:1"}})
    with pytest.raises(NanolaunchError, match="SkyPilot rejects the task"):
        skypilot.run(request())
    row = Ledger().rows("cloud")[-1]
    assert row["status"] == "crashed" and "acelerators" in row["error"]


def test_status_logs_and_down(env, tmp_path, monkeypatch):
    import yaml

    fake = install(monkeypatch, tmp_path)
    row = skypilot.run(request(iterations=6))
    # Its cluster still up, as when a launcher dies before teardown: the same task on the same cluster.
    task = yaml.safe_load((skypilot.run_dir(row["id"]) / "task.yaml").read_text())
    job_id, _ = sky_sdk.launch(sky_sdk.to_task(task), row["cluster"])
    runner = CliRunner()
    shown = runner.invoke(app, ["status", "--json"])
    assert shown.exit_code == 0, shown.output
    assert f'"run": {row["id"]}' in shown.output and '"status": "UP"' in shown.output
    logs = runner.invoke(app, ["logs", str(row["id"])])
    assert logs.exit_code == 0, logs.output
    assert ("tail_logs", row["cluster"], job_id) in fake.calls
    assert '"event": "result"' in logs.output and "resumed" in logs.output  # the trainer found its checkpoint
    gone = runner.invoke(app, ["down", str(row["id"])])
    assert gone.exit_code == 0 and "tore down" in gone.output and fake.clusters == {}
    assert Ledger().get(row["id"])["status"] == "ok"  # a finished row stays as it was


def test_status_without_a_jobs_controller_lists_the_clusters(env, tmp_path, monkeypatch):
    """`nanolaunch status` crashed for anyone who never ran a managed job (jobs.queue_v2: ClusterNotUpError)."""
    import json

    fake = install(monkeypatch, tmp_path)
    fake.clusters["nl-9"] = []
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == ["nl-9"]


def test_skypilots_count_of_recoveries_stands_where_the_stream_missed_an_attempt(env):
    """A cluster lost seconds after it started may never have streamed the trainer's start: the run still
    records the recovery SkyPilot counted (what the Slurm test does not always hit, forced here)."""
    ledger = Ledger()
    run_id = ledger.add(kind="run", config={}, backend="sky", status="running", managed=1)
    follower = Follower(ledger, run_id, None)
    follower('{"event": "start", "v": 1, "time": 1.0, "mode": "train", "resumed_from_step": 20}')  # the 2nd only
    follower.settle_recoveries(1)
    assert ledger.get(run_id)["recoveries"] == 1
    assert [e["kind"] for e in ledger.events(run_id)] == ["recovered"]
    follower.settle_recoveries(1)  # what the stream already showed is not counted twice
    assert len(ledger.events(run_id)) == 1


@pytest.mark.parametrize("clouds, infra, says", [
    ((), None, "no cloud is enabled for SkyPilot on this machine: run `sky check`"),
    (("GCP",), "aws", "--infra aws: aws is not enabled for SkyPilot (enabled: gcp); run `sky check`"),
])
def test_no_usable_cloud_is_one_line_before_anything_starts(env, tmp_path, monkeypatch, clouds, infra, says):
    """Before the first SDK call (which would start an API server here): no SDK call, no ledger row."""
    fake = install(monkeypatch, tmp_path, clouds=clouds)
    with pytest.raises(NanolaunchError, match=re.escape(says)):
        skypilot.run(request(infra=infra))
    with pytest.raises(NanolaunchError, match=re.escape(says)):
        skypilot.sweep([request("dry", probe=3, infra=infra)])
    assert fake.calls == [] and Ledger().rows() == []


def test_after_an_interrupted_tail_the_whole_output_again_passes_on_only_what_is_new(tmp_path):
    """Ctrl-C stops the tail mid-line; the tail after the cancel can only start from the top. The sink drops the
    lines it has seen, and the line it held a part of comes whole."""
    seen = []
    sink = skypilot.LogSink(tmp_path / "train.log", seen.append)
    sink.write("line 1\nline 2\nline 3 sta")
    assert seen == ["line 1", "line 2"]
    replay = sink.catch_up()
    for chunk in ("line 1\nli", "ne 2\nline 3 started\nline 4\n", "line 5\n"):
        replay.write(chunk)
    sink.close()
    assert seen == ["line 1", "line 2", "line 3 started", "line 4", "line 5"]


@pytest.mark.parametrize("late", [False, True])
def test_a_failed_jobs_exit_code_is_read_even_when_its_epilogue_line_comes_after_the_tail(
        env, tmp_path, monkeypatch, late):
    """SkyPilot marks a failed job FAILED, which ends the tail, and prints its exit codes half a second later
    (seen on Slurm in CI): the follower reads the output once more for that line."""
    fake = install(monkeypatch, tmp_path)
    fake.late_epilogue = late
    broken = tmp_path / "broken-python"  # a node whose torch cannot start: no torchrun summary to read
    broken.write_text(f'#!/bin/sh\nif [ "$2" = torch.distributed.run ]; then echo "torch: cannot start" >&2; exit 7; fi\n'
                      f'exec {sys.executable} "$@"\n')
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))  # the node's Python (NL_PYTHON) in the fake
    row = skypilot.run(request())
    assert row["status"] == "crashed" and row["error"].startswith("exit 7: "), row["error"]
    assert names(fake) == ["launch", "tail_logs", *(["tail_logs"] if late else []), "down"]
    log = (env / "runs" / f"{row['id']:05d}" / "train.log").read_text()
    assert log.count("failed with return code list") == 1 and log.count("torch: cannot start") == 1
