"""The SkyPilot task nanolaunch generates: valid by SkyPilot's own schema, runnable on 1 and 2 nodes."""
import math
import os
import subprocess
import sys
import threading

import pytest
import yaml

from nanolaunch import presets, prices
from nanolaunch.backends import sky_sdk
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from nanolaunch.backends.local import environment, free_port
from nanolaunch.task import NODE_DATA, STORE, RunOptions, placement, render, to_yaml
from trainer.settings import data_slug

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cloud_task(config: RunConfig, managed: bool) -> dict:
    place = placement(config, "00007", managed=managed, bucket="nl-test-bucket")
    return render(config.replace(run_dir=place.run_dir, data_dir=place.data_dir, store_dir=place.store_dir),
                  place.opts, name="nl-7")


BUILT_IN = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "presets")) if f.endswith(".toml"))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_preset_task_validates_with_skypilot(name, sky_home):
    base = presets.load(name).config
    gpu = base.gpu if base.gpu != "cpu" else "A100:1"
    for nodes in (1, 2):
        for spot in (False, True):
            config = base.replace(gpu=gpu, nodes=nodes, spot=spot)
            task = cloud_task(config, managed=spot)
            built = sky_sdk.to_task(yaml.safe_load(to_yaml(task)), {"WANDB_API_KEY": "x"})  # what `sky launch` reads
            kind, count = gpu.split(":")
            needed = prices.needs(nodes=nodes, spot=spot)
            expected = {o.instance_type for o in prices.offers_for(kind, int(count), needed)
                        if o.spot_usd_per_hour or not spot}
            assert built.num_nodes == nodes and expected
            assert {r.instance_type for r in built.resources} == expected  # the node types the plan priced
            for resources in built.resources:
                assert list(resources.accelerators.values()) == [int(count)] and resources.use_spot == spot
                assert (resources.job_recovery is not None) == spot  # spot runs are recovered managed jobs
                if not spot:
                    assert resources.autostop_config.idle_minutes == 10 and resources.autostop_config.down
            assert list(built.storage_mounts) == [STORE]
            assert built.envs["NL_RUN_DIR"] == f"{STORE}/runs/00007"
            slug = data_slug(config.train)  # shards on the node's disk; listing and tokenizer in the bucket
            assert (built.envs["NL_DATA_DIR"], built.envs["NL_STORE_DIR"]) == (f"{NODE_DATA}/{slug}",
                                                                               f"{STORE}/data/{slug}")
            assert built.envs["NL_KEEP_DATA"] == "0"  # deleted once read: the node's disk dies with it
            assert "WANDB_API_KEY" not in to_yaml(task).replace("WANDB_API_KEY: null", "")


def test_skypilot_rejects_a_broken_task_in_one_line(sky_home):
    task = cloud_task(RunConfig.build(depth=4), managed=False)
    task["resources"]["accelerator"] = "H100:1"  # a typo SkyPilot's schema catches
    with pytest.raises(NanolaunchError, match="SkyPilot rejects the task") as caught:
        sky_sdk.to_task(task)
    assert "\n" not in str(caught.value)


