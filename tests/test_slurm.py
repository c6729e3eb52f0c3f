"""nanolaunch through the real SkyPilot client and API server onto a real Slurm cluster on this machine.

`bash tests/slurm_cluster/up.sh` brings the cluster and the API server up (CI does, then sets NANOLAUNCH_TEST_SLURM to
the infra, e.g. slurm/nl-local); without it these tests are skipped. Every launch is a real sbatch allocation
reached over SSH; nothing is faked. The tasks name no GPU, so SkyPilot never fetches a GPU catalog.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import nl as run_nl, tiny_preset

INFRA = os.environ.get("NANOLAUNCH_TEST_SLURM")
ENDPOINT = os.environ.get("SKYPILOT_API_SERVER_ENDPOINT", "http://127.0.0.1:46580")  # where up.sh starts it
pytestmark = pytest.mark.skipif(not INFRA, reason="no local Slurm cluster: bash tests/slurm_cluster/up.sh, then set "
                                                   "NANOLAUNCH_TEST_SLURM=slurm/<name>")
REPO = Path(__file__).resolve().parent.parent
TINY = dict(checkpoint_every=5, data="synthetic", threads=1)  # no data to fetch; one thread each


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("nl-slurm-home")
    (home / "presets").mkdir()
    (home / "presets" / "slurm_tiny.toml").write_text(tiny_preset(8, **TINY))
    return home


def client_env(home, **extra) -> dict:
    """The launcher as a user runs it against the API server up.sh started: its home, the cluster's shared
    path (this machine's disk: the one node), and the Python every node already has."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKY_RUNTIME_DIR",)}
    return {**env, "NANOLAUNCH_SHARED_STORE": str(home / "shared"),
            "NANOLAUNCH_NODE_PYTHON": sys.executable, "SKYPILOT_API_SERVER_ENDPOINT": ENDPOINT,
            "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", **extra}


def nl(home, *args, **extra) -> subprocess.CompletedProcess:
    return run_nl(home, *args, env=client_env(home, **extra))


def slurm_allocations() -> list[tuple[str, str]]:
    """(Slurm job id, name) of every allocation SkyPilot holds for nanolaunch: one per cluster."""
    out = subprocess.run(["squeue", "--noheader", "--format=%i %j"], capture_output=True, text=True, check=True)
    return [tuple(line.split()) for line in out.stdout.splitlines() if line.split()[1].startswith("nl-")]


def slurm_jobs() -> list[str]:
    return [name for _, name in slurm_allocations()]


def test_the_api_server_cannot_probe_public_addresses():
    """Before any launch: SkyPilot's network checks (8.8.8.8, 1.1.1.1 every 15 s from the jobs controller) are
    no-ops in the API server's interpreter: up.sh patched this venv before starting it. Compared, never called
    (calling the unpatched check would send the very traffic it must not)."""
    check = ("import sky.backends.backend_utils as b, nanolaunch_offline as o; "
             "assert o.active() and o.patched(); "
             "assert b.check_network_connection is o.check_network_connection; print('patched')")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0 and "patched" in done.stdout, done.stderr
    server = subprocess.run(["bash", str(REPO / "tests" / "slurm_cluster" / "check-offline.sh")], capture_output=True,
                            text=True)
    assert server.returncode == 0, server.stdout + server.stderr  # the running server has the patch too


def test_a_run_on_slurm_records_ok_streams_its_log_and_leaves_no_cluster(home):
    r = nl(home, "run", "--preset", "slurm_tiny", "--infra", INFRA, "--title", "slurm ok", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["steps"] == 8 and row["val_bpb"] > 0, row
    assert row["backend"] == "sky" and row["cluster"] == f"nl-{row['id']}"
    log = (home / "runs" / f"{row['id']:05d}" / "train.log").read_text()
    assert log.count('"event": "step"') == 8 and '"event": "result"' in log  # SkyPilot's stream, as it came
    checkpoints = home / "shared" / "runs" / f"{row['id']:05d}" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000005", "step_000008"]  # on the shared path
    events = [e["kind"] for e in json.loads(nl(home, "show", row["id"], "--json").stdout)["events"]]
    assert "launch" in events and "down" in events
    assert f"nl-{row['id']}" not in slurm_jobs()  # its allocation is gone


def test_a_trainer_that_fails_is_recorded_with_its_exit_code_and_log_tail(home):
    """A node whose torch cannot start (a broken environment): no result event, and SkyPilot's tail_logs says
    only FAILED (100); the exit code is in SkyPilot's log line."""
    broken = home / "shared" / "broken-python"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text(f'#!/bin/sh\nif [ "$2" = torch.distributed.run ]; then echo "torch: cannot start" >&2; exit 7; fi\n'
                      f'exec {sys.executable} "$@"\n')
    broken.chmod(0o755)
    r = nl(home, "run", "--preset", "slurm_tiny", "--infra", INFRA, "--title", "slurm crash", "--json",
           NANOLAUNCH_NODE_PYTHON=broken)
    assert r.returncode == 1
    row = json.loads(r.stdout)
    assert row["status"] == "crashed" and row["error"].startswith("exit 7: "), row["error"]
    assert "torch: cannot start" in row["error"]
    assert f"nl-{row['id']}" not in slurm_jobs()


def test_the_trainers_own_exit_code_reaches_the_ledger_through_torchrun(home):
    """Trainers that exit 130, 4 and 3 without a result line (one probe sweep: one cluster, three jobs, the exit
    code chosen by the job's device batch): torchrun exits 1 and SkyPilot's epilogue says 1; each row still
    records the trainer's own code, read from torchrun's failure summary."""
    codes = {1: (130, "cancelled"), 2: (4, "over_budget"), 4: (3, "oom")}
    wrapper = home / "shared" / "exits"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f"""#!/bin/bash
if [ "$2" = torch.distributed.run ]; then
  args=(); for a in "$@"; do [ "$a" = trainer.train ] && a=exiting_trainer; args+=("$a"); done
  case "$NL_DEVICE_BATCH" in 1) code=130;; 2) code=4;; *) code=3;; esac
  PYTHONPATH={REPO / "tests"} NL_TEST_EXIT=$code exec {sys.executable} "${{args[@]}}"
fi
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    r = nl(home, "dry", "--preset", "slurm_tiny", "--infra", INFRA, "--batch", "1,2,4", "--iters", "3", "--json",
           NANOLAUNCH_NODE_PYTHON=wrapper)
    probes = json.loads(r.stdout)
    assert [p["device_batch"] for p in probes] == [1, 2, 4], r.stderr[-3000:]
    for p in probes:
        code, status = codes[p["device_batch"]]
        assert p["status"] == status and p["error"].startswith(f"exit {code}: "), p
    assert not {p["cluster"] for p in probes} & set(slurm_jobs())


def test_a_hub_dataset_streams_onto_slurm_and_training_starts_before_the_fetch_ends(home, hub, tmp_path):
    """The loopback Hub serves 12 files through a 1 MB/s link (HF_ENDPOINT travels to the node with the task):
    the first step comes before the last training file is sent, and the second run on the same data trains no
    tokenizer."""
    from trainer.corpus import build_stdlib_corpus

    paths = build_stdlib_corpus(tmp_path / "many", n_shards=12, docs_per_row_group=4, max_chars=1_200_000)
    hub.add("tests/slurm-stream", {f"data/train-{i:02d}.parquet": p.read_bytes() for i, p in enumerate(paths)})
    (home / "presets" / "slurm_hub.toml").write_text(tiny_preset(
        150, threads=1, data="tests/slurm-stream", shards=12, fetch_ahead=1, tokenizer_chars=200_000,
        seq_len=64, device_batch=8, total_batch=512))
    hub.rate = 1_000_000
    try:
        r = nl(home, "run", "--preset", "slurm_hub", "--infra", INFRA, "--title", "slurm hub", "--json")
    finally:
        hub.rate = None
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout)
    log = (home / "runs" / f"{row['id']:05d}" / "train.log").read_text()
    steps = [json.loads(x[x.index("{"):]) for x in log.splitlines() if '"event": "step"' in x]
    training = [t for p, t in hub.sent.items() if p.startswith("data/train-") and p != "data/train-11.parquet"]
    assert steps and len(training) > 2
    assert steps[0]["time"] < max(training)  # training began while files were still coming
    assert "tokenizer: trained" in log
    again = nl(home, "run", "--preset", "slurm_hub", "--infra", INFRA, "--iterations", "3", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    log = (home / "runs" / f"{json.loads(again.stdout)['id']:05d}" / "train.log").read_text()
    assert "tokenizer: trained" not in log and "trained by an earlier run on this data" in log


def test_no_script_copy_on_the_node_holds_a_secret_after_the_run(home):
    """SkyPilot writes envs and secrets into the setup and run scripts it leaves on the node; the run command
    unlinks this run's copies (docs/cloud.md, "Secrets")."""
    import glob
    import secrets as random

    secret = f"wandb-{random.token_hex(8)}"
    r = nl(home, "run", "--preset", "slurm_tiny", "--infra", INFRA, "--title", "slurm secret", "--json",
           WANDB_API_KEY=secret)
    assert r.returncode == 0, r.stderr[-3000:]
    places = ["/tmp/sky_setup_*", "/tmp/sky_app_*", *(f"{h}/.sky/sky_app/sky_job_*" for h in {Path.home(), "/root"})]
    holding = [f for pattern in places for f in glob.glob(pattern)
               if Path(f).is_file() and secret.encode() in Path(f).read_bytes()]
    assert not holding


def test_a_probe_sweep_runs_every_batch_on_one_cluster(home):
    r = nl(home, "dry", "--preset", "slurm_tiny", "--infra", INFRA, "--batch", "2,4", "--iters", "3", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    probes = json.loads(r.stdout)
    assert [p["device_batch"] for p in probes] == [2, 4] and all(p["status"] == "ok" for p in probes)
    rows = json.loads(nl(home, "ledger", "--json").stdout)
    clusters = {x["cluster"] for x in rows if x["id"] in {p["id"] for p in probes}}
    assert len(clusters) == 1 and not set(slurm_jobs()) & clusters


def test_ctrl_c_mid_run_stops_the_trainer_and_leaves_no_cluster(home):
    """Ctrl-C: the job is cancelled (on the clouds SkyPilot's SIGTERM lets the trainer checkpoint), then the
    cluster is torn down; the row says cancelled."""
    import signal
    import time

    (home / "presets" / "slurm_long.toml").write_text(tiny_preset(100_000, **TINY))
    launcher = subprocess.Popen([sys.executable, "-m", "nanolaunch.cli", "run", "--preset", "slurm_long", "--infra",
                                 INFRA, "--title", "slurm ctrl-c", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                                env={**client_env(home), "NANOLAUNCH_HOME": str(home)},
                                cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # ^ a shell that started the tests in the background (`cmd &`) made them ignore SIGINT, and an ignored
    #   signal stays ignored across exec: Ctrl-C must reach the launcher as it does from a terminal

    def steps_logged() -> int:
        rows = [x for x in json.loads(nl(home, "ledger", "--json").stdout) if x["title"] == "slurm ctrl-c"]
        log = home / "runs" / f"{rows[0]['id']:05d}" / "train.log" if rows else None
        return log.read_text(errors="replace").count('"event": "step"') if log and log.exists() else 0

    while launcher.poll() is None and steps_logged() < 3:  # the trainer's first steps, however long it takes
        time.sleep(0.5)
    assert launcher.poll() is None, "the run ended before it could be interrupted"
    launcher.send_signal(signal.SIGINT)
    out, _ = launcher.communicate()
    row = [x for x in json.loads(nl(home, "ledger", "--json").stdout) if x["title"] == "slurm ctrl-c"][0]
    assert row["status"] == "cancelled", row
    assert row["ended_at"] is not None and f"nl-{row['id']}" not in slurm_jobs()
    events = [e["kind"] for e in json.loads(nl(home, "show", row["id"], "--json").stdout)["events"]]
    assert events.index("cancel") < events.index("down")  # the job is cancelled before its cluster goes
    # Slurm ends a cancelled step outright (the trainer gets no chance to checkpoint): what it saved is kept,
    # and the ledger names the checkpoint that outlived the teardown
    kept = [e["detail"] for e in json.loads(nl(home, "show", row["id"], "--json").stdout)["events"]
            if e["kind"] == "checkpoint_kept"]
    assert len(kept) == 1 and kept[0].startswith("step "), kept
    step = int(kept[0].split()[1].rstrip(":"))
    assert (home / "shared" / "runs" / f"{row['id']:05d}" / "checkpoints" / f"step_{step:06d}").is_dir()


def test_the_trainer_stops_itself_at_the_budget(tmp_path):
    """--max-cost reaches the trainer, which checkpoints and ends over_budget at the run's price (here a
    Slurm cluster's rate of $360/h, set by the user as for any machine of their own)."""
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "slurm_long.toml").write_text(tiny_preset(100_000, **TINY))
    r = nl(tmp_path, "run", "--preset", "slurm_long", "--infra", INFRA, "--max-cost", "0.5", "--json",
           NANOLAUNCH_LOCAL_USD_PER_HOUR="360")
    assert r.returncode == 1, r.stderr[-2000:]
    row = json.loads(r.stdout)
    assert row["status"] == "over_budget" and 0 < row["steps"] < 100_000, row
    assert row["usd_per_hour"] == 360 and row["cost_usd"] >= 0.5
    checkpoints = sorted((tmp_path / "shared" / "runs" / f"{row['id']:05d}" / "checkpoints").iterdir())
    assert checkpoints[-1].name == f"step_{row['steps']:06d}"  # it saved where it stopped
    assert f"nl-{row['id']}" not in slurm_jobs()


def test_a_managed_job_whose_allocation_is_cancelled_is_recovered_and_resumes(home):
    """`run --managed`: SkyPilot's jobs controller (inside the API server, network probes patched off: see the
    first test) watches the job. Its Slurm allocation is cancelled mid-run, as a node failure or a preemption
    would end it; SkyPilot launches a new cluster and the trainer resumes from its last checkpoint on the shared
    path. The ledger shows the recovery and the cost of the whole span, both clusters."""
    import time

    (home / "presets" / "slurm_managed.toml").write_text(
        tiny_preset(1000, **{**TINY, "checkpoint_every": 20, "eval_every": 100}))
    launcher = subprocess.Popen([sys.executable, "-m", "nanolaunch.cli", "run", "--preset", "slurm_managed", "--infra",
                                 INFRA, "--managed", "--title", "slurm managed", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, cwd=REPO,
                                env={**client_env(home, NANOLAUNCH_LOCAL_USD_PER_HOUR="360"),
                                     "NANOLAUNCH_HOME": str(home)})
    row = None
    while launcher.poll() is None and row is None:  # the ledger row, then its log, however long they take
        rows = [x for x in json.loads(nl(home, "ledger", "--json").stdout) if x["title"] == "slurm managed"]
        row = rows[0] if rows else time.sleep(0.5)
    log = home / "runs" / f"{row['id']:05d}" / "train.log"

    def streamed(text: str) -> bool:
        return log.exists() and text in log.read_text(errors="replace")

    while launcher.poll() is None and not streamed('"event": "checkpoint"'):  # a checkpoint to resume from
        time.sleep(0.5)
    seen = max(json.loads(x[x.index("{"):])["step"] for x in log.read_text(errors="replace").splitlines()
               if '"event": "checkpoint"' in x)
    allocation = [j for j in slurm_allocations() if j[1].startswith(f"nl-{row['id']}-")]
    assert launcher.poll() is None and len(allocation) == 1, (launcher.poll(), slurm_allocations())
    subprocess.run(["scancel", allocation[0][0]], check=True)  # the cluster is gone, mid-run
    out, _ = launcher.communicate()
    assert launcher.returncode == 0, out
    row = json.loads(out)
    assert row["status"] == "ok" and row["steps"] == 1000 and row["val_bpb"] > 0, row
    assert row["recoveries"] == 1
    text = log.read_text(errors="replace")
    starts = [json.loads(x[x.index("{"):]) for x in text.splitlines() if '"event": "start"' in x]
    resumed = starts[-1]["resumed_from_step"]
    # From a checkpoint at least as new as the one seen before the cancel, not from step 0 (the first attempt
    # may save more before Slurm's SIGTERM ends it, and its last lines may never reach the stream)
    assert len(starts) == 2 and resumed >= seen >= 20, (resumed, seen)
    checkpoints = home / "shared" / "runs" / f"{row['id']:05d}" / "checkpoints"
    assert f"resume: {checkpoints / f'step_{resumed:06d}'} " in text  # from the shared path
    events = {e["kind"]: e["detail"] for e in json.loads(nl(home, "show", row["id"], "--json").stdout)["events"]}
    assert events["recovered"] == f"resumed from step {resumed}" and "preempted" in events
    assert "ok (1 recovery)" in nl(home, "ledger").stdout
    assert nl(home, "logs", str(row["id"])).returncode == 0  # reattaching replays what SkyPilot still has
    assert log.read_text(errors="replace") == text and '"event": "start"' in (log.parent / "reattach-1.log").read_text()
    result = json.loads(text[text.rindex('{"event": "result"'):].splitlines()[0])
    # The cost runs from the submission to the end: both clusters' time, at the cluster's rate.
    assert row["cost_usd"] == pytest.approx(360 * row["wall_seconds"] / 3600)
    assert row["wall_seconds"] > result["total_wall_seconds"]  # both attempts' training and more
    gone_by = time.monotonic() + 600  # a bound on a hang only: SkyPilot tears it down after the job
    while any(name.startswith(f"nl-{row['id']}-") for _, name in slurm_allocations()):
        assert time.monotonic() < gone_by, "SkyPilot left the recovered cluster up"
        time.sleep(1)
