"""GPU node prices as SkyPilot will charge them: its own catalog files (the ones its optimizer reads), else the
shipped snapshot, on the clouds the user has enabled in SkyPilot.

Every price carries its source, which the plan prints and the ledger stores with the run.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nanolaunch.errors import NanolaunchError

SNAPSHOT = Path(__file__).parent / "data" / "prices.csv"
LOCAL_RATE_ENV = "NANOLAUNCH_LOCAL_USD_PER_HOUR"
SKY_CATALOG_VERSION = "v8"  # sky/skylet/constants.py CATALOG_SCHEMA_VERSION in SkyPilot 0.14

# GCP sells a GPU node as a host VM plus GPU rows priced apart; which VMs carry which GPUs is SkyPilot's
# _ACC_INSTANCE_TYPE_DICTS (sky/catalog/gcp_catalog.py), for the GPUs nanolaunch plans with
# (tests/test_prices.py holds this table to SkyPilot's own).
GCP_HOSTS = {
    "A100": {1: ["a2-highgpu-1g"], 2: ["a2-highgpu-2g"], 4: ["a2-highgpu-4g"], 8: ["a2-highgpu-8g"]},
    "A100-80GB": {1: ["a2-ultragpu-1g"], 2: ["a2-ultragpu-2g"], 4: ["a2-ultragpu-4g"], 8: ["a2-ultragpu-8g"]},
    "H100": {1: ["a3-highgpu-1g"], 2: ["a3-highgpu-2g"], 4: ["a3-highgpu-4g"], 8: ["a3-highgpu-8g"]},
    "H200": {8: ["a3-ultragpu-8g"]},
    "B200": {8: ["a4-highgpu-8g"]},
}


@dataclass(frozen=True)
class Offer:
    """One node type on one cloud: its cheapest on-demand price and where, and its cheapest spot price and
    where (None where the cloud sells it no spot), as SkyPilot's optimizer prices them."""
    cloud: str
    instance_type: str
    accelerator: str  # nanolaunch's name for the GPU (the hardware table's)
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

    @property
    def spot_label(self) -> str:
        return f"{self.cloud} {self.instance_type} ({self.spot_region}) spot"


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


def _catalog_offers(vms: Path) -> list[Offer]:
    """The node offers in one cloud's vms.csv, priced as SkyPilot's optimizer prices a launchable: per region
    (per zone where the catalog has zones), instance + GPUs in the same place, the cheapest place wins."""
    cloud, source = vms.parent.name, f"SkyPilot catalog cache {vms}"
    nodes = defaultdict(dict)  # (instance, sky accelerator, count) -> {(region, zone): (price, spot)}
    vm_prices, gpu_prices = defaultdict(dict), defaultdict(dict)  # GCP's host VMs and its GPU-only rows
    gcp_vms = {vm for by_count in GCP_HOSTS.values() for vms_ in by_count.values() for vm in vms_}
    with vms.open(newline="") as f:
        for r in csv.DictReader(f):
            instance, name, count = r.get("InstanceType") or "", r.get("AcceleratorName") or "", _float(r.get("AcceleratorCount"))
            where = (r.get("Region", ""), r.get("AvailabilityZone") or "")
            price = (_float(r.get("Price")), _float(r.get("SpotPrice")))
            if name and count and count == int(count):
                if instance:
                    nodes[(instance, name, int(count))][where] = price
                elif cloud == "gcp":
                    gpu_prices[(name, int(count))][where] = price
            elif cloud == "gcp" and instance in gcp_vms:
                vm_prices[instance][where] = price
    for (name, count), places in gpu_prices.items():  # GCP: the host VM's price plus its GPUs', zone by zone
        for vm in GCP_HOSTS.get(name, {}).get(count, []):
            for where, (gpu, gpu_spot) in places.items():
                host, host_spot = vm_prices[vm].get(where, (None, None))
                nodes[(vm, name, count)][where] = (gpu + host if gpu and host else None,
                                                   gpu_spot + host_spot if gpu_spot and host_spot else None)
    offers = []
    for (instance, name, count), places in nodes.items():
        on_demand = [(p, where) for where, (p, _) in places.items() if p]
        spot = [(s, where) for where, (_, s) in places.items() if s]
        if not on_demand:
            continue
        price, (region, _) = min(on_demand)
        spot_price, (spot_region, _) = min(spot) if spot else (None, ("", ""))
        offers.append(Offer(cloud, instance, our_name(cloud, name, instance), count, region, round(price, 6),
                            round(spot_price, 6) if spot_price else None, source, spot_region, name))
    return offers


