"""The SkyPilot backend: runs and probe sweeps on SkyPilot, and the one module that imports `sky` (0.14 SDK).

The task is the one the local backend runs (nanolaunch/task.py); only where it runs differs. A run with
--spot is a managed job that SkyPilot recovers after preemption (the trainer resumes from the bucket);
everything else runs on a cluster of its own, launched with autostop-and-down and torn down when the
command ends, fails or is interrupted. Cost = the price recorded at launch (× nodes) × the time from the
launch request to teardown.

Every SDK call goes through `sdk()`, the SkyPilot module itself, so tests can put a recording fake in its
place. SkyPilot's errors become one-line NanolaunchErrors that say what to do.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TextIO

from nanolaunch import output as out
from nanolaunch.errors import NanolaunchError, NotLaunched
from nanolaunch.events import RunState
from nanolaunch.launch import Display, LiveRow, Request, derived, for_run, open_row, write_task
from nanolaunch.ledger import Ledger
from nanolaunch.runs import LOG_NAME, run_dir
from nanolaunch.task import placement, render
from trainer.events import EXIT_STATUS, trainer_exit_code

PREFIX = "nl-"  # every cluster and managed job nanolaunch starts is named nl-<run id>
# sky.exceptions.JobExitCode: what tail_logs returns, the job's state and never its exit code
SKY_JOB_CODES = {0: "SUCCEEDED", 100: "FAILED", 101: "NOT_FINISHED", 102: "NOT_FOUND", 103: "CANCELLED"}
SKY_JOB_CANCELLED = 103
# The run command's real exit codes, printed by SkyPilot's job epilogue (sky/backends/task_codegen.py)
JOB_FAILED = re.compile(r"Job \d+ failed with return code list:(?:\x1b\[[0-9;]*m)?\s*\[([0-9, ]*)\]")
SETUP_FAILED = re.compile(r"Job \d+'s setup failed with return code (\d+)")


# -- the SDK --------------------------------------------------------------------------------
SECRET_ENVS = ("WANDB_API_KEY", "HF_TOKEN")  # travel as SkyPilot secrets, never in a file


def sdk():
    """The SkyPilot SDK (imported here only, and only when a command needs the cloud)."""
    import sky

    return sky


def to_task(task: dict, secrets: dict[str, str] | None = None):
    """A sky.Task from our task dict: SkyPilot's own schema validates it."""
    sky = sdk()
    try:
        built = sky.Task.from_yaml_config(copy.deepcopy(task))  # it edits its argument
    except ValueError as e:  # InvalidSkyPilotConfigError and friends
        raise NanolaunchError(f"SkyPilot rejects the task: {_first_line(e)}") from None
    if secrets:
        built.update_secrets(secrets)
    return built


def enabled_clouds() -> list[str]:
    """The clouds `sky check` recorded as enabled for the active workspace, from SkyPilot's state database, as its
    optimizer reads them (sky.check.get_cached_enabled_clouds_or_refresh); never refreshed here: a refresh asks
    every cloud's API."""
    sdk()
    from sky import global_user_state, skypilot_config
    from sky.clouds.cloud import CloudCapability

    found = global_user_state.get_cached_enabled_clouds(CloudCapability.COMPUTE, skypilot_config.get_active_workspace())
    return [c.canonical_name() for c in found]


def preflight(config) -> None:
    """Before the first SDK call, which starts an API server on this machine when none runs: with the server
    here, the clouds `sky check` enabled are in the state database here, and a config that none of them can run
    is refused in one line with nothing started and nothing recorded. A remote server knows its own clouds."""
    sdk()
    from sky.server import common as server_common

    if not server_common.is_api_server_local():
        return
    enabled = {c.lower() for c in enabled_clouds()}
    wanted = config.infra.split("/")[0].lower() if config.infra else None
    if not enabled:
        raise NotLaunched("no cloud is enabled for SkyPilot on this machine: run `sky check` to set one up, or "
                          "--local to run here")
    if wanted and wanted not in enabled:
        raise NotLaunched(f"--infra {config.infra}: {wanted} is not enabled for SkyPilot (enabled: "
                          f"{', '.join(sorted(enabled))}); run `sky check`")


def secrets_from_env() -> dict[str, str]:
    return {k: os.environ[k] for k in SECRET_ENVS if os.environ.get(k)}


