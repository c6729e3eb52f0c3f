"""SkyPilot's SDK (0.14), the one module that imports `sky`: launch, exec, tail, cancel and down, managed jobs,
the optimizer, and SkyPilot's errors as one-line NanolaunchErrors that say what to do.

Every call goes through `sdk()`, the SkyPilot module itself, so tests can put a recording fake in its place.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
from contextlib import contextmanager
from typing import Any, TextIO

from nanolaunch.errors import NanolaunchError, NotLaunched

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


# -- clusters (on-demand runs and probe sweeps) ----------------------------------------------------------
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


def tail(cluster: str, job_id: int, stream: TextIO, last_lines: int = 0, follow: bool = True) -> int | None:
    """Follows a cluster job's output into `stream` until it ends (from its last `last_lines` lines; 0: all);
    without `follow`, what it has written so far. Returns SkyPilot's job status code
    (sky.exceptions.JobExitCode), not the job's exit code."""
    with errors(f"following {cluster}"):
        return sdk().tail_logs(cluster, job_id, follow=follow, tail=last_lines, output_stream=stream)


def cancel(cluster: str, job_id: int) -> None:
    """SkyPilot sends the job's processes SIGTERM: the trainer finishes its step, checkpoints and reports
    `cancelled`."""
    sky = sdk()
    with errors(f"cancelling job {job_id} on {cluster}"):
        sky.stream_and_get(sky.cancel(cluster, job_ids=[job_id]), output_stream=sys.stderr)


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
