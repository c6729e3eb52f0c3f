"""SkyPilot's own optimizer picks the instance for `nanolaunch run d34 --ratio 40 --gpu H100:1 --batch 2`, offline.

A catalog snapshot (built from nanolaunch's price snapshot, in SkyPilot's vms.csv format) is seeded into a
temporary SkyPilot home; Lambda and RunPod are recorded as enabled in SkyPilot's own state. The
run's --dryrun validates the task, runs the optimizer and launches nothing; the plan's price, read from
the same SkyPilot catalog cache, must equal the chosen instance's. Runs in a subprocess, so SkyPilot reads
this home from its first import, and any attempt to reach the network fails at a dead loopback proxy.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from nanolaunch.prices import sky_name

REPO = Path(__file__).resolve().parent.parent
CLOUDS = {"lambda": "Lambda", "runpod": "RunPod"}

DRIVER = """
import sys
import sky, sky.check
from sky import global_user_state, skypilot_config
from sky.clouds.cloud import CloudCapability
# No credentials here: record Lambda and RunPod as enabled, as `sky check` would on a configured machine.
workspace = skypilot_config.get_active_workspace()
global_user_state.set_allowed_clouds(sky.check._get_workspace_allowed_clouds(workspace), workspace)
global_user_state.set_enabled_clouds(["lambda", "runpod"], CloudCapability.COMPUTE, workspace)
# SkyPilot logs while it optimizes (e.g. a cloud it blocks); its handlers hold the stdout of their import.
from sky import sky_logging
_optimize = sky.Optimizer.optimize
def optimize(*a, **k):
    sky_logging.init_logger("sky.optimizer").warning("SKYPILOT-LOG-LINE")
    return _optimize(*a, **k)
sky.Optimizer.optimize = optimize
from nanolaunch.cli import main
sys.argv = ["nanolaunch", *sys.argv[1:]]
main()
"""


def seed_catalog(root: Path) -> list[dict]:
    """SkyPilot catalog files for two clouds, from the rows of nanolaunch's snapshot."""
    lines = (REPO / "nanolaunch" / "data" / "prices.csv").read_text().splitlines()
    rows = [r for r in csv.DictReader(x for x in lines if not x.startswith("#")) if r["cloud"] in CLOUDS]
    catalog = root / ".sky" / "catalogs" / "v8"
    for cloud in CLOUDS:
        (catalog / cloud).mkdir(parents=True)
        with open(catalog / cloud / "vms.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price",
                        "Region", "GpuInfo", "SpotPrice"])
            for r in rows:
                if r["cloud"] == cloud:  # under SkyPilot's names: RunPod's SXM H100 is H100-SXM, its PCIe one H100
                    w.writerow([r["instance_type"], sky_name(cloud, r["accelerator"], r["instance_type"]),
                                r["accelerator_count"], r["vcpus"], r["memory_gib"], r["usd_per_hour"], r["region"],
                                "", r["spot_usd_per_hour"]])
    (catalog / "common").mkdir()
    names = sorted({sky_name(r["cloud"], r["accelerator"], r["instance_type"]) for r in rows})
    (catalog / "common" / "accelerators.csv").write_text(
        "AcceleratorName,Clouds\n" + "".join(f'{n},"{",".join(CLOUDS.values())}"\n' for n in names))
    (catalog / "common" / "metadata.csv").write_text(
        "GPU,MemoryGB,Manufacturer\n" + "".join(f"{n},80,NVIDIA\n" for n in names))
    return rows


def test_skypilot_optimizer_picks_the_instance_the_plan_priced(tmp_path):
    rows = seed_catalog(tmp_path)
    env = {**os.environ, "HOME": str(tmp_path), "SKY_RUNTIME_DIR": str(tmp_path),
           "NANOLAUNCH_HOME": str(tmp_path / "nl"), "PYTHONPATH": str(REPO),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    out = subprocess.run([sys.executable, "-c", DRIVER, "run", "d34", "--ratio", "40", "--gpu", "H100:1", "--batch", "2",
                          "--dryrun", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(out.stdout)  # SkyPilot's own log lines went to stderr
    assert "SKYPILOT-LOG-LINE" in out.stderr and "SKYPILOT-LOG-LINE" not in out.stdout
    chosen, plan = result["skypilot"], result["plan"]
    # SXM H100s only, as the plan assumed: RunPod's cheaper PCIe H100 (also called H100 by SkyPilot) is not a candidate
    # and only clouds that can mount the run's bucket: RunPod cannot (SkyPilot would block it at provisioning)
    cheapest = min((r for r in rows if r["accelerator"] == "H100" and r["accelerator_count"] == "1"
                    and r["cloud"] != "runpod"), key=lambda r: float(r["usd_per_hour"]))
    assert min(float(r["usd_per_hour"]) for r in rows if r["accelerator"] == "H100-PCIe") < chosen["usd_per_hour"]
    assert (chosen["instance_type"], chosen["spot"]) == (cheapest["instance_type"], False)
    assert chosen["usd_per_hour"] == plan["usd_per_hour"] == float(cheapest["usd_per_hour"])
    assert "SkyPilot catalog cache" in plan["price_source"]
    assert not (tmp_path / "nl" / "ledger.db").exists() or "nl-" not in (tmp_path / "nl" / "ledger.db").read_text(
        errors="ignore")  # a dry run launches nothing and records no run
