"""The product loop on this machine, for real: run, ledger, show, dry with a real OOM, kill, promote."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import nl, tiny_preset
from nanolaunch.ledger import pid_alive
from trainer.hardware import this_cpu



@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "presets").mkdir()
    (home / "presets" / "tiny.toml").write_text(tiny_preset(10))
    (home / "presets" / "tiny_long.toml").write_text(tiny_preset(400))
    (home / "presets" / "tiny_probe.toml").write_text('base = "tiny"\n[config]\nseq_len = 256\ntotal_batch = 65536\n')
    return home


def rows(home):
    r = nl(home, "ledger", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_until_stepping(home, title, launcher):
    """The ledger row of the run titled `title`, once its trainer has logged a step (None if the launcher
    ended first)."""
    while launcher.poll() is None:
        found = [x for x in rows(home) if x["title"] == title and x["run_dir"]]
        log = os.path.join(found[0]["run_dir"], "train.log") if found else ""
        if log and os.path.exists(log) and '"event": "step"' in open(log).read():
            return found[0]
        time.sleep(0.2)
    return None


def test_run_records_the_result_and_show_plots_it(home, tmp_path):
    r = nl(home, "run", "--preset", "tiny", "--title", "first", "--project", "t", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["steps"] == 10 and row["val_bpb"] > 0
    assert row["mfu"] is None  # a CPU has no known peak: unknown, never guessed
    assert row["cost_usd"] == 0 and row["wall_seconds"] > 0 and row["peak_memory_gib"] > 0
    assert 0 < row["eval_seconds"] < row["wall_seconds"] and row["step_ms_mean"] >= 0.5 * row["step_ms"]
    assert 0 < row["gzip_bpb"] < 8 and row["machine"] == this_cpu().key and this_cpu().model in row["device_name"]
    listed = [x for x in rows(home) if x["id"] == row["id"]][0]
    for key in ("id", "project", "title", "kind", "status", "preset", "gpu", "wall_seconds", "cost_usd", "val_bpb",
                "mfu", "tokens_per_second", "peak_memory_gib"):
        assert key in listed
    assert (home / "runs" / f"{row['id']:05d}" / "task.yaml").exists()
    png = tmp_path / "curve.png"
    shown = nl(home, "show", str(row["id"]), "--plot", str(png))
    assert shown.returncode == 0, shown.stderr
    assert "val_bpb" in shown.stdout and "loss" in shown.stdout and "gzip -9 on the same text" in shown.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    promoted = nl(home, "preset", "promote", str(row["id"]), "--name", "tiny_promoted")
    assert promoted.returncode == 0, promoted.stderr
    plan = json.loads(nl(home, "plan", "--preset", "tiny_promoted", "--json").stdout)
    original = json.loads(nl(home, "plan", "--preset", "tiny", "--json").stdout)
    assert plan["config"] == original["config"]
    # after the run, the plan of its preset predicts from what it measured, start-up included
    assert original["mfu_source"].startswith(f"measured tokens/s (ledger #{row['id']}: run d")
    assert 0 < original["startup_seconds"] < row["wall_seconds"]
    assert plan["step_seconds"] is not None  # the promoted run's measured tokens/s now predicts its step time


def test_dry_records_every_probe_and_a_real_oom(home):
    r = nl(home, "dry", "--preset", "tiny_probe", "--batch", "8,256", "--iters", "2", "--memory-limit-gib", "2.0",
           "--force", "--project", "probe", "--json")
    assert r.returncode == 0, r.stderr
    probes = json.loads(r.stdout)
    assert [p["device_batch"] for p in probes] == [8, 256]
    assert probes[0]["status"] == "ok" and probes[0]["best"] and probes[0]["eval_seconds"] == 0
    assert probes[1]["status"] == "oom"
    log = open(os.path.join(probes[1]["run_dir"], "train.log")).read()
    assert '"status": "oom"' in log  # the probe process itself reported running out of memory
    ledger_ids = {x["id"] for x in rows(home) if x["kind"] == "dry"}
    assert {p["id"] for p in probes} <= ledger_ids


def test_a_killed_launcher_leaves_an_open_row_that_reconciles(home):
    env = {**os.environ, "NANOLAUNCH_HOME": str(home)}
    launcher = subprocess.Popen([sys.executable, "-m", "nanolaunch.cli", "run", "--preset", "tiny_long", "--title",
                                 "killed", "--project", "kill"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    row = wait_until_stepping(home, "killed", launcher)
    assert row is not None, "the run never started stepping"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    shown = [x for x in rows(home) if x["id"] == row["id"]][0]
    assert shown["status"] == "running" and shown["ended_at"] is None  # the ledger opens; not shown as finished
    import sqlite3
    pid = sqlite3.connect(home / "ledger.db").execute("SELECT pid FROM runs WHERE id = ?", (row["id"],)).fetchone()[0]
    assert pid
    while pid_alive(pid):  # the trainer carries on without its launcher; wait for it to end, however long
        time.sleep(0.2)
    final = [x for x in rows(home) if x["id"] == row["id"]][0]
    assert final["status"] == "ok" and final["val_bpb"] is not None


def test_ctrl_c_cancels_cleanly(home):
    env = {**os.environ, "NANOLAUNCH_HOME": str(home)}
    launcher = subprocess.Popen([sys.executable, "-m", "nanolaunch.cli", "run", "--preset", "tiny_long", "--title",
                                 "interrupted", "--project", "cancel"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # ^ a shell that started the tests in the background (`cmd &`) made them ignore SIGINT, and an ignored
    #   signal stays ignored across exec: Ctrl-C must reach the launcher as it does from a terminal
    assert wait_until_stepping(home, "interrupted", launcher) is not None
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait() != 0
    final = [x for x in rows(home) if x["title"] == "interrupted"][0]
    assert final["status"] == "cancelled" and final["ended_at"] is not None


def test_a_crash_is_recorded_with_the_log_tail(home):
    (home / "presets" / "no_data.toml").write_text('base = "tiny"\n[config]\ndata = "/nonexistent/nanolaunch-test-data"\n')
    r = nl(home, "run", "--preset", "no_data", "--title", "crash", "--json")
    assert r.returncode != 0
    row = json.loads(r.stdout)
    assert row["status"] == "crashed" and row["error"]
    assert [x for x in rows(home) if x["title"] == "crash"][0]["status"] == "crashed"


def test_a_local_run_with_a_budget_runs_on_a_free_machine(home):
    """--max-cost on this machine (price $0/h) used to crash: the trainer refused a price of 0."""
    r = nl(home, "run", "--preset", "tiny", "--max-cost", "5", "--title", "budget", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["steps"] == 10


def test_the_local_backend_checkpoints_every_n_steps(home):
    """--checkpoint-every reaches the trainer on this machine too (the local backend used to drop it)."""
    r = nl(home, "run", "--preset", "tiny", "--checkpoint-every", "4", "--title", "checkpoints", "--json")
    assert r.returncode == 0, r.stderr
    log = open(os.path.join(json.loads(r.stdout)["run_dir"], "train.log")).read()
    steps = [json.loads(line)["step"] for line in log.splitlines() if line.startswith('{"event": "checkpoint"')]
    assert steps == [4, 8, 10]


def test_a_gpu_config_run_here_costs_this_machines_rate(home):
    """`run --local` of an H100 config trains on this machine: the row is priced at the local rate, not a cloud's."""
    r = nl(home, "run", "--preset", "tiny", "--gpu", "H100:1", "--local", "--iterations", "2", "--json",
           env={**os.environ, "NANOLAUNCH_LOCAL_USD_PER_HOUR": "1.5"})
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout)
    assert row["usd_per_hour"] == 1.5 and row["price_source"].startswith("this machine: local rate")
    assert row["cost_usd"] == pytest.approx(1.5 * row["wall_seconds"] / 3600)