@contextmanager
def errors(what: str):
    """SkyPilot's failures as the one line a user needs, for what people actually hit. Its own output goes to
    stderr: stdout is for nanolaunch's result (--json)."""
    exc = sdk().exceptions
    try:
        with _stdout_to_stderr():
            yield
    except exc.NoCloudAccessError as e:
        if "storage" in str(e).lower():  # compute clouds enabled (Lambda, RunPod) but none that keeps a bucket
            raise NotLaunched(f"{what}: the run keeps its checkpoints and data in a bucket, and no enabled cloud "
                              "has object storage; enable one (AWS, GCP, Azure, Cloudflare R2, ...) with "
                              "`sky check`, or run on a Slurm cluster's shared filesystem with --infra "
                              "slurm/NAME") from None
        raise NotLaunched(f"{what}: no cloud is enabled for SkyPilot; run `sky check` to set one up") from None
    except exc.ResourcesUnavailableError as e:
        text = str(e).lower()
        if "quota" in text:
            raise NotLaunched(f"{what}: no quota for these GPUs in any region tried; request a quota increase "
                              "or try another --gpu") from None
        raise NotLaunched(f"{what}: no capacity in any enabled region ({_first_line(e)}); retry later, "
                          "try another --gpu, or add --spot") from None
    except exc.ClusterSetUpError as e:
        raise NanolaunchError(f"{what}: the cluster failed during setup (a spot preemption during setup looks "
                              f"like this; rerun): {_first_line(e)}") from None
    except exc.ApiServerConnectionError:
        raise NotLaunched(f"{what}: cannot reach the SkyPilot API server; start it with `sky api start`") from None
    except RuntimeError as e:  # e.g. no API server endpoint configured and a local one disabled
        if "API server" not in str(e):
            raise
        raise NotLaunched(f"{what}: {_first_line(e)}") from None


def optimize(task) -> dict[str, Any]:
    """SkyPilot's own optimizer, run in this process: the instance it would launch and its price.

    Nothing is launched; it reads SkyPilot's catalog and the clouds `sky check` enabled."""
    sky = sdk()
    from sky.utils import annotations

    annotations.is_on_api_server = False  # we are the client: plain progress output, not server payloads
    with errors("choosing an instance"):
        with sky.Dag() as dag:
            dag.add(task)
        sky.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    best = task.best_resources
    return {"cloud": str(best.cloud), "instance_type": best.instance_type, "region": best.region,
            "spot": bool(best.use_spot), "nodes": task.num_nodes, "usd_per_hour": best.get_cost(3600) * task.num_nodes}


@contextmanager
def _stdout_to_stderr():
    """print() and SkyPilot's loggers, whose handlers hold sys.stdout from their import, write to stderr."""
    import logging

    moved = [h for name in ("sky", "") for h in logging.getLogger(name).handlers
             if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout]
    for h in moved:
        h.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h in moved:
            h.setStream(sys.stdout)


def _wait(request_id):
    """The request's result, streaming its output. Ctrl-C aborts the request on the API server too:
    otherwise a launch goes on provisioning there after we gave up, and our teardown queues behind it."""
    sky = sdk()
    try:
        return sky.stream_and_get(request_id, output_stream=sys.stderr)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # best effort: the teardown that follows still runs
            sky.get(sky.api_cancel(request_id, silent=True))
        raise


# -- clusters (on-demand runs and probe sweeps) -----------------------------------------------------------
def launch(task, cluster: str):
    """Provision (or reuse) `cluster` and submit `task`; every cluster downs itself when idle.
    Returns (job id, the cluster's handle: what SkyPilot really launched)."""
    sky = sdk()
    with errors(f"launching {cluster}"):
        return _wait(sky.launch(task, cluster_name=cluster, idle_minutes_to_autostop=_idle(task), down=True,
                                retry_until_up=False))


def launched_price(handle) -> tuple[float, str] | None:
    """$/hour of what SkyPilot launched (all nodes) and its name, from the cluster's handle; None where
    SkyPilot knows no price."""
    resources = getattr(handle, "launched_resources", None)
    if resources is None:
        return None
    nodes = getattr(handle, "launched_nodes", 1) or 1
    per_node = resources.get_cost(3600)
    if not per_node:  # SkyPilot prices no own infrastructure (Slurm): the plan's rate stands
        return None
    return (per_node * nodes,
            f"launched: {nodes}× {resources.cloud} {resources.instance_type} ({resources.region})")


