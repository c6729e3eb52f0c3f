"""The plan's price is the price SkyPilot's own optimizer picks, on the clouds the user has enabled.

SkyPilot's catalog files are seeded in their real formats (AWS one row per zone with an Arch column; GCP's host
VMs and GPUs as separate rows, joined zone by zone; Lambda without spot) into a scratch SkyPilot home, with
prices chosen so that each cloud's cheapest place differs between on-demand and spot and GCP's cheapest GPU
zone has no host VM. The enabled clouds are written into SkyPilot's own state database with its own function
(what `sky check` records), for GCP only, AWS only, Lambda only and all three. In one subprocess per
run, for each of those and each node shape, on demand and spot: nanolaunch plans, and SkyPilot's Optimizer
chooses for the task nanolaunch renders; the instance, cloud and price must be the same. No credentials, no
network: every connection beyond loopback is refused and logged (tests/loopback_guard.py).
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def gpu_info(name: str, count: int, mib: int) -> str:
    return str({"Gpus": [{"Name": name, "Manufacturer": "NVIDIA", "Count": count, "MemoryInfo": {"SizeInMiB": mib}}],
                "TotalGpuMemoryInMiB": count * mib})


AWS = [  # InstanceType, AcceleratorName, AcceleratorCount, vCPUs, MemoryGiB, Price, SpotPrice, Region, zone id
    ("p5.48xlarge", "H100", 8, 192, 2048, 55.04, 12.50, "us-east-1", "use1-az2"),
    ("p5.48xlarge", "H100", 8, 192, 2048, 55.04, 10.90, "us-east-1", "use1-az4"),
    ("p5.48xlarge", "H100", 8, 192, 2048, 58.10, 9.80, "eu-central-1", "euc1-az1"),
    ("p5.4xlarge", "H100", 1, 16, 256, 6.88, 8.256, "us-east-1", "use1-az1"),
    ("p5.4xlarge", "H100", 1, 16, 256, 7.42, 2.10, "ap-south-1", "aps1-az1"),
    ("p4d.24xlarge", "A100", 8, 96, 1152, 21.95764, 2.4655, "us-east-2", "use2-az1"),
    ("p4d.24xlarge", "A100", 8, 96, 1152, 32.7726, 2.10, "us-east-1", "use1-az6"),
    ("m6i.2xlarge", "", "", 8, 32, 0.384, 0.15, "us-east-1", "use1-az2"),  # a CPU node: no GPUs, not an offer
]
GCP_VMS = [  # InstanceType, vCPUs, MemoryGiB, Region, zone, Price, SpotPrice (the host VM alone)
    ("a3-highgpu-8g", 208, 1872, "us-central1", "us-central1-a", 9.46006, 2.88933),
    ("a3-highgpu-8g", 208, 1872, "us-central1", "us-central1-b", 9.46006, 2.88933),
    ("a3-highgpu-8g", 208, 1872, "europe-west4", "europe-west4-b", 9.93306, 2.27469),
    ("a3-highgpu-1g", 26, 234, "us-central1", "us-central1-a", 1.18251, 0.36117),
    ("a3-highgpu-1g", 26, 234, "europe-west4", "europe-west4-b", 1.24163, 0.28434),
    ("a2-highgpu-8g", 96, 680, "us-central1", "us-central1-a", 5.91582, 2.958),
    ("a2-highgpu-8g", 96, 680, "europe-west4", "europe-west4-a", 6.51251, 2.54592),
    ("n2-standard-8", 8, 32, "us-central1", "us-central1-a", 0.3885, 0.0937),
]
GCP_GPUS = [  # AcceleratorName, AcceleratorCount, Region, zone, Price, SpotPrice (the GPUs alone)
    ("H100", 8, "us-central1", "us-central1-a", 33.60609, 9.42349),
    ("H100", 8, "us-central1", "us-central1-b", 33.60609, 9.42349),
    ("H100", 8, "europe-west4", "europe-west4-b", 32.0, 10.5),
    ("H100", 8, "us-east4", "us-east4-a", 20.0, 4.0),  # the cheapest GPUs, in a zone with no a3 host: not a node
    ("H100", 1, "us-central1", "us-central1-a", 4.20076, 1.17794),
    ("H100", 1, "europe-west4", "europe-west4-b", 4.0, 0.9),
    ("A100", 8, "us-central1", "us-central1-a", 23.47, 8.0),
    ("A100", 8, "europe-west4", "europe-west4-a", 12.90919, 8.6),
]
LAMBDA = [  # InstanceType, AcceleratorName, AcceleratorCount, vCPUs, MemoryGiB, Price, Region (no spot)
    ("gpu_8x_h100_sxm5", "H100", 8, 208, 1800, 31.92, "us-east-1"),
    ("gpu_8x_h100_sxm5", "H100", 8, 208, 1800, 31.92, "us-west-1"),
    ("gpu_1x_h100_sxm5", "H100", 1, 26, 225, 4.29, "us-east-1"),
    ("gpu_1x_h100_pcie", "H100", 1, 26, 200, 3.29, "us-east-1"),  # a PCIe card under SkyPilot's name H100
    ("gpu_8x_a100", "A100", 8, 124, 1800, 15.92, "us-east-1"),
]


def write(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def seed_catalog(root: Path) -> Path:
    """SkyPilot 0.14's catalog (schema v8) for AWS, GCP and Lambda, in their real column layouts."""
    catalog = root / ".sky" / "catalogs" / "v8"
    write(catalog / "aws" / "vms.csv", ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB",
                                        "GpuInfo", "Price", "SpotPrice", "Region", "AvailabilityZone", "Arch"],
          [(i, a, n, c, m, gpu_info(a, n, 81920) if a else "", p, s, r, z, "x86_64")
           for i, a, n, c, m, p, s, r, z in AWS])
    write(catalog / "gcp" / "vms.csv", ["InstanceType", "vCPUs", "MemoryGiB", "AcceleratorName", "AcceleratorCount",
                                        "GpuInfo", "Region", "AvailabilityZone", "Price", "SpotPrice"],
          [(i, c, m, "", "", "", r, z, p, s) for i, c, m, r, z, p, s in GCP_VMS]
          + [("", "", "", a, n, "", r, z, p, s) for a, n, r, z, p, s in GCP_GPUS])
    write(catalog / "lambda" / "vms.csv", ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs",
                                           "MemoryGiB", "Price", "Region", "GpuInfo", "SpotPrice"],
          [(i, a, n, c, m, p, r, gpu_info(a, n, 81920), "") for i, a, n, c, m, p, r in LAMBDA])
    # what SkyPilot reads beside them (it would download a missing file)
    write(catalog / "gcp" / "images.csv", ["Tag", "Region", "ImageId", "CreationDate"], [])
    write(catalog / "gcp" / "accelerator_quota_mapping.csv", ["Accelerator", "Quota"], [])
    write(catalog / "aws" / "images.csv", ["Tag", "Region", "OS", "OSVersion", "ImageId", "CreationDate"], [])
    write(catalog / "aws" / "instance_quota_mapping.csv", ["InstanceType", "QuotaCode"], [])
    write(catalog / "common" / "accelerators.csv", ["AcceleratorName", "Clouds"], [("H100", "AWS,GCP,Lambda"),
                                                                                   ("A100", "AWS,GCP,Lambda")])
    write(catalog / "common" / "metadata.csv", ["GPU", "MemoryGB", "Manufacturer"], [("H100", 80, "NVIDIA"),
                                                                                    ("A100", 40, "NVIDIA")])
    return catalog


