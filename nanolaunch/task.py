"""Fill the SkyPilot task template (cloud/train.yaml) for one run: resources, the bucket and the NL_* envs.

The trainer reads its settings from those NL_* variables (trainer/settings.py), so the run command names none.

The template is plain SkyPilot YAML; this module only sets values, so what `sky launch` runs, what
`nanolaunch yaml` prints and what the local backend executes are the same setup and run commands.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from nanolaunch import prices
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from trainer import settings
from trainer.settings import data_kind, data_slug

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "cloud" / "train.yaml"
STORE = "/nl-store"  # where the bucket is mounted on every node
BUCKET_ENV = "NANOLAUNCH_BUCKET"
MASTER_PORT_ENV = "NL_MASTER_PORT"  # torchrun's rendezvous port: the one NL_* variable that is not a setting
AUTOSTOP_IDLE_MINUTES = 10
# A preempted spot job comes back in the next region with capacity; a crash of our own code is not retried.
JOB_RECOVERY = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 0}


@dataclass(frozen=True)
class RunOptions:
    """Where and how the task runs, beyond the trainer's settings (those travel in RunConfig.train)."""
    master_port: int = 29500
    bucket: str | None = None  # cloud runs: the bucket mounted at STORE; None runs locally, without mounts
    node_python: str | None = None  # a Python with the trainer's packages on every node (NL_PYTHON): skips setup
    managed: bool = False  # a managed job (spot runs): SkyPilot recovers it after preemption
    disk_size: int | None = None  # GB per node, from the plan's disk terms (nanolaunch/disk.py); None: SkyPilot's
    cache_gb: int | None = None  # the bucket mount's local cache bound (rclone --vfs-cache-max-size)


def default_bucket() -> str:
    """$NANOLAUNCH_BUCKET, else this installation's own bucket: bucket names are global, and `nanolaunch-root`
    or `nanolaunch-ubuntu` would be someone else's. A random suffix, drawn once, is kept in NANOLAUNCH_HOME."""
    import getpass
    import re
    import secrets

    from nanolaunch.presets import home

    name = os.environ.get(BUCKET_ENV)
    if not name:
        path = home() / "bucket-suffix"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".bucket-suffix.{os.getpid()}")
            tmp.write_text(secrets.token_hex(4) + "\n")
            try:
                os.link(tmp, path)  # the first writer wins; a concurrent one reads its suffix
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        name = f"nanolaunch-{getpass.getuser()}-{path.read_text().strip()}"
    name = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not 3 <= len(name) <= 63:
        raise NanolaunchError(f"bucket name {name!r} must be 3–63 characters; set {BUCKET_ENV}")
    return name


SHARED_STORE_ENV = "NANOLAUNCH_SHARED_STORE"
NODE_PYTHON_ENV = "NANOLAUNCH_NODE_PYTHON"


def shared_store() -> str:
    """A Slurm cluster's storage: a path every node sees (a shared filesystem), $NANOLAUNCH_SHARED_STORE or
    ~/nanolaunch-store, home directories being shared on most clusters."""
    path = os.environ.get(SHARED_STORE_ENV) or os.path.expanduser("~/nanolaunch-store")
    if not os.path.isabs(path):
        raise NanolaunchError(f"{SHARED_STORE_ENV} must be an absolute path on the cluster's shared filesystem, "
                              f"got {path!r}")
    return path


NODE_DATA = "~/nl-data"  # a cloud node's own disk: shards are streamed here, not into the bucket mount


class Placement(NamedTuple):
    run_dir: str  # checkpoints and result.json: in the store
    store_dir: str  # kept across runs: the dataset listing and tokenizers
    data_dir: str  # where the shards go: the store on Slurm (a shared disk), the node's own disk on a cloud
    opts: RunOptions


def placement(config: RunConfig, run_name: str, *, managed: bool = False, bucket: str | None = None,
              disk: dict | None = None) -> Placement:
    """Where a SkyPilot run keeps what: on Slurm under the cluster's shared path, on the clouds in a bucket
    mounted at STORE, with shards on the node's disk (uploading them to the bucket would only cost time and
    space), a disk of the plan's size (`disk`: the plan's disk part). $NANOLAUNCH_NODE_PYTHON names a ready
    Python on every node (skips setup)."""
    python = os.environ.get(NODE_PYTHON_ENV) or None
    source = data_slug(config.train)
    if data_kind(config.train.data) == "local" and not config.slurm:
        raise NanolaunchError(f"data {config.train.data} is a folder on this machine, which a cloud node cannot read; "
                              "upload it as a Hub dataset (hf upload --repo-type dataset) and pass its id")
    if config.slurm:
        root = shared_store()
        return Placement(f"{root}/runs/{run_name}", f"{root}/data/{source}", f"{root}/data/{source}",
                         RunOptions(managed=managed, node_python=python))
    sized = {"disk_size": disk["disk_size_gb"], "cache_gb": disk["cache_gb"]} if disk else {}
    return Placement(f"{STORE}/runs/{run_name}", f"{STORE}/data/{source}", f"{NODE_DATA}/{source}",
                     RunOptions(bucket=bucket or default_bucket(), managed=managed, node_python=python, **sized))