def exec_on(task, cluster: str):
    """Submit `task` to an existing cluster (the next probe of a sweep): no provisioning, no setup.
    Returns (job id, handle)."""
    sky = sdk()
    with errors(f"running on {cluster}"):
        return _wait(sky.exec(task, cluster_name=cluster))


def tail(cluster: str, job_id: int, stream: TextIO, last_lines: int = 0) -> int | None:
    """Follows a cluster job's output into `stream` until it ends (from its last `last_lines` lines; 0: all).
    Returns SkyPilot's job status code (sky.exceptions.JobExitCode), not the job's exit code."""
    with errors(f"following {cluster}"):
        return sdk().tail_logs(cluster, job_id, follow=True, tail=last_lines, output_stream=stream)


def stop_gracefully(ledger: Ledger, run_id: int, cluster: str, job_id: int, follower, sink) -> None:
    """Cancel the job (SkyPilot sends its processes SIGTERM: the trainer finishes its step, checkpoints and
    reports `cancelled`) and follow it to its end, so the teardown that follows loses no training."""
    sky = sdk()
    follower.display.status("stopping: checkpoint, then teardown (Ctrl-C again: teardown now)")
    with errors(f"cancelling job {job_id} on {cluster}"):
        sky.stream_and_get(sky.cancel(cluster, job_ids=[job_id]), output_stream=sys.stderr)
    ledger.add_event(run_id, "cancel", f"job {job_id} on {cluster}")
    tail(cluster, job_id, sink.catch_up())  # the whole output again, the lines already seen skipped


UPLOAD_TIMEOUT_S = 1800  # the longest a teardown waits for the bucket mount to upload the last checkpoint


def down(cluster: str) -> bool:
    """Tear `cluster` down once the bucket mount has uploaded what the trainer wrote (SkyPilot's graceful
    teardown: cancel the jobs, flush rclone's cache on every node); False when there was nothing to tear down."""
    sky = sdk()
    with errors(f"tearing down {cluster}"):
        try:
            sky.stream_and_get(sky.down(cluster, graceful=True, graceful_timeout=UPLOAD_TIMEOUT_S),
                               output_stream=sys.stderr)
        except sky.exceptions.ClusterDoesNotExist:
            return False
    return True


def clusters(prefix: str) -> list[dict[str, Any]]:
    sky = sdk()
    with errors("listing clusters"):
        records = sky.get(sky.status())
    return [_pick(r, "name", "status", "launched_at", "resources_str")
            for r in records if str(_field(r, "name")).startswith(prefix)]


# -- managed jobs (spot runs, recovered after preemption) ------------------------------------------------
def job_launch(task, name: str) -> int:
    sky = sdk()
    with errors(f"launching managed job {name}"):
        job_ids, _ = _wait(sky.jobs.launch(task, name=name))
    return job_ids[0]


def job_tail(job_id: int, stream: TextIO) -> int | None:
    """Follows a managed job through its recoveries until it ends."""
    with errors(f"following managed job {job_id}"):
        return sdk().jobs.tail_logs(job_id=job_id, follow=True, output_stream=stream)


def job_cancel(job_id: int) -> None:
    sky = sdk()
    with errors(f"cancelling managed job {job_id}"):
        sky.stream_and_get(sky.jobs.cancel(job_ids=[job_id]), output_stream=sys.stderr)


def jobs(prefix: str, active_only: bool = False) -> list[dict[str, Any]]:
    sky = sdk()
    with errors("listing managed jobs"):
        try:
            records = sky.get(sky.jobs.queue_v2(refresh=False, skip_finished=active_only))[0]
        except sky.exceptions.ClusterNotUpError:  # no jobs controller: no managed job was ever launched
            return []
    return [_pick(r, "job_id", "job_name", "status", "recovery_count", "job_duration", "submitted_at", "end_at")
            for r in records if str(_field(r, "job_name")).startswith(prefix)]


def job_recoveries(job_id: int) -> int:
    """How many times SkyPilot recovered the managed job: its own count, which sees a recovery even where the
    lost attempt's output never reached the stream (a cluster lost seconds after it started)."""
    sky = sdk()
    with errors(f"reading managed job {job_id}"):
        records = sky.get(sky.jobs.queue_v2(refresh=False, job_ids=[job_id], fields=["job_id", "recovery_count"]))[0]
    return max((_field(r, "recovery_count") or 0 for r in records if _field(r, "job_id") == job_id), default=0)


