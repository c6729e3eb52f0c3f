"""GPU node prices: SkyPilot's own cached catalog when this machine has one, else the shipped snapshot.

Every price carries its source, which the plan prints and the ledger stores with the run.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nanolaunch.errors import NanolaunchError

SNAPSHOT = Path(__file__).parent / "data" / "prices.csv"
LOCAL_RATE_ENV = "NANOLAUNCH_LOCAL_USD_PER_HOUR"
SKY_CATALOG_VERSION = "v8"  # sky/skylet/constants.py CATALOG_SCHEMA_VERSION in SkyPilot 0.14


@dataclass(frozen=True)
class Offer:
    cloud: str
    instance_type: str
    accelerator: str
    count: int
    region: str
    usd_per_hour: float
    spot_usd_per_hour: float | None
    source: str
    spot_region: str = ""
    sky_accelerator: str = ""  # SkyPilot's catalog name for these GPUs on this cloud (RunPod's SXM H100: H100-SXM)

    @property
    def label(self) -> str:
        return f"{self.cloud} {self.instance_type} ({self.region})"


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value and value > 0 else None


@lru_cache(maxsize=1)
def snapshot_header() -> dict:
    """The '# key: value' lines at the top of the snapshot (source, commit, date)."""
    header = {}
    for line in SNAPSHOT.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(":")
        if value:
            header[key.strip().lower()] = value.strip()
    return header


@lru_cache(maxsize=1)
def _snapshot_offers() -> tuple[Offer, ...]:
    date = snapshot_header().get("snapshot date", "undated")
    rows = csv.DictReader(line for line in SNAPSHOT.read_text().splitlines() if not line.startswith("#"))
    offers = []
    for r in rows:
        price = _float(r["usd_per_hour"])
        if price is None:
            continue
        offers.append(Offer(r["cloud"], r["instance_type"], r["accelerator"], int(r["accelerator_count"]),
                            r["region"], price, _float(r["spot_usd_per_hour"]),
                            f"nanolaunch snapshot of skypilot-catalog, {date}", r.get("spot_region") or r["region"],
                            sky_name(r["cloud"], r["accelerator"], r["instance_type"])))
    return tuple(offers)


def sky_catalog_dir() -> Path:
    """Where SkyPilot 0.14 caches its catalog: $SKY_RUNTIME_DIR (default ~)/.sky/catalogs/v8."""
    runtime = os.environ.get("SKY_RUNTIME_DIR") or str(Path.home())
    return Path(runtime) / ".sky" / "catalogs" / SKY_CATALOG_VERSION


def _skypilot_cache_offers() -> tuple[Offer, ...]:
    """Whole-node rows of SkyPilot's downloaded catalogs (<catalog dir>/<cloud>/vms.csv), if any."""
    offers = []
    for vms in sorted(sky_catalog_dir().glob("*/vms.csv")):
        with vms.open(newline="") as f:
            for r in csv.DictReader(f):
                price, name, instance = _float(r.get("Price")), r.get("AcceleratorName"), r.get("InstanceType")
                count = _float(r.get("AcceleratorCount"))
                # GCP lists GPUs as rows without an instance type (priced apart from the VM): not a node price.
                if price is None or not name or not instance or count is None or count != int(count):
                    continue
                offers.append(Offer(vms.parent.name, instance, our_name(vms.parent.name, name, instance), int(count),
                                    r.get("Region", ""), price, _float(r.get("SpotPrice")),
                                    f"SkyPilot catalog cache {vms}", r.get("Region", ""), name))
    return tuple(offers)


def our_name(cloud: str, sky_accelerator: str, instance_type: str) -> str:
    """nanolaunch names the hardware (docs/prices.md): SkyPilot's `H100` is a PCIe card on RunPod and on
    Lambda's gpu_1x_h100_pcie, and RunPod spells SXM parts H100-SXM, H200-SXM, A100-80GB-SXM."""
    if cloud == "runpod":
        return {"H100": "H100-PCIe", "H100-SXM": "H100", "H200-SXM": "H200",
                "A100-80GB-SXM": "A100-80GB"}.get(sky_accelerator, sky_accelerator)
    if sky_accelerator == "H100" and "pcie" in instance_type.lower():
        return "H100-PCIe"
    return sky_accelerator


def sky_name(cloud: str, accelerator: str, instance_type: str) -> str:
    """The reverse of our_name, for the snapshot: RunPod instance types carry SkyPilot's name (1x_H100-SXM_SECURE)."""
    if cloud == "runpod":
        return instance_type.split("_")[1]
    return "H100" if accelerator == "H100-PCIe" else accelerator


def offers() -> tuple[Offer, ...]:
    return _skypilot_cache_offers() or _snapshot_offers()


# What a nanolaunch task may need of a cloud, and the clouds that lack it: SkyPilot 0.14's own
# _CLOUD_UNSUPPORTED_FEATURES (sky/clouds/<cloud>.py), which tests/test_sky_machinery.py holds this table to.
# A cloud run mounts its bucket (STORAGE_MOUNTING); several nodes need MULTI_NODE; spot needs SPOT_INSTANCE.
UNSUPPORTED = {
    "aws": frozenset(),
    "gcp": frozenset(),
    "lambda": frozenset({"SPOT_INSTANCE"}),
    "runpod": frozenset({"STORAGE_MOUNTING", "MULTI_NODE"}),
}


def needs(*, nodes: int, spot: bool = False, bucket: bool = True) -> frozenset[str]:
    """The SkyPilot features a task with these properties needs."""
    return frozenset({"STORAGE_MOUNTING"} if bucket else set()) | ({"MULTI_NODE"} if nodes > 1 else set()) | \
        ({"SPOT_INSTANCE"} if spot else set())


def can_run(offer: Offer, needed: frozenset[str]) -> bool:
    """False where SkyPilot would refuse the cloud for this task (it does so only at provisioning)."""
    return not needed & UNSUPPORTED.get(offer.cloud, frozenset())


def cheapest(accelerator: str, count: int, needed: frozenset[str] = frozenset()) -> tuple[Offer | None, Offer | None]:
    """(cheapest on-demand offer, cheapest spot offer) for `count` accelerators in one node, among the clouds
    that can run a task with `needed` features."""
    matching = offers_for(accelerator, count, needed)
    on_demand = min(matching, key=lambda o: o.usd_per_hour, default=None)
    spot = min((o for o in matching if o.spot_usd_per_hour and can_run(o, needed | {"SPOT_INSTANCE"})),
               key=lambda o: o.spot_usd_per_hour, default=None)
    return on_demand, spot


def offers_for(accelerator: str, count: int, needed: frozenset[str] = frozenset()) -> list[Offer]:
    """Every node with exactly these GPUs on a cloud that can run the task, cheapest first."""
    return sorted((o for o in offers() if o.accelerator.upper() == accelerator.upper() and o.count == count
                   and can_run(o, needed)), key=lambda o: o.usd_per_hour)


def local_rate() -> tuple[float, str]:
    """This machine's hourly rate for local runs: 0 unless the user sets one."""
    text = os.environ.get(LOCAL_RATE_ENV, "0")
    try:
        rate = float(text)
    except ValueError:
        rate = -1
    if rate < 0:
        raise NanolaunchError(f"{LOCAL_RATE_ENV} must be a non-negative number of dollars, got {text!r}")
    return rate, f"local rate ({LOCAL_RATE_ENV}={text})"