DRIVER = r"""
import json, sys
import sky, sky.check
from sky import global_user_state, skypilot_config
from sky.clouds.cloud import CloudCapability
from nanolaunch import planner, prices
from nanolaunch.backends import sky_sdk
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from nanolaunch.task import RunOptions, render

workspace = skypilot_config.get_active_workspace()
# what `sky check` records; the allowed clouds too, so that SkyPilot does not re-check (that asks each cloud)
global_user_state.set_allowed_clouds(sky.check._get_workspace_allowed_clouds(workspace), workspace)
for clouds in json.loads(sys.argv[1]):
    global_user_state.set_enabled_clouds(clouds, CloudCapability.COMPUTE, workspace)
    for gpu in ("H100:8", "H100:1", "A100:8"):
        for spot in (False, True):
            config = RunConfig.build(depth=12, gpu=gpu, device_batch=4, spot=spot)
            plan = planner.plan(config)
            try:
                theirs = sky_sdk.optimize(sky_sdk.to_task(render(config, RunOptions(bucket="nl-bucket"))))
            except NanolaunchError as e:
                theirs = {"error": str(e)}
            print(json.dumps({"clouds": clouds, "gpu": gpu, "spot": spot, "ours": plan["usd_per_hour"],
                              "source": plan["price_source"], "priced": plan["clouds"], "theirs": theirs}))
"""

