"""The SkyPilot boundary: the one module that imports `sky` (SkyPilot 0.14 SDK).

Every call goes through `sdk()`, the SkyPilot module itself, so tests can put a recording fake in its
place. SkyPilot's errors become one-line NanolaunchErrors that say what to do.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
from contextlib import contextmanager
from typing import Any, TextIO

from nanolaunch.errors import NanolaunchError

SECRET_ENVS = ("WANDB_API_KEY",)  # travel as SkyPilot secrets, never in a file


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


def secrets_from_env() -> dict[str, str]:
    return {k: os.environ[k] for k in SECRET_ENVS if os.environ.get(k)}


@contextmanager
def errors(what: str):
    """SkyPilot's failures as the one line a user needs, for what people actually hit."""
    exc = sdk().exceptions
    try:
        yield
    except exc.NoCloudAccessError:
        raise NanolaunchError(f"{what}: no cloud is enabled for SkyPilot; run `sky check` to set one up") from None
    except exc.ResourcesUnavailableError as e:
        text = str(e).lower()
        if "quota" in text:
            raise NanolaunchError(f"{what}: no quota for these GPUs in any region tried; request a quota increase "
                                  "or try another --gpu") from None
        raise NanolaunchError(f"{what}: no capacity in any enabled region ({_first_line(e)}); retry later, "
                              "try another --gpu, or add --spot") from None
    except exc.ClusterSetUpError as e:
        raise NanolaunchError(f"{what}: the cluster failed during setup (a spot preemption during setup looks "
                              f"like this; rerun): {_first_line(e)}") from None
    except exc.ApiServerConnectionError:
        raise NanolaunchError(f"{what}: cannot reach the SkyPilot API server; start it with `sky api start`") from None
    except RuntimeError as e:  # e.g. no API server endpoint configured and a local one disabled
        if "API server" not in str(e):
            raise
        raise NanolaunchError(f"{what}: {_first_line(e)}") from None


def optimize(task) -> dict[str, Any]:
    """SkyPilot's own optimizer, run in this process: the instance it would launch and its price.

    Nothing is launched; it reads SkyPilot's catalog and the clouds `sky check` enabled."""
    sky = sdk()
    from sky.utils import annotations

    annotations.is_on_api_server = False  # we are the client: plain progress output, not server payloads
    with errors("choosing an instance"), contextlib.redirect_stdout(sys.stderr):  # stdout stays --json's
        with sky.Dag() as dag:
            dag.add(task)
        sky.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    best = task.best_resources
    return {"cloud": str(best.cloud), "instance_type": best.instance_type, "region": best.region,
            "spot": bool(best.use_spot), "nodes": task.num_nodes, "usd_per_hour": best.get_cost(3600) * task.num_nodes}


def _wait(request_id):
    """The request's result, streaming its output. Ctrl-C aborts the request on the API server too:
    otherwise a launch goes on provisioning there after we gave up, and our teardown queues behind it."""
    sky = sdk()
    try:
        return sky.stream_and_get(request_id)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # best effort: the teardown that follows still runs
            sky.get(sky.api_cancel(request_id, silent=True))
        raise


# -- clusters (on-demand runs and probe sweeps) -----------------------------------------------------------
def launch(task, cluster: str) -> int:
    """Provision (or reuse) `cluster` and submit `task`; every cluster downs itself when idle."""
    sky = sdk()
    with errors(f"launching {cluster}"):
        job_id, _ = _wait(sky.launch(task, cluster_name=cluster, idle_minutes_to_autostop=_idle(task), down=True,
                                     retry_until_up=False))
    return job_id


def exec_on(task, cluster: str) -> int:
    """Submit `task` to an existing cluster (the next probe of a sweep): no provisioning, no setup."""
    sky = sdk()
    with errors(f"running on {cluster}"):
        job_id, _ = _wait(sky.exec(task, cluster_name=cluster))
    return job_id


def tail(cluster: str, job_id: int, stream: TextIO) -> int | None:
    """Follows a cluster job's output into `stream` until it ends; its exit code."""
    with errors(f"following {cluster}"):
        return sdk().tail_logs(cluster, job_id, follow=True, output_stream=stream)


def down(cluster: str) -> bool:
    """Tear `cluster` down; False when there was nothing to tear down."""
    sky = sdk()
    with errors(f"tearing down {cluster}"):
        try:
            sky.stream_and_get(sky.down(cluster))
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
        sky.stream_and_get(sky.jobs.cancel(job_ids=[job_id]))


def jobs(prefix: str, active_only: bool = False) -> list[dict[str, Any]]:
    sky = sdk()
    with errors("listing managed jobs"):
        records = sky.get(sky.jobs.queue_v2(refresh=False, skip_finished=active_only))[0]
    return [_pick(r, "job_id", "job_name", "status", "recovery_count", "job_duration", "submitted_at", "end_at")
            for r in records if str(_field(r, "job_name")).startswith(prefix)]


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
