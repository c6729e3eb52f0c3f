"""The CLI's contract with people and scripts: a usage error is one line on stderr (exit 2), and every
command's --json is one JSON document on stdout. Fast: no training, no cloud."""
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nanolaunch.cli import app
from nanolaunch.ledger import Ledger


def nl(home, *args):
    return subprocess.run([sys.executable, "-m", "nanolaunch.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NANOLAUNCH_HOME": str(home)})


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "nl"
    monkeypatch.setenv("NANOLAUNCH_HOME", str(home))
    return home


def test_unknown_option_is_one_line_naming_the_help(home):
    r = nl(home, "plan", "d10", "--bogus")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: No such option: --bogus") and "nanolaunch plan --help" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["plan", "d10", "--iterations", "abc"], "--iterations"),
    (["nosuchcmd"], "nosuchcmd"),
    (["show"], "Missing argument"),
    (["preset", "show"], "Missing argument"),
    (["ledger", "add", "--bogus"], "nanolaunch ledger add --help"),
    (["plan", "d12", "--ratio", "inf"], "ratio must be positive and at most 10,000 tokens per parameter"),
    (["plan", "d12", "--ratio", "nan"], "ratio must be positive and at most 10,000 tokens per parameter"),
    (["plan", "d12", "--gpu", "H100:"], "give the count after ':'"),
    (["dry", "--preset", "cpu_demo", "--memory-limit-gib", "-1", "--local"], "--memory-limit-gib must be a finite number in (0, ∞)"),
    (["run", "d12", "--max-cost", "-1"], "--max-cost must be a finite number in (0, ∞)"),
])
def test_usage_errors_are_one_line_exit_2(home, args, words):
    r = nl(home, *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ") and words in r.stderr, r.stderr
    assert "╭" not in r.stderr and "Usage:" not in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["plan", "--help"], ["ledger", "add", "--help"]])
def test_help_still_exits_0(home, args):
    r = nl(home, *args)
    assert r.returncode == 0 and "Usage:" in r.stdout and r.stderr == ""


def test_a_nanolaunch_error_keeps_its_exit_code(home):
    r = nl(home, "show", "7")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "no run #7" in r.stderr


def test_shared_options_read_the_same_everywhere():
    from typer.main import get_command

    group = get_command(app)
    helps = {}
    for path in (["plan"], ["run"], ["yaml"], ["dry"], ["ledger", "add"]):
        cmd = group
        for name in path:
            cmd = cmd.commands[name]
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt in ("--gpu", "--iterations", "--ratio", "--spot", "--nodes", "--title", "--json", "--local"):
                    helps.setdefault(opt, set()).add(p.help)
    assert helps.keys() >= {"--gpu", "--iterations", "--spot", "--json"}
    assert all(len(h) == 1 for h in helps.values()), helps


def test_yaml_json_is_the_task_with_checkpoint_every(home):
    from trainer.settings import env_name

    r = nl(home, "yaml", "d10", "--gpu", "H100", "--checkpoint-every", "77", "--json")
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)
    assert task["name"] == "nl-manual" and "resources" in task and "run" in task
    assert task["envs"][env_name("checkpoint_every")] == "77"


def test_run_passes_checkpoint_every_to_the_config(home, monkeypatch):
    from nanolaunch.commands import run as run_cmd

    seen = []

    def fake_run_local(req):
        seen.append(req)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run_cmd, "run_local", fake_run_local)
    result = CliRunner().invoke(app, ["run", "d2", "--gpu", "cpu", "--iterations", "3", "--checkpoint-every", "7"])
    assert seen and seen[0].config.train.checkpoint_every == 7, result.output


def test_ledger_add_then_logs_json_prints_the_row_after_the_log(home, tmp_path):
    added = nl(home, "ledger", "add", "d10", "--gpu", "cpu", "--title", "by hand", "--json")
    assert added.returncode == 0, added.stderr
    run_id = json.loads(added.stdout)["id"]
    log = tmp_path / "train.log"
    log.write_text("step 1 loss 9.0\nstep 2 loss 8.5\n")
    Ledger().update(run_id, log_path=str(log))
    r = nl(home, "logs", str(run_id), "--no-follow", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)  # the log went to stderr: stdout is only the row
    assert row["id"] == run_id and row["title"] == "by hand" and row["status"] == "ok"
    assert "step 2 loss 8.5" in r.stderr
    plain = nl(home, "logs", str(run_id), "--no-follow")
    assert plain.stdout == log.read_text()


def test_down_json(home, monkeypatch):
    from nanolaunch.backends import sky_sdk

    run_id = Ledger().add(kind="run", status="running", title="t", backend="skypilot", cluster="nl-1",
                          sky_job_id=1, config={})
    monkeypatch.setattr(sky_sdk, "down", lambda cluster: True)
    result = CliRunner().invoke(app, ["down", str(run_id), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d == {"run": run_id, "cluster": "nl-1", "managed": False, "existed": True, "done": "tore down",
                 "cancelled_runs": [run_id]}
    assert Ledger().get(run_id)["status"] == "cancelled"