SCENARIOS = [["gcp"], ["aws"], ["lambda"], ["aws", "gcp", "lambda"]]


@pytest.fixture(scope="module")
def choices(tmp_path_factory):
    root = tmp_path_factory.mktemp("sky-prices")
    seed_catalog(root)
    log = root / "network.log"
    env = {**os.environ, "HOME": str(root), "SKY_RUNTIME_DIR": str(root), "NANOLAUNCH_HOME": str(root / "nl"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS / "loopback_only"), str(TESTS)]),
           "NL_TEST_NETWORK_LOG": str(log), "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(SCENARIOS)], capture_output=True, text=True,
                          cwd=root, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert not log.exists(), log.read_text()  # nothing tried to leave the machine
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_every_scenario_was_priced_by_both(choices):
    assert len(choices) == len(SCENARIOS) * 3 * 2


@pytest.mark.parametrize("clouds", SCENARIOS, ids=["+".join(c) for c in SCENARIOS])
def test_the_plan_charges_what_skypilots_optimizer_picks(choices, clouds):
    for c in (c for c in choices if c["clouds"] == clouds):
        theirs = c["theirs"]
        what = f"{c['gpu']} spot={c['spot']} on {clouds}: ours {c['ours']} ({c['source']}), theirs {theirs}"
        if "error" in theirs:  # nothing SkyPilot could launch: the plan has no price either, and says so
            assert c["ours"] is None and c["source"].startswith("unknown"), what
            continue
        assert theirs["spot"] == c["spot"], what
        assert c["ours"] == pytest.approx(theirs["usd_per_hour"], abs=1e-4), what
        assert c["source"].startswith(f"{theirs['cloud'].lower()} {theirs['instance_type']} ({theirs['region']})"), what
        assert c["priced"] == f"the clouds enabled in SkyPilot ({', '.join(sorted(clouds))})", what


def test_gcp_nodes_are_host_plus_gpus_in_the_same_zone(choices):
    gcp = {(c["gpu"], c["spot"]): c for c in choices if c["clouds"] == ["gcp"]}
    # on demand: europe-west4 (9.93306 + 32.0) beats us-central1 (9.46006 + 33.60609); us-east4's cheaper
    # GPUs have no host VM there
    assert gcp[("H100:8", False)]["ours"] == pytest.approx(41.93306)
    assert gcp[("H100:8", True)]["ours"] == pytest.approx(2.88933 + 9.42349)  # spot: us-central1
    assert gcp[("A100:8", False)]["ours"] == pytest.approx(6.51251 + 12.90919)


