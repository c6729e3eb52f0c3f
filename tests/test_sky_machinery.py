"""nanolaunch's task against SkyPilot's own machinery, run in-process or under bash: the API server's checks,
the job script SkyPilot generates around our run command. No fake: these are SkyPilot 0.14's own functions."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from nanolaunch import session
from nanolaunch.backends import sky_sdk, skypilot
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from nanolaunch.task import RunOptions, render, to_yaml

TINY = dict(depth=2, head_dim=32, vocab_size=512, seq_len=64, device_batch=4, total_batch=512, iterations=4,
            gpu="cpu", data="synthetic")  # no GPU named: SkyPilot would fetch its catalog for one


def cloud_task(**changes) -> dict:
    return render(RunConfig.build(**{**TINY, **changes}), RunOptions(bucket="nl-test-bucket"), name="nl-1")


def as_the_server_gets_it(task):
    """The client sends the DAG as YAML; the API server loads it back (sky/client/sdk.py, sky/server)."""
    import sky
    from sky.utils import dag_utils

    with sky.Dag() as dag:
        dag.add(task)
    return dag_utils.load_dag_from_yaml_str(dag_utils.dump_dag_to_yaml_str(dag))


@pytest.mark.parametrize("key", ["wandb-key-value", None])
def test_the_api_server_accepts_our_secrets_with_or_without_a_key(key, sky_home, monkeypatch):
    from sky import execution

    for name in ("WANDB_API_KEY", "HF_TOKEN"):  # the W&B key; the Hub token of a gated or private dataset
        if key:
            monkeypatch.setenv(name, f"{name}-{key}")
        else:
            monkeypatch.delenv(name, raising=False)
    task = sky_sdk.to_task(yaml.safe_load(to_yaml(cloud_task())), sky_sdk.secrets_from_env())
    dag = as_the_server_gets_it(task)
    execution._resolve_managed_secrets(dag)  # raised "No value available for secret(s)" for every launch
    got = {k: v.get_secret_value() for k, v in dag.tasks[0].secrets.items()}
    assert got == ({"WANDB_API_KEY": f"WANDB_API_KEY-{key}", "HF_TOKEN": f"HF_TOKEN-{key}"} if key else {})
    assert key is None or key not in to_yaml(cloud_task())


def test_a_null_secret_in_the_task_is_what_the_api_server_refuses(sky_home):
    """The check above can fail: the template's old `secrets: {WANDB_API_KEY: null}` is refused."""
    from sky import execution

    old = {**cloud_task(), "secrets": {"WANDB_API_KEY": None}}
    task = sky_sdk.to_task(old, {"WANDB_API_KEY": "set-at-launch"})
    with pytest.raises(RuntimeError, match="No value available for secret"):
        execution._resolve_managed_secrets(as_the_server_gets_it(task))


def job_script(run: str) -> str:
    """What SkyPilot executes on a node for our `run:`: its own wrapper with the cached-mount upload flush."""
    from sky.backends.task_codegen import TaskCodeGen
    return TaskCodeGen.build_task_bash_script(run)