@lru_cache(maxsize=8)
def _cached_offers(catalog: Path, stamp: tuple) -> tuple[Offer, ...]:
    return tuple(o for vms in sorted(catalog.glob("*/vms.csv")) for o in _catalog_offers(vms))


def offers() -> tuple[Offer, ...]:
    """Every node offer: a cloud's own SkyPilot catalog where this machine has it, else the snapshot's rows."""
    catalog = sky_catalog_dir()
    files = sorted(catalog.glob("*/vms.csv"))
    cached = _cached_offers(catalog, tuple((str(f), f.stat().st_mtime_ns) for f in files)) if files else ()
    have = {f.parent.name for f in files}
    return cached + tuple(o for o in _snapshot_offers() if o.cloud not in have)


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


@dataclass(frozen=True)
class Clouds:
    """The clouds prices may come from: SkyPilot's record of the clouds `sky check` enabled, or every cloud
    where it records none (`names` None), and a line that says which."""
    names: frozenset[str] | None
    note: str

    def allows(self, cloud: str) -> bool:
        return self.names is None or cloud in self.names


def enabled_clouds() -> Clouds:
    """The clouds SkyPilot's optimizer will choose among: its cached `sky check` result (backends/sky_sdk.py).
    No state database yet, or nothing enabled: every cloud, and the note says so."""
    state = Path(os.environ.get("SKY_RUNTIME_DIR") or str(Path.home())) / ".sky" / "state.db"
    if not state.exists():
        return Clouds(None, "all clouds (SkyPilot has no record of enabled clouds: run `sky check`)")
    try:
        from nanolaunch.backends import sky_sdk

        found = sky_sdk.enabled_clouds()
    except Exception as e:  # noqa: BLE001 -- SkyPilot's own state unreadable: price every cloud, and say why
        return Clouds(None, f"all clouds (SkyPilot's record of enabled clouds is unreadable: {type(e).__name__})")
    names = frozenset(found)
    if not names:
        return Clouds(None, "all clouds (SkyPilot records no enabled cloud: run `sky check`)")
    return Clouds(names, f"the clouds enabled in SkyPilot ({', '.join(sorted(names))})")


def offers_for(accelerator: str, count: int, needed: frozenset[str] = frozenset(),
               clouds: Clouds | None = None) -> list[Offer]:
    """Every node with exactly these GPUs on an allowed cloud that can run the task, cheapest first."""
    clouds = clouds or enabled_clouds()
    return sorted((o for o in offers() if o.accelerator.upper() == accelerator.upper() and o.count == count
                   and can_run(o, needed) and clouds.allows(o.cloud)), key=lambda o: o.usd_per_hour)


def cheapest(accelerator: str, count: int, needed: frozenset[str] = frozenset(),
             clouds: Clouds | None = None) -> tuple[Offer | None, Offer | None]:
    """(cheapest on-demand offer, cheapest spot offer) for `count` accelerators in one node, among the allowed
    clouds that can run a task with `needed` features; the spot offer only on clouds that sell spot."""
    matching = offers_for(accelerator, count, needed, clouds)
    on_demand = min(matching, key=lambda o: o.usd_per_hour, default=None)
    spot = min((o for o in matching if o.spot_usd_per_hour and can_run(o, needed | {"SPOT_INSTANCE"})),
               key=lambda o: o.spot_usd_per_hour, default=None)
    return on_demand, spot


def node_counts(accelerator: str) -> list[int]:
    """GPUs per node the catalog sells this GPU in (1, 2, 4, 8), on any cloud."""
    return sorted({o.count for o in offers() if o.accelerator.upper() == accelerator.upper() and o.count in (1, 2, 4, 8)})


def local_rate() -> tuple[float, str]:
    """This machine's hourly rate for local runs: 0 unless the user sets one."""
    text = os.environ.get(LOCAL_RATE_ENV, "0")
    try:
        rate = float(text)
    except ValueError:
        rate = -1
    if rate < 0 or rate != rate or rate == float("inf"):
        raise NanolaunchError(f"{LOCAL_RATE_ENV} must be a non-negative number of dollars, got {text!r}")
    return rate, f"local rate ({LOCAL_RATE_ENV}={text})"