def test_spot_is_priced_where_spot_is_sold(choices):
    lam = {(c["gpu"], c["spot"]): c for c in choices if c["clouds"] == ["lambda"]}
    assert lam[("H100:8", True)]["ours"] is None and "no spot offer" in lam[("H100:8", True)]["source"]
    every = {(c["gpu"], c["spot"]): c for c in choices if len(c["clouds"]) == 3}
    assert every[("H100:8", False)]["source"].startswith("lambda gpu_8x_h100_sxm5")
    assert every[("H100:8", True)]["source"].startswith("aws p5.48xlarge (eu-central-1) spot")
    # Lambda's cheaper PCIe card is not an H100 (SXM) node: neither nanolaunch nor the task asks for it
    assert every[("H100:1", False)]["source"].startswith("lambda gpu_1x_h100_sxm5")


CLI_DRIVER = r"""
import json, sys
import sky, sky.check
from sky import global_user_state, skypilot_config
from sky.clouds.cloud import CloudCapability

workspace = skypilot_config.get_active_workspace()
global_user_state.set_allowed_clouds(sky.check._get_workspace_allowed_clouds(workspace), workspace)
global_user_state.set_enabled_clouds(json.loads(sys.argv[1]), CloudCapability.COMPUTE, workspace)
_optimize = sky.Optimizer.optimize
def optimize(*a, **k):  # every call SkyPilot's optimizer gets, on stderr
    print("OPTIMIZER-CALLED", file=sys.stderr)
    return _optimize(*a, **k)
sky.Optimizer.optimize = optimize
from nanolaunch.cli import main
sys.argv = ["nanolaunch", *sys.argv[2:]]
main()
"""


@pytest.fixture
def cli(tmp_path):
    seed_catalog(tmp_path)
    log = tmp_path / "network.log"
    env = {**os.environ, "HOME": str(tmp_path), "SKY_RUNTIME_DIR": str(tmp_path), "NANOLAUNCH_HOME": str(tmp_path / "nl"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS / "loopback_only"), str(TESTS)]),
           "NL_TEST_NETWORK_LOG": str(log), "AWS_EC2_METADATA_DISABLED": "true"}

    def run(clouds: list[str], *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-c", CLI_DRIVER, json.dumps(clouds), *args], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=300)
        assert not log.exists(), log.read_text()
        return done
    return run


def test_run_chooses_refuses_and_forces_on_the_enabled_clouds(cli):
    # no --gpu, no --batch: the search's choice, said in one line, is what SkyPilot is asked to price
    chosen = cli(["gcp"], "run", "d20", "--ratio", "20", "--dryrun", "--json")
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    result = json.loads(chosen.stdout)
    pick = result["search"]["within"]["chosen"]
    assert [line for line in chosen.stderr.splitlines() if line.startswith("chose ")]
    assert result["skypilot"]["cloud"] == "GCP" and pick["price_source"].startswith("gcp ")
    assert result["skypilot"]["usd_per_hour"] == pytest.approx(result["plan"]["usd_per_hour"]) == pytest.approx(
        pick["usd_per_hour"])
    # a config that cannot fit: refused in one line, SkyPilot's optimizer never called
    refused = cli(["gcp"], "run", "d34", "--ratio", "40", "--gpu", "H100:1", "--dryrun")
    assert refused.returncode == 2 and "OPTIMIZER-CALLED" not in refused.stderr
    assert "does not fit" in refused.stderr and "the cheapest config that fits is --gpu" in refused.stderr
    # --force goes ahead: SkyPilot prices the same node the plan did
    forced = cli(["aws"], "run", "d34", "--ratio", "40", "--gpu", "H100:1", "--force", "--dryrun", "--json")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "OPTIMIZER-CALLED" in forced.stderr and "warning: --force" in forced.stderr
    got = json.loads(forced.stdout)
    assert (got["skypilot"]["instance_type"], got["skypilot"]["usd_per_hour"]) == ("p5.4xlarge", 6.88)
    assert got["plan"]["usd_per_hour"] == 6.88