def _idle(task) -> int | None:
    for r in task.resources:
        auto = getattr(r, "autostop_config", None)
        if auto is not None and auto.enabled:
            return auto.idle_minutes
    return None


def _field(record, name: str):
    """SkyPilot's response records read like dicts; enum values become their names."""
    value = record.get(name) if hasattr(record, "get") else getattr(record, name, None)
    return getattr(value, "value", value)


def _pick(record, *names: str) -> dict[str, Any]:
    return {n: _field(record, n) for n in names}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- runs --------------------------------------------------------------------------------


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


class Follower:
    """Events from the job's output: live row and display, and each trainer restart as a recovery."""

    def __init__(self, ledger: Ledger, run_id: int, display: Display | None, known_starts: int = 1):
        self.ledger, self.run_id, self.display = ledger, run_id, display
        self.state = RunState()
        self.live = LiveRow(ledger, run_id, display)
        self.starts = 0
        self.known_starts = known_starts  # starts already in the ledger (a reattach replays the whole log)
        self.log_path = run_dir(run_id) / LOG_NAME
        self.job_exit_code: int | None = None  # the run command's own code, as SkyPilot's job epilogue prints it
        self.setup_exit_code: int | None = None

    def __call__(self, line: str) -> None:
        setup = SETUP_FAILED.search(line)
        if setup:
            self.setup_exit_code = int(setup.group(1))
        failed = JOB_FAILED.search(line)
        if failed:
            codes = [int(c) for c in re.findall(r"\d+", failed.group(1))]
            self.job_exit_code = next((c for c in codes if c != 137), codes[0] if codes else None)
        last_step = self.state.last_step
        event = self.state.feed(line)
        if event is None:
            return
        if event["event"] == "start":
            self.starts += 1
            if self.starts > self.known_starts:  # it started again: its node was preempted and SkyPilot recovered it
                after = f"after step {last_step['step']}" if last_step else "before the first step"
                self.ledger.add_event(self.run_id, "preempted", after)
                self.ledger.add_event(self.run_id, "recovered",
                                      f"resumed from step {event.get('resumed_from_step') or 0}")
                self.ledger.update(self.run_id, recoveries=self.starts - 1)
        self.live(event, self.state)

    def settle_recoveries(self, counted_by_skypilot: int) -> None:
        """SkyPilot's count stands where the stream showed fewer restarts (an attempt lost before it printed)."""
        seen = max(self.starts - 1, self.ledger.get(self.run_id)["recoveries"] or 0)
        if counted_by_skypilot > seen:
            self.ledger.add_event(self.run_id, "recovered", f"SkyPilot recovered the job {counted_by_skypilot} "
                                                            f"time(s); {seen} seen in its output")
            self.ledger.update(self.run_id, recoveries=counted_by_skypilot)


def dryrun(req: Request, plan: dict) -> dict:
    """The run's task, validated by SkyPilot, and the instance SkyPilot's optimizer picks for it."""
    place = placement(req.config, "dryrun", managed=req.recovered, disk=plan["disk"])
    config = for_run(req, plan, run_dir=place.run_dir, data_dir=place.data_dir, store_dir=place.store_dir)
    task = render(config, place.opts, name=f"{PREFIX}dryrun")
    chosen = optimize(to_task(task))
    return {"name": task["name"], "nodes": task["num_nodes"], "accelerators": req.config.gpu,
            "skypilot": chosen, "plan": {k: plan[k] for k in ("usd_per_hour", "price_source", "wall_hours", "cost_usd")}}


def run(req: Request, ledger: Ledger | None = None) -> dict:
    """One run in the cloud; returns its finished ledger row."""
    if req.recovered:
        return _managed(req, ledger or Ledger())
    return sweep([req], ledger)[0]