@pytest.fixture
def node(tmp_path):
    """A node whose bucket is an rclone MOUNT_CACHED mount with a long log (as after a day of checkpoints),
    and a `python` that stands in for torchrun: it exits with $TRAINER_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "findmnt").write_text("#!/bin/sh\necho '/nl-store nl-bucket: fuse.rclone rw'\n")
    (bin_dir / "python").write_text("#!/bin/sh\necho trainer-ran\nexit \"$TRAINER_EXIT\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    logs = tmp_path / ".sky" / "rclone_log"
    logs.mkdir(parents=True)
    line = "2026/11/30 INFO  : vfs cache: cleaned: objects 3 (was 3) in use 0, to upload 0, uploading 0\n"
    (logs / "nl-store.log").write_text(line * 200_000)  # large: `tac | grep -m 1` cuts tac off (SIGPIPE)
    return {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("trainer_exit", [0, 3])
def test_the_upload_flush_runs_and_the_trainers_exit_code_survives_it(trainer_exit, node):
    """A trainer that ends oom (3), like over_budget (4) or cancelled (130), still flushes the checkpoint to the bucket, and SkyPilot
    sees the trainer's own code. Under the old `set -euo pipefail` the script ended before the flush."""
    script = job_script(cloud_task()["run"])
    done = subprocess.run(["bash", "-c", script], env={**node, "TRAINER_EXIT": str(trainer_exit),
                                                       "SKYPILOT_NUM_NODES": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "1",
                                                       "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1",
                                                       "NL_MASTER_PORT": "29500", "NL_PYTHON": "python"},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "trainer-ran" in done.stdout
    assert "cached mount upload complete" in done.stdout, done.stdout + done.stderr
    assert done.returncode == trainer_exit


def test_the_old_run_command_skipped_the_flush(node):
    old_run = "set -euo pipefail\npython -m torch.distributed.run -m trainer.train\n"
    done = subprocess.run(["bash", "-c", job_script(old_run)], env={**node, "TRAINER_EXIT": "3", "NL_PYTHON": "python"},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 3 and "upload complete" not in done.stdout


def epilogue_line(job_id: int, returncodes: list[int]) -> str:
    """The line SkyPilot's generated job epilogue prints for a failed job: its own code, executed."""
    import contextlib
    import io
    import re

    from sky.backends.task_codegen import TaskCodeGen

    gen = TaskCodeGen()
    gen.job_id, gen._has_prologue = job_id, True
    gen.add_epilogue()
    code = "\n".join(gen._code)
    statement = re.search(r"print\('ERROR:.*?flush=True\)", code, re.S).group(0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(statement, {"returncodes": returncodes, "reason": ""})
    return out.getvalue()


def test_sky_job_codes_are_skypilots():
    from sky.exceptions import JobExitCode

    assert session.SKY_JOB_CODES == {c.value: c.name for c in JobExitCode}


@pytest.mark.parametrize("returncodes, status", [([3], "oom"), ([7], "crashed"), ([137, 4], "over_budget")])
def test_a_job_without_a_result_is_judged_by_its_own_exit_code(returncodes, status, tmp_path, monkeypatch):
    """tail_logs answers 100 for every failed job; the trainer's code is only in SkyPilot's log line."""
    from nanolaunch.ledger import Ledger

    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    ledger = Ledger()
    run_id = ledger.add(project="t", title="t", kind="run", config={}, backend="sky", status="running")
    follower = skypilot.Reattached(ledger, ledger.get(run_id))
    follower.log_path.parent.mkdir(parents=True)
    follower.log_path.write_text("step 1\ntrainer: killed\n")
    for line in epilogue_line(5, returncodes).splitlines():
        follower(line)
    result = session.outcome(follower.follower.state, follower.epilogue.ended(100), follower.log_path)
    code = next(c for c in returncodes if c != 137)
    assert result.status == status and result.error.startswith(f"exit {code}: ") and "trainer: killed" in result.error


def test_the_feasibility_table_is_skypilots_own():
    """nanolaunch plans without importing SkyPilot; its table of what each cloud cannot do must be SkyPilot's."""
    import sky
    from sky.clouds.cloud import CloudImplementationFeatures as F

    from nanolaunch import prices

    clouds = {"aws": sky.AWS, "gcp": sky.GCP, "lambda": sky.Lambda, "runpod": sky.RunPod}
    assert set(prices.UNSUPPORTED) == {o.cloud for o in prices.offers()} == set(clouds)
    for name, cls in clouds.items():
        theirs = getattr(cls, "_CLOUD_UNSUPPORTED_FEATURES", {})
        for feature in ("STORAGE_MOUNTING", "MULTI_NODE", "SPOT_INSTANCE"):
            assert (feature in prices.UNSUPPORTED[name]) == (F[feature] in theirs), (name, feature)


def test_the_plan_prices_the_cloud_that_can_run_the_task():
    """d34 on 8×H100: RunPod is cheapest but cannot mount the bucket; the plan and the task say Lambda."""
    from nanolaunch import planner, presets

    config = presets.load("h100x8_d34").config
    plan = planner.plan(config)
    assert plan["usd_per_hour"] == 31.92 and plan["price_source"].startswith("lambda")
    task = render(config, RunOptions(bucket="b"))
    assert "runpod" not in {c["infra"] for c in task["resources"]["any_of"]}
    two = planner.plan(config.replace(nodes=2))
    assert two["usd_per_hour"] == 2 * 31.92


def test_a_node_gets_the_pinned_trainer_environment_on_python_3_11(tmp_path):
    """The setup used the node's own Python and the newest torch; rustbpe 0.1.0 ships a CPython 3.11 wheel
    only. Here a recording `uv` stands in at the place SkyPilot installs it on every node."""
    uv = tmp_path / ".local" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text('#!/bin/sh\necho "uv $* VIRTUAL_ENV=$VIRTUAL_ENV" >> "$HOME/uv-calls"\n')
    uv.chmod(0o755)
    setup = cloud_task()["setup"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NL_")}
    done = subprocess.run(["bash", "-c", setup], cwd=Path(__file__).resolve().parent.parent,
                          env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "uv-calls").read_text().splitlines()
    venv = tmp_path / "nl-venv"
    assert calls == [f"uv venv --quiet --allow-existing --python 3.11 {venv} VIRTUAL_ENV=",
                     f"uv pip install --quiet -r trainer/requirements.txt VIRTUAL_ENV={venv}"]
    pins = (Path(__file__).resolve().parent.parent / "trainer" / "requirements.txt").read_text()
    assert "torch==" in pins and "rustbpe==" in pins


def test_a_failed_setup_is_said_with_its_exit_code(tmp_path, monkeypatch):
    from nanolaunch.ledger import Ledger

    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    ledger = Ledger()
    follower = skypilot.Reattached(ledger, ledger.get(ledger.add(project="t", title="t", kind="run", config={},
                                                                 backend="sky", status="running")))
    follower("ERROR: \x1b[31mJob 1's setup failed with return code 1 (pid=13720). See error logs above.\x1b[0m")
    result = session.outcome(follower.follower.state, follower.epilogue.ended(100), follower.log_path)
    assert result.status == "crashed" and result.error.startswith("setup failed (exit 1): ")


def test_no_cloud_with_object_storage_is_said_as_such(sky_home, monkeypatch):
    """Defect 6: with only Lambda and RunPod enabled, SkyPilot cannot place the run's bucket and says "No cloud
    access available for storage"; nanolaunch used to pass that on as "run `sky check`". The error is SkyPilot's
    own, raised by its own storage placement; only the clouds' credential state is given (it needs the clouds)."""
    from sky import check as sky_check
    from sky.data import storage

    monkeypatch.delenv("HF_TOKEN", raising=False)  # SkyPilot counts a Hugging Face token as a storage cloud
    monkeypatch.setattr(sky_check, "get_cached_enabled_clouds_or_refresh", lambda capability, **kw: [])
    with pytest.raises(NanolaunchError) as raised:
        with sky_sdk.errors("launching nl-1"):
            storage.get_cached_enabled_storage_cloud_names_or_refresh(raise_if_no_cloud_access=True)
    message = str(raised.value)
    assert "no enabled cloud has object storage" in message and "--infra slurm/NAME" in message
    assert "\n" not in message


def test_without_skypilots_epilogue_line_the_code_comes_from_torchruns_summary(tmp_path):
    """On Slurm the job's output may end before SkyPilot's epilogue prints the run command's codes (seen in CI):
    tail_logs says FAILED, and torchrun's summary still names the trainer's own code."""
    from nanolaunch.events import RunState

    log = tmp_path / "train.log"
    log.write_text("exiting_trainer FAILED\nRoot Cause (first observed failure):\n[0]:\n  exitcode  : 3 (pid: 14706)\n"
                   "srun: error: vm: task 0: Exited with exit code 1\n")
    result = session.outcome(RunState(), skypilot.Epilogue(lambda line: None).ended(100), log)
    assert result.status == "oom" and result.error.startswith("exit 3: ")
