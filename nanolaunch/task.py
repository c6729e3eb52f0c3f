"""Fill the SkyPilot task template (sky/train.yaml) for one run: resources and the NL_* envs.

The template is plain SkyPilot YAML; this module only sets values, so what `sky launch` runs, what
`nanolaunch yaml` prints and what the local backend executes are the same setup and run commands.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanolaunch import gpus
from nanolaunch.config import RunConfig

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "sky" / "train.yaml"


@dataclass(frozen=True)
class RunOptions:
    """Per-run settings that are not part of the model config."""
    run_dir: str
    data_dir: str
    probe: int | None = None
    memory_limit_gib: float | None = None
    max_cost: float | None = None
    price_per_hour: float | None = None
    checkpoint_every: int = 500
    master_port: int = 29500
    wandb_project: str | None = None


def load_template() -> dict:
    import yaml

    return yaml.safe_load(TEMPLATE.read_text())


def envs(config: RunConfig, opts: RunOptions) -> dict[str, str]:
    """Every trainer setting as a string env var (SkyPilot envs are strings); '' means 'not set'."""
    def s(v) -> str:
        return "" if v is None else str(v)

    compile_flag = {None: "auto", True: "1", False: "0"}[config.compile]
    horizon = config.horizon
    return {
        "NL_DEPTH": s(config.depth), "NL_VOCAB_SIZE": s(config.vocab_size), "NL_SEQ_LEN": s(config.seq_len),
        "NL_HEAD_DIM": s(config.head_dim), "NL_DEVICE_BATCH": s(config.device_batch),
        "NL_TOTAL_BATCH": s(config.total_batch), "NL_RATIO": s(horizon.get("ratio")),
        "NL_ITERATIONS": s(horizon.get("iterations")), "NL_TARGET_FLOPS": s(horizon.get("target_flops")),
        "NL_EVAL_EVERY": s(config.eval_every), "NL_EVAL_TOKENS": s(config.eval_tokens),
        "NL_DATA_SOURCE": config.data_source, "NL_SHARDS": s(config.shards), "NL_DTYPE": config.dtype,
        "NL_COMPILE": compile_flag, "NL_SEED": s(config.seed), "NL_PROBE": s(opts.probe),
        "NL_MEMORY_LIMIT_GIB": s(opts.memory_limit_gib), "NL_MAX_COST": s(opts.max_cost),
        "NL_PRICE_PER_HOUR": s(opts.price_per_hour), "NL_CHECKPOINT_EVERY": s(opts.checkpoint_every),
        "NL_DATA_DIR": opts.data_dir, "NL_RUN_DIR": opts.run_dir, "NL_MASTER_PORT": s(opts.master_port),
        "WANDB_PROJECT": s(opts.wandb_project),
    }


def render(config: RunConfig, opts: RunOptions, name: str = "nanolaunch") -> dict:
    task = load_template()
    gpu, per_node = gpus.parse_gpu_spec(config.gpu)
    task["name"] = name
    task["workdir"] = str(REPO)
    task["num_nodes"] = config.nodes
    if gpu.name == gpus.CPU_NAME:
        task["resources"] = {"cpus": "2+"}
    else:
        task["resources"] = {"accelerators": f"{gpu.name}:{per_node}", "use_spot": config.spot}
    unknown = set(envs(config, opts)) - set(task["envs"])
    assert not unknown, f"sky/train.yaml lacks envs {unknown}"  # the template and this module move together
    task["envs"] = {**task["envs"], **envs(config, opts)}
    return task


def to_yaml(task: dict) -> str:
    import yaml

    return yaml.safe_dump(task, sort_keys=False, width=120)


def single_node_env(gpus_per_node: int) -> dict[str, str]:
    """The SKYPILOT_* variables SkyPilot sets on a one-node cluster, for running the task locally."""
    return {"SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1",
            "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus_per_node), "SKYPILOT_TASK_ID": "local"}
