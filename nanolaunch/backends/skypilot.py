"""The SkyPilot transport: runs and probe sweeps on SkyPilot clusters, spot runs as managed jobs.

The task is the one the local backend runs (nanolaunch/task.py); only where it runs differs. A run with --spot
(or --managed) is a managed job that SkyPilot recovers after preemption (the trainer resumes from the bucket);
everything else runs on a cluster of its own, launched with autostop-and-down and torn down when the command
ends, fails or is interrupted. Cost = the price recorded at launch (× nodes) × the time from the launch request
to teardown. The SDK calls are in sky_sdk.py; the run's life is its Session's (nanolaunch/session.py).
"""
from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Callable

from nanolaunch import output as out
from nanolaunch.backends import sky_sdk
from nanolaunch.errors import NotLaunched
from nanolaunch.events import RunState
from nanolaunch.ledger import Ledger
from nanolaunch.runs import LOG_NAME, run_dir
from nanolaunch.session import SKY_JOB_FAILED, Ended, Follower, Request, Session, for_run, outcome
from nanolaunch.task import placement, render
from trainer import events

PREFIX = "nl-"  # every cluster and managed job nanolaunch starts is named nl-<run id>
# The run command's real exit codes, printed by SkyPilot's job epilogue (sky/backends/task_codegen.py)
JOB_FAILED = re.compile(r"Job \d+ failed with return code list:(?:\x1b\[[0-9;]*m)?\s*\[([0-9, ]*)\]")
SETUP_FAILED = re.compile(r"Job \d+'s setup failed with return code (\d+)")


class Epilogue:
    """Passes the job's output lines on, keeping the exit codes SkyPilot's job epilogue prints into it
    (tail_logs itself returns the job's state, never its exit code)."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line = on_line
        self.job_exit_code: int | None = None
        self.setup_exit_code: int | None = None

    def __call__(self, line: str) -> None:
        setup = SETUP_FAILED.search(line)
        if setup:
            self.setup_exit_code = int(setup.group(1))
        failed = JOB_FAILED.search(line)
        if failed:
            codes = [int(c) for c in re.findall(r"\d+", failed.group(1))]
            self.job_exit_code = next((c for c in codes if c != 137), codes[0] if codes else None)
        self.on_line(line)

    def ended(self, sky_status: int | None) -> Ended:
        return Ended(exit_code=self.job_exit_code, setup_exit_code=self.setup_exit_code, sky_status=sky_status)


class LogSink(io.TextIOBase):
    """SkyPilot writes the job's output here: appended to the run's train.log and fed line by line onward."""

    def __init__(self, log_path: Path, on_line: Callable[[str], None], mode: str = "a"):
        self.log = open(log_path, mode, errors="replace")
        self.on_line = on_line
        self.pending = ""
        self.lines = 0  # whole lines passed on

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.lines += 1
            self.on_line(line.rstrip("\r"))
        return len(text)

    def catch_up(self) -> "io.TextIOBase":
        """A stream for the job's whole output once more (an interrupted tail can only start over): the lines
        this sink has passed on are dropped, the rest comes here."""
        sink, skip = self, self.lines

        class Skipping(io.TextIOBase):
            def writable(self) -> bool:
                return True

            def write(self, text: str) -> int:
                nonlocal skip
                if skip > 0:
                    head, sep, rest = text.partition("\n")
                    while skip > 0 and sep:
                        skip -= 1
                        head, sep, rest = rest.partition("\n")
                    if skip > 0:
                        return len(text)
                    sink.pending = ""  # a line it held a part of comes whole now
                    text = head + sep + rest
                sink.write(text)
                return len(text)

        return Skipping()

    def close(self) -> None:
        if self.pending:
            self.on_line(self.pending)
            self.pending = ""
        self.log.close()
        super().close()


def dryrun(req: Request, plan: dict) -> dict:
    """The run's task, validated by SkyPilot, and the instance SkyPilot's optimizer picks for it."""
    place = placement(req.config, "dryrun", managed=req.recovered, disk=plan["disk"])
    task = render(for_run(req, plan, place), place.opts, name=f"{PREFIX}dryrun")
    chosen = sky_sdk.optimize(sky_sdk.to_task(task))
    return {"name": task["name"], "nodes": task["num_nodes"], "accelerators": req.config.gpu,
            "skypilot": chosen, "plan": {k: plan[k] for k in ("usd_per_hour", "price_source", "wall_hours", "cost_usd")}}


def run(req: Request, ledger: Ledger | None = None) -> dict:
    """One run in the cloud; returns its finished ledger row."""
    if req.recovered:
        return _managed(req, ledger or Ledger())
    return sweep([req], ledger)[0]


def _prepare(session: Session, managed: bool):
    """The run's task as SkyPilot takes it (secrets from the environment), and the sink its output goes to."""
    place = placement(session.req.config, f"{session.run_id:05d}", managed=managed, disk=session.plan["disk"])
    task, _ = session.task(place, name=f"{PREFIX}{session.run_id}")
    epilogue = Epilogue(session.feed)
    return sky_sdk.to_task(task, sky_sdk.secrets_from_env()), LogSink(session.log_path, epilogue), epilogue


