"""A run's folder under NANOLAUNCH_HOME/runs/<id>, and reconciling ledger rows with what is on disk."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from nanolaunch.events import RunState
from nanolaunch.ledger import Ledger, pid_alive
from nanolaunch.presets import home

LOG_NAME = "train.log"
RESULT_NAME = "result.json"


def runs_dir() -> Path:
    return home() / "runs"


def run_dir(run_id: int) -> Path:
    return runs_dir() / f"{run_id:05d}"


def git_commit() -> str | None:
    """The launcher's own checkout commit, so a ledger row says which code produced it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def read_result(path: str | Path | None) -> dict | None:
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # absent, or a reader raced a writer that is not atomic: treat as not there yet
    return data if isinstance(data, dict) and data.get("status") else None


def follow_log(path: str | Path | None) -> RunState:
    """Replays a run's log through the event parser (for `show` and reconciliation)."""
    state = RunState()
    if path and Path(path).exists():
        with open(path, errors="replace") as f:
            for line in f:
                state.feed(line)
    return state


def reconcile(ledger: Ledger) -> list[int]:
    """Closes rows left 'running' by a launcher that died: from the trainer's result file when it finished,
    as crashed when its trainer is gone without one. Rows whose trainer still runs stay open."""
    closed = []
    for row in ledger.running():
        if row["backend"] != "local":
            continue
        result = read_result(row["result_path"])
        if result is None:
            result = follow_log(row["log_path"]).result
        if result is not None:
            ended = Path(row["result_path"]).stat().st_mtime if row["result_path"] and os.path.exists(
                row["result_path"]) else time.time()
            ledger.finish(row["id"], result["status"], result, ended_at=ended)
            closed.append(row["id"])
        elif not pid_alive(row["pid"]):
            state = follow_log(row["log_path"])
            figures = {"val_bpb": state.val_bpb, "steps": state.last_step["step"] if state.last_step else None,
                       "error": "the trainer ended without a result (its launcher was killed?)"}
            ledger.finish(row["id"], "crashed", figures)
            closed.append(row["id"])
    return closed