def load_template() -> dict:
    import yaml

    return yaml.safe_load(TEMPLATE.read_text())


PASSED_ENVS = ("HF_ENDPOINT",)  # where the Hub is: a mirror the launcher reads is the one the nodes read


def envs(config: RunConfig, opts: RunOptions) -> dict[str, str]:
    """Every trainer setting that has a value as its NL_* variable (SkyPilot envs are strings), the port, and
    the launcher's own PASSED_ENVS (never a secret: those travel as SkyPilot secrets)."""
    extra = {"NL_PYTHON": opts.node_python} if opts.node_python else {}
    passed = {k: os.environ[k] for k in PASSED_ENVS if os.environ.get(k)}
    return {**settings.to_env(config.train), MASTER_PORT_ENV: str(opts.master_port), **extra, **passed}


def gpu_resources(gpu: str, count: int, spot: bool, needed: frozenset[str], infra: str | None = None) -> dict:
    """Exactly these GPUs, as the plan priced them: one candidate per known node type (SkyPilot's optimizer
    picks the cheapest enabled one, and fails over among them). A bare `H100` would let SkyPilot pick a
    PCIe card on RunPod or Lambda, slower than the SXM part the plan assumed. Only clouds that can run the
    task (mount the bucket, join several nodes, sell spot) are candidates, as only they were priced."""
    cloud = infra.split("/")[0] if infra else None
    offers = [o for o in prices.offers_for(gpu, count, needed) if (o.spot_usd_per_hour or not spot)
              and cloud in (None, o.cloud)]
    if not offers:  # a GPU we hold no prices for: ask SkyPilot by name
        return {"accelerators": f"{gpu}:{count}"}
    return {"any_of": [{"infra": infra or o.cloud, "instance_type": o.instance_type,
                        "accelerators": f"{o.sky_accelerator}:{count}"} for o in offers]}


def render(config: RunConfig, opts: RunOptions, name: str = "nanolaunch") -> dict:
    """The filled task. With a bucket it is a cloud task; without, the local backend's (no mounts)."""
    task = load_template()
    task["name"] = name
    task["workdir"] = str(REPO)
    task["num_nodes"] = config.nodes
    if config.slurm:  # the cluster's own partitions: no node types, no disk size to choose
        resources = {"infra": config.infra}
        resources.update({"cpus": "2+"} if config.on_cpu else {"accelerators": config.gpu})
    else:
        resources = ({"cpus": "2+"} if config.on_cpu
                     else gpu_resources(config.accelerator.name, config.gpus_per_node, config.spot,
                                        prices.needs(nodes=config.nodes, spot=config.spot, bucket=bool(opts.bucket)),
                                        config.infra))
        if config.infra and "any_of" not in resources:
            resources["infra"] = config.infra
        if opts.disk_size:
            resources["disk_size"] = opts.disk_size
    if config.spot:
        resources["use_spot"] = True
    if opts.managed:  # SkyPilot recovers it after preemption and cleans its clusters up itself
        resources["job_recovery"] = dict(JOB_RECOVERY)
    else:
        resources["autostop"] = {"idle_minutes": AUTOSTOP_IDLE_MINUTES, "down": True}
    task["resources"] = resources
    if opts.bucket:
        task["file_mounts"] = {STORE: {"name": opts.bucket, "mode": "MOUNT_CACHED"}}
        if opts.cache_gb:  # rclone's cache is 10G unless bounded; the checkpoints must fit while they upload
            task["file_mounts"][STORE]["config"] = {"mount_cached": {"vfs_cache_max_size": f"{opts.cache_gb}G"}}
    else:
        del task["file_mounts"]
    filled = envs(config, opts)  # in the settings' order; the template's defaults only where nothing is set
    task["envs"] = {**filled, **{k: v for k, v in task["envs"].items() if k not in filled}}
    return task


def to_yaml(task: dict) -> str:
    """YAML a person can read and `sky launch` can run: multi-line commands as | blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(task, Dumper=Dumper, sort_keys=False, width=120)


def single_node_env(gpus_per_node: int) -> dict[str, str]:
    """The SKYPILOT_* variables SkyPilot sets on a one-node cluster, for running the task locally."""
    return {"SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1",
            "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus_per_node), "SKYPILOT_TASK_ID": "local"}