def sweep(reqs: list[Request], ledger: Ledger | None = None,
          stop: Callable[[list[dict]], bool] = lambda done: False) -> list[dict]:
    """The requests one after another on one cluster (a probe sweep provisions once), then teardown.

    Each row is finished when its job ends, except the last, which also pays for the teardown. `stop`
    sees the rows so far after each job (the last one still open) and ends the sweep early."""
    ledger = ledger or Ledger()
    if reqs:
        sky_sdk.preflight(reqs[0].config)
    sessions: list[Session] = []
    cluster, price, pending = None, None, None  # pending: the last session and its result, finished last
    try:
        for i, req in enumerate(reqs):
            if pending is not None:
                pending[0].finish(pending[1])
            session = Session(req, ledger, "sky", nodes=req.config.nodes, pid=os.getpid())
            sessions.append(session)
            cluster = cluster or f"{PREFIX}{session.run_id}"
            ledger.update(session.run_id, cluster=cluster)
            pending = (session, session.failed("the launcher stopped before the job ended"))
            try:
                task, sink, epilogue = _prepare(session, managed=False)
            except Exception as e:  # noqa: BLE001 -- e.g. SkyPilot rejects the task: the row says so
                pending = (session, session.failed(e))
                raise
            result, price, error = _one_job(session, task, sink, epilogue, cluster, first=i == 0, price=price)
            pending = (session, result)
            if error is not None:  # recorded; raised after the teardown below
                raise error
            if stop([*[ledger.get(s.run_id) for s in sessions[:-1]],
                     {**ledger.get(session.run_id), **result.row(), "status": result.status}]):
                break
    finally:
        if cluster is not None:  # however the sweep ended: never leave a GPU billing
            _down(ledger, sessions[-1].run_id, cluster, kept=_newest(sessions[-1].state))
        if pending is not None:
            pending[0].finish(pending[1])
    return [ledger.get(s.run_id) for s in sessions]


def _one_job(session: Session, task, sink: LogSink, epilogue: Epilogue, cluster: str, *, first: bool,
             price: tuple | None) -> tuple[events.Result, tuple | None, BaseException | None]:
    """Launch (the first) or submit (the next) one job on the sweep's cluster and follow it to its end: its
    result, the price of what runs, and the exception that ended it (to raise once the result is recorded)."""
    ledger, run_id, job_id = session.ledger, session.run_id, None
    try:
        with session.display:
            ledger.add_event(run_id, "launch" if first else "submit", cluster)
            session.display.status("provisioning" if first else "submitting")
            job_id, handle = sky_sdk.launch(task, cluster) if first else sky_sdk.exec_on(task, cluster)
            price = sky_sdk.launched_price(handle) or price
            ledger.update(run_id, sky_job_id=job_id)
            if price:  # the price of what really runs, not the plan's guess: the cost is counted at it
                ledger.update(run_id, usd_per_hour=price[0], price_source=price[1])
            session.display.status("running")
            code = follow_job(cluster, job_id, sink, epilogue)
        return session.outcome(epilogue.ended(code)), price, None
    except KeyboardInterrupt as e:
        result = session.failed("interrupted; cluster torn down", "cancelled")
        if job_id is not None:
            try:
                _stop_gracefully(session, cluster, job_id, sink)
            except KeyboardInterrupt:  # a second Ctrl-C skips straight to the teardown
                pass
            if session.state.result is not None:
                result = session.outcome(epilogue.ended(None))
        return result, price, e
    except Exception as e:  # noqa: BLE001 -- recorded, then raised as it was
        # no machine was had: nothing ran, nothing is charged
        status = "failed_to_launch" if isinstance(e, NotLaunched) and job_id is None else "crashed"
        return session.failed(e, status), price, e
    finally:
        sink.close()


EPILOGUE_WAIT_S = 15.0


def follow_job(cluster: str, job_id: int, sink: LogSink, epilogue: Epilogue) -> int | None:
    """Follow a cluster job's output to its end; SkyPilot's job status code, and a failed job's exit codes in
    `epilogue`. SkyPilot marks a failed job FAILED, which ends the tail, and prints the codes half a second later
    (task_codegen's epilogue), so the tail can end before that line: then the output is read again until the
    line is there or the wait is over, and only that line is passed on (a replay is not the first tail's lines
    again, those include the tail's own, so it cannot be aligned with them by count)."""
    code = sky_sdk.tail(cluster, job_id, sink)
    deadline = time.monotonic() + EPILOGUE_WAIT_S
    while (code == SKY_JOB_FAILED and epilogue.job_exit_code is None and epilogue.setup_exit_code is None
           and time.monotonic() < deadline):
        time.sleep(0.5)
        replay = io.StringIO()
        sky_sdk.tail(cluster, job_id, replay, follow=False)
        for line in replay.getvalue().splitlines():
            if JOB_FAILED.search(line) or SETUP_FAILED.search(line):
                sink.write(("\n" if sink.pending else "") + line + "\n")
    return code