def sweep(reqs: list[Request], ledger: Ledger | None = None,
          stop: Callable[[list[dict]], bool] = lambda done: False) -> list[dict]:
    """The requests one after another on one cluster (a probe sweep provisions once), then teardown.

    Each row is finished when its job ends, except the last, which also pays for the teardown. `stop`
    sees the rows so far after each job (the last one still open) and ends the sweep early."""
    ledger = ledger or Ledger()
    if reqs:
        preflight(reqs[0].config)
    ids, cluster, last, price, follower = [], None, None, None, None
    try:
        for i, req in enumerate(reqs):
            if last is not None:
                ledger.finish(*last)
            plan = derived(req.config, req.preset, probe=req.probe is not None)
            run_id = open_row(ledger, req, plan, "sky", nodes=req.config.nodes, pid=os.getpid())
            ids.append(run_id)
            cluster = cluster or f"{PREFIX}{run_id}"
            ledger.update(run_id, cluster=cluster)
            last = (run_id, "crashed", {"error": "the launcher stopped before the job ended"})
            try:
                task, follower, sink = _prepare(ledger, run_id, req, plan, managed=False)
            except Exception as e:  # noqa: BLE001 -- e.g. SkyPilot rejects the task: the row says so
                last = (run_id, "crashed", {"error": str(e)})
                raise
            job_id = None
            try:
                with follower.display:
                    ledger.add_event(run_id, "launch" if i == 0 else "submit", cluster)
                    follower.display.status("provisioning" if i == 0 else "submitting")
                    job_id, handle = launch(task, cluster) if i == 0 else exec_on(task, cluster)
                    price = launched_price(handle) or price
                    ledger.update(run_id, sky_job_id=job_id)
                    if price:  # the price of what really runs, not the plan's guess: the cost is counted at it
                        ledger.update(run_id, usd_per_hour=price[0], price_source=price[1])
                    follower.display.status("running")
                    code = tail(cluster, job_id, sink)
                last = (run_id, *_outcome(follower, code))
            except KeyboardInterrupt:
                last = (run_id, "cancelled", {**_partial(follower.state), "error": "interrupted; cluster torn down"})
                if job_id is not None:  # a second Ctrl-C skips straight to the teardown
                    stop_gracefully(ledger, run_id, cluster, job_id, follower, sink)
                    if follower.state.result is not None:
                        last = (run_id, *_outcome(follower, None))
                raise
            except Exception as e:  # noqa: BLE001 -- recorded, then raised as it was
                # no machine was had: nothing ran, nothing is charged
                status = "failed_to_launch" if isinstance(e, NotLaunched) and job_id is None else "crashed"
                last = (run_id, status, {**_partial(follower.state), "error": str(e)})
                raise
            finally:
                sink.close()
            if stop([*[ledger.get(i) for i in ids[:-1]], {**ledger.get(run_id), "status": last[1], **_figures(last[2])}]):
                break
    finally:
        if cluster is not None:  # however the sweep ended: never leave a GPU billing
            saved = follower.state.checkpoints if follower is not None else []
            _down(ledger, ids[-1], cluster, kept=max(saved, key=lambda c: c["step"], default=None))
        if last is not None:
            ledger.finish(*last)
    return [ledger.get(i) for i in ids]


def _managed(req: Request, ledger: Ledger) -> dict:
    """A spot run as a managed job: SkyPilot recovers it after preemption; we follow it through."""
    preflight(req.config)
    plan = derived(req.config, req.preset)
    run_id = open_row(ledger, req, plan, "sky", nodes=req.config.nodes, managed=1, pid=os.getpid())
    name = f"{PREFIX}{run_id}"
    ledger.update(run_id, cluster=name)
    try:
        task, follower, sink = _prepare(ledger, run_id, req, plan, managed=True)
    except Exception as e:  # noqa: BLE001
        ledger.finish(run_id, "crashed", {"error": str(e)})
        raise
    status, result, job_id = "crashed", {}, None
    try:
        with follower.display:
            ledger.add_event(run_id, "launch", f"managed job {name}")
            follower.display.status("submitting managed job")
            job_id = job_launch(task, name)
            ledger.update(run_id, sky_job_id=job_id)
            follower.display.status("running")
            code = job_tail(job_id, sink)
        follower.settle_recoveries(job_recoveries(job_id))
        status, result = _outcome(follower, code)
    except KeyboardInterrupt:
        status, result = "cancelled", {**_partial(follower.state), "error": "interrupted: managed job cancelled"}
        if job_id is not None:
            job_cancel(job_id)
            ledger.add_event(run_id, "cancel", f"managed job {job_id}")
        raise
    except Exception as e:  # noqa: BLE001
        result = {**_partial(follower.state), "error": str(e)}
        if isinstance(e, NotLaunched) and job_id is None:
            status = "failed_to_launch"
        raise
    finally:
        sink.close()
        ledger.finish(run_id, status, result)
    return ledger.get(run_id)