def test_yaml_command_prints_a_task_sky_launch_accepts(sky_home):
    out = subprocess.run([sys.executable, "-m", "nanolaunch.cli", "yaml", "--preset", "h100x8_d34", "--nodes", "2",
                          "--bucket", "my-bucket"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    task = yaml.safe_load(out.stdout)
    # SXM H100s on the clouds that can mount the bucket and join two nodes (not RunPod's H100-SXM)
    assert {c["accelerators"] for c in task["resources"]["any_of"]} == {"H100:8"}
    assert "runpod" not in {c["infra"] for c in task["resources"]["any_of"]}
    assert task["num_nodes"] == 2
    assert task["file_mounts"] == {STORE: {"name": "my-bucket", "mode": "MOUNT_CACHED",
                                           "config": {"mount_cached": {"vfs_cache_max_size": "59G"}}}}
    assert task["resources"]["disk_size"] == 256  # the plan's disk line for d34 on 8×H100 (SkyPilot's default)
    assert task["envs"]["NL_DEPTH"] == "34" and task["envs"]["NL_DEVICE_BATCH"] == "4"
    sky_sdk.to_task(task)


def test_two_nodes_rendezvous_from_the_skypilot_variables(tmp_path):
    """The run command on node ranks 0 and 1, as SkyPilot starts it on each node: one 2-rank job (gloo)."""
    config = RunConfig.build(depth=2, head_dim=32, vocab_size=512, seq_len=64, device_batch=4, total_batch=512,
                       iterations=4, eval_every=4, eval_tokens=2048, gpu="H100:1", nodes=2, data="synthetic",
                       dtype="fp32")
    task = render(config.replace(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data")),
                  RunOptions(master_port=free_port()))
    outputs = {}

    def node(rank: int) -> None:
        env = {**environment(task, 1), "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": str(rank),
               "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1", "SKYPILOT_NUM_GPUS_PER_NODE": "1", "OMP_NUM_THREADS": "1"}
        outputs[rank] = subprocess.run(["bash", "-c", task["run"]], cwd=REPO, env=env, capture_output=True,
                                       text=True, timeout=300)

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rank in (0, 1):
        assert outputs[rank].returncode == 0, outputs[rank].stdout[-3000:] + outputs[rank].stderr[-3000:]
    start = [line for line in outputs[0].stdout.splitlines() if '"event": "start"' in line]
    assert len(start) == 1 and '"world_size": 2' in start[0] and '"grad_accum": 1' in start[0]
    assert '"event": "result"' in outputs[0].stdout and '"status": "ok"' in outputs[0].stdout
    assert '"event"' not in outputs[1].stdout  # only global rank 0 speaks


def test_the_default_bucket_is_this_installations_own(tmp_path, monkeypatch):
    """`nanolaunch-<user>` collided: bucket names are global, and root or ubuntu is everyone's user name."""
    from nanolaunch.task import default_bucket

    monkeypatch.delenv("NANOLAUNCH_BUCKET", raising=False)
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path / "a"))
    first = default_bucket()
    assert first == default_bucket()  # kept: checkpoints of earlier runs stay found
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path / "b"))
    assert default_bucket() != first and len(first) <= 63
    monkeypatch.setenv("NANOLAUNCH_BUCKET", "My_Bucket")
    assert default_bucket() == "my-bucket"


def test_the_task_asks_for_the_plans_disk_and_bounds_the_bucket_cache(sky_home):
    """plan d34 --ratio 40 on 8×H100: the disk plan's size is the task's disk_size on every candidate node, and
    the bucket mount's rclone cache is bounded to the plan's figure, as SkyPilot itself reads the YAML."""
    from nanolaunch.planner import plan

    config = RunConfig.build(depth=34, ratio=40, gpu="H100:8")
    disk = plan(config)["disk"]
    assert disk["asked"] and disk["disk_size_gb"] == max(256, math.ceil(disk["need_gb"] * 1.2 / 10) * 10)
    kept = plan(config.replace(keep_data=True))["disk"]  # every training file kept: 1,775 × 100 MB on the node
    assert kept["disk_size_gb"] == math.ceil(kept["need_gb"] * 1.2 / 10) * 10 > 256
    assert 18 < disk["checkpoint_gb"] < 20  # the issue's "about 19 GB each for d34"
    place = placement(config, "00007", bucket="nl-test-bucket", disk=disk)
    task = render(config.replace(run_dir=place.run_dir, data_dir=place.data_dir, store_dir=place.store_dir),
                  place.opts, name="nl-7")
    built = sky_sdk.to_task(yaml.safe_load(to_yaml(task)))
    assert {r.disk_size for r in built.resources} == {disk["disk_size_gb"]}
    mount = built.storage_mounts[STORE]
    assert "--vfs-cache-max-size {}G".format(disk["cache_gb"]) in mount.mount_cached_config.to_rclone_flags()