def _stop_gracefully(session: Session, cluster: str, job_id: int, sink: LogSink) -> None:
    """Cancel the job and follow it to its end (it checkpoints first), so the teardown loses no training."""
    session.display.status("stopping: checkpoint, then teardown (Ctrl-C again: teardown now)")
    sky_sdk.cancel(cluster, job_id)
    session.ledger.add_event(session.run_id, "cancel", f"job {job_id} on {cluster}")
    sky_sdk.tail(cluster, job_id, sink.catch_up())  # the whole output again, the lines already seen skipped


def _managed(req: Request, ledger: Ledger) -> dict:
    """A spot run as a managed job: SkyPilot recovers it after preemption; we follow it through."""
    sky_sdk.preflight(req.config)
    session = Session(req, ledger, "sky", nodes=req.config.nodes, managed=1, pid=os.getpid())
    name = f"{PREFIX}{session.run_id}"
    ledger.update(session.run_id, cluster=name)
    try:
        task, sink, epilogue = _prepare(session, managed=True)
    except Exception as e:  # noqa: BLE001
        session.finish(session.failed(e))
        raise
    result, job_id = session.failed("the launcher stopped before the job ended"), None
    try:
        with session.display:
            ledger.add_event(session.run_id, "launch", f"managed job {name}")
            session.display.status("submitting managed job")
            job_id = sky_sdk.job_launch(task, name)
            ledger.update(session.run_id, sky_job_id=job_id)
            session.display.status("running")
            code = sky_sdk.job_tail(job_id, sink)
        session.follower.settle_recoveries(sky_sdk.job_recoveries(job_id))
        result = session.outcome(epilogue.ended(code))
    except KeyboardInterrupt:
        result = session.failed("interrupted: managed job cancelled", "cancelled")
        if job_id is not None:
            sky_sdk.job_cancel(job_id)
            ledger.add_event(session.run_id, "cancel", f"managed job {job_id}")
        raise
    except Exception as e:  # noqa: BLE001
        result = session.failed(e, "failed_to_launch" if isinstance(e, NotLaunched) and job_id is None else "crashed")
        raise
    finally:
        sink.close()
        session.finish(result)
    return ledger.get(session.run_id)


class Reattached:
    """`nanolaunch logs` on a cloud run: replays the job's output, records what is new, and closes the row
    (and the cluster) for a launcher that is gone."""

    def __init__(self, ledger: Ledger, row: dict):
        self.ledger, self.row = ledger, row
        self.follower = Follower(ledger, row["id"], None, known_starts=(row["recoveries"] or 0) + 1)
        self.epilogue = Epilogue(self.follower)
        self.log_path = run_dir(row["id"]) / LOG_NAME

    def __call__(self, line: str) -> None:
        self.epilogue(line)

    def settle(self, code: int | None, launcher_alive: bool) -> None:
        row = self.ledger.get(self.row["id"])
        if row["status"] != "running" or launcher_alive:
            return
        result = outcome(self.follower.state, self.epilogue.ended(code), self.log_path)
        if not row["managed"]:
            _down(self.ledger, row["id"], row["cluster"], kept=_newest(self.follower.state))
        self.ledger.finish(row["id"], result.status, result)


def _newest(state: RunState) -> dict | None:
    return max(state.checkpoints, key=lambda c: c["step"], default=None)


def _down(ledger: Ledger, run_id: int | None, cluster: str, kept: dict | None = None) -> None:
    """Tear down, and say in the ledger which checkpoint (`kept`: the run's last checkpoint event) outlived it."""
    try:
        existed = sky_sdk.down(cluster)
    except Exception as e:  # noqa: BLE001 -- teardown must be tried, and its failure said, never hidden
        out.warn(f"could not tear down {cluster}: {e}; run `sky down {cluster}` (it also autostops when idle)")
        if run_id is not None:
            ledger.add_event(run_id, "down_failed", str(e)[:500])
        return
    if run_id is not None:
        ledger.add_event(run_id, "down", cluster if existed else f"{cluster} (never came up)")
        if kept is not None:
            ledger.add_event(run_id, "checkpoint_kept", f"step {kept['step']}: {kept['path']} (in the store; "
                                                        "uploaded before the teardown)")
