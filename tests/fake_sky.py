"""A stand-in for the SkyPilot SDK at nanolaunch's boundary (nanolaunch/backends/sky_sdk.py).

It records every call, and runs each submitted task for real on this machine, the way one SkyPilot
node would: the task's setup, then its run, with the single-node SKYPILOT_* variables, the task's envs
and secrets, and the bucket mount point mapped to a local folder. Tasks are real sky.Task objects
(SkyPilot's schema validated them); errors are SkyPilot's own exception types. It can interrupt the
follower as Ctrl-C would. It only stands in for what cannot run here, a cloud provider: recovery after a lost
cluster runs for real on the local Slurm cluster (tests/test_slurm.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
from types import SimpleNamespace

from nanolaunch.events import parse_line
from nanolaunch.backends.local import environment
from nanolaunch.task import REPO, STORE


def _as_real(real, fake):
    """`fake`, called only with arguments that bind to the real SDK function's signature."""
    import functools
    import inspect

    signature = inspect.signature(real)

    @functools.wraps(fake)
    def call(*args, **kwargs):
        signature.bind(*args, **kwargs)
        return fake(*args, **kwargs)
    return call


class FakeSky:
    def __init__(self, bucket_dir, *, interrupt_after_steps: int | None = None,
                 launch_error: BaseException | None = None):
        import sky as real_sky  # imported by the test, under its own HOME

        self.real = real_sky
        self.bucket_dir = str(bucket_dir)
        self.interrupt_after_steps = interrupt_after_steps
        self.launch_error = launch_error
        self.calls: list[tuple] = []
        self.clusters: dict[str, list] = {}  # name -> submitted tasks (job id = index + 1)
        self.managed: dict[int, object] = {}
        self.cancelled: set[tuple[str, int]] = set()
        self.secrets_seen: list[dict] = []
        self.ended: dict[tuple[str, int], tuple[str, int]] = {}  # a finished job's whole output and status code
        self.late_epilogue = False  # the tail ends before the failed job's epilogue line, as it can on a node
        self._requests: dict[str, object] = {}
        self._next_id = 0
        self.Task, self.exceptions = real_sky.Task, real_sky.exceptions
        self.jobs = SimpleNamespace(launch=self._job_launch, tail_logs=self._job_tail, cancel=self._job_cancel,
                                    queue_v2=self._job_queue)
        # Every SDK function nanolaunch calls takes exactly the real one's arguments: a call the real SDK would
        # refuse (a wrong keyword, a missing argument) raises the TypeError it would.
        for name in ("launch", "exec", "cancel", "tail_logs", "down", "status", "stream_and_get", "api_cancel"):
            setattr(self, name, _as_real(getattr(real_sky, name), getattr(self, name)))
        for name in ("launch", "tail_logs", "cancel", "queue_v2"):
            setattr(self.jobs, name, _as_real(getattr(real_sky.jobs, name), getattr(self.jobs, name)))

    # -- requests: the SDK returns ids; stream_and_get/get return (or raise) what the request produced
    def _request(self, value) -> str:
        self._next_id += 1
        rid = f"request-{self._next_id}"
        self._requests[rid] = value
        return rid

    def stream_and_get(self, request_id, log_path=None, tail=None, follow=True, output_stream=None,
                       relay_rich_status=False):
        value = self._requests.pop(request_id)
        if isinstance(value, BaseException):
            raise value
        return value

    get = stream_and_get

    def api_cancel(self, request_ids=None, silent=False, **kw):
        self.calls.append(("api_cancel", request_ids))
        self._requests.pop(request_ids, None)  # an aborted request produces nothing
        return self._request([request_ids])

    # -- clusters
    def launch(self, task, cluster_name=None, idle_minutes_to_autostop=None, down=False, retry_until_up=False, **kw):
        self.calls.append(("launch", cluster_name, {"idle_minutes_to_autostop": idle_minutes_to_autostop,
                                                    "down": down}))
        if self.launch_error is not None:
            return self._request(self.launch_error)
        self.clusters.setdefault(cluster_name, []).append(task)
        return self._request((len(self.clusters[cluster_name]), None))

    def exec(self, task, cluster_name=None, **kw):
        self.calls.append(("exec", cluster_name))
        if cluster_name not in self.clusters:
            return self._request(self.real.exceptions.ClusterNotUpError(f"cluster {cluster_name} does not exist"))
        self.clusters[cluster_name].append(task)
        return self._request((len(self.clusters[cluster_name]), None))

    def cancel(self, cluster_name, all=False, all_users=False, job_ids=None, _try_cancel_if_cluster_is_init=False):
        self.calls.append(("cancel", cluster_name, tuple(job_ids or ())))
        if cluster_name not in self.clusters:
            return self._request(self.real.exceptions.ClusterNotUpError(f"cluster {cluster_name} is not up"))
        self.cancelled.update((cluster_name, j) for j in job_ids or ())
        return self._request(None)

    def tail_logs(self, cluster_name, job_id, follow, tail=0, output_stream=None, **kw):
        self.calls.append(("tail_logs", cluster_name, job_id))
        codes = self.real.exceptions.JobExitCode
        if (cluster_name, job_id) in self.cancelled:  # as SkyPilot: a cancelled job has ended, code CANCELLED
            return codes.CANCELLED
        if (cluster_name, job_id) in self.ended:  # a job that has ended: its whole output, once more
            text, status = self.ended[cluster_name, job_id]
            output_stream.write(text)
            return status
        recorded = _Recording(output_stream)
        setup_code, run_code = self._run(self.clusters[cluster_name][job_id - 1], recorded)
        # SkyPilot's job epilogue (sky/backends/task_codegen.py): the state first, then the codes' line
        if setup_code:
            epilogue = f"ERROR: Job {job_id}'s setup failed with return code {setup_code} (pid=1).\n"
        elif run_code:
            epilogue = f"ERROR: Job {job_id} failed with return code list: [{run_code}] \n"
        else:
            epilogue = ""
        status = codes.FAILED if setup_code or run_code else codes.SUCCEEDED
        self.ended[cluster_name, job_id] = recorded.text + epilogue, status
        if not self.late_epilogue:
            output_stream.write(epilogue)
        return status

    def down(self, cluster_name, **kw):
        import inspect
        unknown = set(kw) - set(inspect.signature(self.real.down).parameters)
        if unknown:  # the real SDK's down takes these as keywords, nothing else
            raise TypeError(f"down() got unexpected keyword arguments {sorted(unknown)}")
        self.calls.append(("down", cluster_name, kw))
        if cluster_name not in self.clusters:
            return self._request(self.real.exceptions.ClusterDoesNotExist(f"cluster {cluster_name!r} does not exist"))
        del self.clusters[cluster_name]
        return self._request(None)

    def status(self, cluster_names=None, **kw):
        self.calls.append(("status",))
        return self._request([{"name": n, "status": SimpleNamespace(value="UP"), "launched_at": 0,
                               "resources_str": "1x Fake(H100:1)"} for n in self.clusters])

    # -- managed jobs
    def _job_launch(self, task, name=None, **kw):
        self.calls.append(("jobs.launch", name))
        job_id = 100 + len(self.managed)
        self.managed[job_id] = task
        return self._request(([job_id], None))

    def _job_tail(self, name=None, job_id=None, follow=True, output_stream=None, **kw):
        self.calls.append(("jobs.tail_logs", job_id))
        setup_code, run_code = self._run(self.managed[job_id], output_stream)
        codes = self.real.exceptions.JobExitCode
        return codes.FAILED if setup_code or run_code else codes.SUCCEEDED

    def _job_cancel(self, name=None, job_ids=None, **kw):
        self.calls.append(("jobs.cancel", tuple(job_ids or ())))
        return self._request(None)

    def _job_queue(self, refresh, skip_finished=False, job_ids=None, **kw):
        self.calls.append(("jobs.queue_v2",))
        if not self.managed:  # as SkyPilot: no managed job yet, so no jobs controller to ask
            return self._request(self.real.exceptions.ClusterNotUpError("Jobs controller is not up"))
        found = [{"job_id": j, "job_name": t.name, "status": "RUNNING", "recovery_count": 0, "submitted_at": 0}
                 for j, t in self.managed.items() if job_ids is None or j in job_ids]
        return self._request((found, len(found), {}, 0))

    # -- running a task as one node would
    def _env(self, task) -> dict:
        envs = {k: str(v).replace(STORE, self.bucket_dir) for k, v in task.envs.items()}
        secrets = {k: v.get_secret_value() if hasattr(v, "get_secret_value") else v for k, v in task.secrets.items()}
        self.secrets_seen.append(secrets)
        return {**environment({"envs": envs}, 1), **secrets}

    def _run(self, task, stream) -> tuple[int, int]:
        """The task's setup and run on this machine: their exit codes."""
        env = self._env(task)
        setup = subprocess.run(["bash", "-c", task.setup], cwd=REPO, env=env, capture_output=True, text=True)
        stream.write(setup.stdout + setup.stderr)
        if setup.returncode:
            return setup.returncode, 0
        steps = 0
        proc = subprocess.Popen(["bash", "-c", task.run], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for line in proc.stdout:
            stream.write(line)
            if (parse_line(line) or {}).get("event") == "step":
                steps += 1
                if self.interrupt_after_steps is not None and steps >= self.interrupt_after_steps:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise KeyboardInterrupt
        return 0, proc.wait()


class _Recording:
    """Writes through to the follower's stream and keeps the text, for a later tail of the ended job."""

    def __init__(self, stream):
        self.stream, self.text = stream, ""

    def write(self, text: str) -> int:
        self.text += text
        return self.stream.write(text)
