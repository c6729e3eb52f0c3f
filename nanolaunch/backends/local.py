"""The local transport: runs the SkyPilot task's own setup and run commands on this machine.

The trainer writes to RUN_DIR/train.log (a file, not a pipe, so it outlives a killed launcher); the launcher
follows that file line by line into the run's Session (nanolaunch/session.py)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from nanolaunch import prices
from nanolaunch.ledger import Ledger
from nanolaunch.planner import data_dir
from nanolaunch.runs import LOG_NAME, RESULT_NAME
from nanolaunch.session import Ended, Request, Session, derived
from nanolaunch.task import REPO, Placement, RunOptions, single_node_env
from trainer.settings import ENV_PREFIX

POLL_SECONDS = 0.2
CANCEL_GRACE_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(req: Request, ledger: Ledger | None = None) -> dict:
    """Runs on this machine; returns the finished ledger row."""
    ledger = ledger or Ledger()
    plan = None
    if not req.config.on_cpu:  # a GPU config run here (--local) costs this machine's rate, not a cloud's
        rate, source = prices.local_rate()
        plan = {**derived(req.config, req.preset, probe=req.probe is not None), "usd_per_hour": rate,
                "price_source": f"this machine: {source}"}
    # pid: ours until the trainer starts, so a live pid keeps reconcile away
    session = Session(req, ledger, "local", nodes=1, plan=plan, pid=os.getpid())
    folder, cache = session.folder, data_dir(req.config)
    task, config = session.task(Placement(str(folder), cache, cache, RunOptions(master_port=free_port())),
                                name=f"nanolaunch-{session.run_id}")
    ledger.update(session.run_id, result_path=str(folder / RESULT_NAME))
    with session.display:
        ended = run_task(task, folder, gpus_per_node=1 if config.on_cpu else config.gpus_per_node,
                         on_start=lambda pid: ledger.update(session.run_id, pid=pid), on_line=session.feed)
    return session.finish(session.outcome(ended))


def environment(task: dict, gpus_per_node: int) -> dict[str, str]:
    """The task's envs over ours; NL_* variables of the caller's shell are not passed on: the task says them all."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env = {**inherited, **task["envs"], **single_node_env(gpus_per_node), "PYTHONUNBUFFERED": "1"}
    # torchrun sets OMP_NUM_THREADS=1 when unset; on a CPU that makes training many times slower.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus_per_node)))
    # The trainer runs in this interpreter: the one nanolaunch (and torch) is installed in.
    env["NL_PYTHON"] = sys.executable
    return env


def run_task(task: dict, run_dir: Path, *, gpus_per_node: int = 1,
             on_start: Callable[[int], None] = lambda pid: None,
             on_line: Callable[[str], None] = lambda line: None) -> Ended:
    """Setup, then run, as SkyPilot would on one node; every line of the log goes to `on_line`. Returns when
    the trainer has ended. Ctrl-C: the trainer checkpoints and reports `cancelled`; a second one kills it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / LOG_NAME
    env = environment(task, gpus_per_node)
    with open(log_path, "ab") as log:
        setup = subprocess.run(["bash", "-c", task["setup"]], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    if setup.returncode:
        return Ended(setup_exit_code=setup.returncode)
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
                    *lines, buffer = (buffer + chunk).split("\n")
                    for line in lines:
                        on_line(line)
                elif proc.poll() is not None:
                    break
                else:
                    time.sleep(POLL_SECONDS)
            except KeyboardInterrupt:
                if cancelled:  # a second Ctrl-C: stop now
                    _signal(proc, signal.SIGKILL)
                else:
                    cancelled = True
                    _signal(proc, signal.SIGINT)
                    _kill_after(proc, CANCEL_GRACE_SECONDS)
        if buffer:
            on_line(buffer)
    return Ended(exit_code=proc.returncode, cancelled=cancelled, result_file=run_dir / RESULT_NAME)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill_after(proc: subprocess.Popen, seconds: float) -> None:
    def later():
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)

    threading.Thread(target=later, daemon=True).start()
