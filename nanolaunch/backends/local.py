"""The local backend: runs the SkyPilot task's own setup and run commands on this machine.

The trainer writes to RUN_DIR/train.log (a file, not a pipe, so it outlives a killed launcher); the
launcher follows that file through the same event parser the cloud backend uses, and keeps the ledger
row current while it runs.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nanolaunch import prices
from nanolaunch.events import RunState
from nanolaunch.launch import Display, LiveRow, Request, derived, for_run, open_row, write_task
from nanolaunch.ledger import Ledger
from nanolaunch.planner import data_dir
from nanolaunch.runs import LOG_NAME, RESULT_NAME, read_result, run_dir
from nanolaunch.task import REPO, RunOptions, render, single_node_env
from trainer.events import EXIT_STATUS, trainer_exit_code
from trainer.settings import ENV_PREFIX

POLL_SECONDS = 0.2
CANCEL_GRACE_SECONDS = 60


@dataclass
class Outcome:
    status: str
    result: dict
    state: RunState
    returncode: int | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(req: Request, ledger: Ledger | None = None) -> dict:
    """Runs on this machine; returns the finished ledger row."""
    ledger = ledger or Ledger()
    plan = derived(req.config, req.preset, probe=req.probe is not None)
    if not req.config.on_cpu:  # a GPU config run here (--local) costs this machine's rate, not a cloud's
        rate, source = prices.local_rate()
        plan = {**plan, "usd_per_hour": rate, "price_source": f"this machine: {source}"}
    # pid: ours until the trainer starts, so a live pid keeps reconcile away
    run_id = open_row(ledger, req, plan, "local", nodes=1, pid=os.getpid())
    folder = run_dir(run_id)
    config = for_run(req, plan, run_dir=str(folder), data_dir=data_dir(req.config))
    task = render(config, RunOptions(master_port=free_port()), name=f"nanolaunch-{run_id}")
    write_task(folder, task, config)
    ledger.update(run_id, run_dir=str(folder), log_path=str(folder / LOG_NAME), result_path=str(folder / RESULT_NAME))

    display = Display(run_id, req, plan)
    with display:
        outcome = run_task(task, folder, gpus_per_node=1 if config.on_cpu else config.gpus_per_node,
                           on_start=lambda pid: ledger.update(run_id, pid=pid), on_event=LiveRow(ledger, run_id, display))
    ledger.finish(run_id, outcome.status, outcome.result)
    return ledger.get(run_id)


def environment(task: dict, gpus_per_node: int) -> dict[str, str]:
    """The task's envs over ours; NL_* variables of the caller's shell are not passed on: the task says them all."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env = {**inherited, **task["envs"], **single_node_env(gpus_per_node), "PYTHONUNBUFFERED": "1"}
    # torchrun sets OMP_NUM_THREADS=1 when unset; on a CPU that makes training many times slower.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus_per_node)))
    # The trainer runs in this interpreter: the one nanolaunch (and torch) is installed in.
    env["NL_PYTHON"] = sys.executable
    return env


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_task(task: dict, run_dir: Path, *, gpus_per_node: int = 1,
             on_start: Callable[[int], None] = lambda pid: None,
             on_event: Callable[[dict, RunState], None] = lambda event, state: None) -> Outcome:
    """Setup, then run, as SkyPilot would on one node. Returns when the trainer has ended."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / LOG_NAME
    env = environment(task, gpus_per_node)
    state = RunState()
    with open(log_path, "ab") as log:
        setup = subprocess.run(["bash", "-c", task["setup"]], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    if setup.returncode:
        return Outcome("crashed", {"status": "crashed", "error": f"setup failed (exit {setup.returncode}): "
                                   f"{tail(log_path, 1)}"}, state, setup.returncode)
    with open(log_path, "ab") as log:
        # Its own session: Ctrl-C in the terminal reaches only us, and we decide how the trainer stops.
        proc = subprocess.Popen(["bash", "-c", task["run"]], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    on_start(proc.pid)
    cancelled = False
    with open(log_path, "r", errors="replace") as reader:
        buffer = ""
        while True:
            try:
                chunk = reader.read()
                if chunk:
                    buffer += chunk
                    *lines, buffer = buffer.split("\n")
                    for line in lines:
                        event = state.feed(line)
                        if event is not None:
                            on_event(event, state)
                elif proc.poll() is not None:
                    break
                else:
                    time.sleep(POLL_SECONDS)
            except KeyboardInterrupt:
                if cancelled:  # a second Ctrl-C: stop now
                    _signal(proc, signal.SIGKILL)
                else:
                    cancelled = True
                    _signal(proc, signal.SIGINT)  # the trainer checkpoints and reports `cancelled`
                    _kill_after(proc, CANCEL_GRACE_SECONDS)
        if buffer:
            state.feed(buffer)
    result = read_result(run_dir / RESULT_NAME) or state.result or {}
    code = proc.returncode  # torchrun exits 1 for any failed worker: the trainer's own code is in its summary
    if code:
        code = trainer_exit_code(log_path.read_text(errors="replace")) or code
    status = result.get("status") or ("cancelled" if cancelled else EXIT_STATUS.get(code, "crashed"))
    if status == "crashed" and not result.get("error"):
        result = {**result, "error": f"exit {code}: {tail(log_path, 3)}"}
    return Outcome(status, result, state, proc.returncode)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill_after(proc: subprocess.Popen, seconds: float) -> None:
    import threading

    def later():
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)

    threading.Thread(target=later, daemon=True).start()