def reattached(ledger: Ledger, row: dict) -> "Reattached":
    """A follower for `nanolaunch logs`: replays the job's output, records what is new."""
    return Reattached(ledger, row["id"], None, known_starts=(row["recoveries"] or 0) + 1)


class Reattached(Follower):
    def settle(self, code: int | None, launcher_alive: bool) -> None:
        """The job ended while we watched. If its launcher is gone, close the row (and the cluster) for it."""
        row = self.ledger.get(self.run_id)
        if row["status"] != "running" or launcher_alive:
            return
        status, result = _outcome(self, code)
        if not row["managed"]:
            _down(self.ledger, self.run_id, row["cluster"],
                  kept=max(self.state.checkpoints, key=lambda c: c["step"], default=None))
        self.ledger.finish(self.run_id, status, result)


def _prepare(ledger: Ledger, run_id: int, req: Request, plan: dict, managed: bool):
    """Fill the task for this run, keep a copy with its log, and build what follows its output."""
    place = placement(req.config, f"{run_id:05d}", managed=managed, disk=plan["disk"])
    config = for_run(req, plan, run_dir=place.run_dir, data_dir=place.data_dir, store_dir=place.store_dir)
    task = render(config, place.opts, name=f"{PREFIX}{run_id}")
    folder = run_dir(run_id)
    write_task(folder, task, config)
    ledger.update(run_id, run_dir=place.run_dir, log_path=str(folder / LOG_NAME))
    display = Display(run_id, req, plan)
    follower = Follower(ledger, run_id, display)
    return to_task(task, secrets_from_env()), follower, LogSink(folder / LOG_NAME, follower)


def _outcome(follower: Follower, code: int | None) -> tuple[str, dict]:
    """The trainer's own result when it reported one; else the run command's exit code from SkyPilot's log
    line (`code` is SkyPilot's job status code, 0/100/101/102/103, never the job's), with the log's tail."""
    state = follower.state
    if state.result is not None:
        return state.result["status"], dict(state.result)
    job = follower.job_exit_code
    try:  # torchrun exits 1 for any failed worker: the trainer's own code is in torchrun's summary
        job = trainer_exit_code(follower.log_path.read_text(errors="replace")) or job
    except OSError:
        pass
    if follower.setup_exit_code is not None:
        status, why = "crashed", f"setup failed (exit {follower.setup_exit_code})"
    elif job is not None:
        status, why = EXIT_STATUS.get(job, "crashed"), f"exit {job}"
    elif code == SKY_JOB_CANCELLED:
        status, why = "cancelled", "SkyPilot cancelled the job"
    elif code == 0:
        status, why = "crashed", "the job succeeded but the trainer reported no result"
    else:
        status, why = "crashed", f"SkyPilot job status {SKY_JOB_CODES.get(code, code)}"
    return status, {**_partial(state), "error": f"{why}: {_tail(follower.log_path)}"}


ANSI = re.compile(r"\x1b\[[0-9;]*m")
SKYPILOT_LINE = re.compile(r"srun: error|Job finished \(status|failed with return code|setup failed with return code")


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines the job itself printed (SkyPilot's own status lines and colours left out)."""
    try:
        text = [ANSI.sub("", x).strip() for x in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    own = [x for x in text if x and not SKYPILOT_LINE.search(x)]
    return " | ".join(own[-lines:])[-1000:] or "(no output)"


def _figures(result: dict) -> dict:
    return {k: result[k] for k in ("tokens_per_second", "step_ms", "mfu", "peak_memory_gib") if k in result}


def _partial(state: RunState) -> dict:
    """What the output showed before it stopped."""
    return {"val_bpb": state.val_bpb, "steps": state.last_step["step"] if state.last_step else None}


def _down(ledger: Ledger, run_id: int | None, cluster: str, kept: dict | None = None) -> None:
    """Tear down, and say in the ledger which checkpoint (`kept`: the run's last checkpoint event) outlived it."""
    try:
        existed = down(cluster)
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
