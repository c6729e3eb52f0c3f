"""Prices: the shipped snapshot by default; SkyPilot's own cached catalog when this machine has one."""
import json

from conftest import nl
from nanolaunch import planner, prices
from nanolaunch.config import RunConfig


def test_snapshot_has_the_design_reference_prices():
    offer, spot = prices.cheapest("A100", 8)
    assert offer.usd_per_hour == 15.92 and offer.cloud == "lambda"  # docs/DESIGN.md §3: Lambda 8×A100-40GB
    assert spot is not None and spot.spot_usd_per_hour < offer.usd_per_hour
    assert "2026-11-21" in offer.source
    assert prices.cheapest("H100", 8)[0].usd_per_hour == 26.32  # RunPod
    # which cannot mount a bucket: a nanolaunch cloud run lands on Lambda, and the plan says so
    assert prices.cheapest("H100", 8, prices.needs(nodes=1))[0].usd_per_hour == 31.92
    assert prices.cheapest("H100", 8, prices.needs(nodes=2))[0].cloud != "runpod"


def test_skypilot_cache_wins_and_is_named(tmp_path, monkeypatch):
    vms = tmp_path / ".sky" / "catalogs" / "v8" / "aws" / "vms.csv"
    vms.parent.mkdir(parents=True)
    vms.write_text("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,SpotPrice\n"
                   "p5.48xlarge,H100,8,192,2048,50.00,us-east-1,12.00\n"
                   ",H100,8,,,1.00,us-east-1,0.5\n")  # a GPU-only row (GCP style) is not a node price
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path))
    aws = prices.Clouds(frozenset({"aws"}), "aws only")
    offer, spot = prices.cheapest("H100", 8, clouds=aws)
    assert offer.usd_per_hour == 50.0 and spot.spot_usd_per_hour == 12.0 and offer.source.startswith("SkyPilot")
    assert len(prices.offers_for("H100", 8, clouds=aws)) == 1  # the GPU-only row is not a node
    # the clouds without a cached catalog keep the snapshot's prices
    assert {o.cloud for o in prices.offers() if "snapshot" in o.source} == {"gcp", "lambda", "runpod"}
    p = planner.plan(RunConfig.build(depth=20, gpu="H100:8", device_batch=16, infra="aws"))
    assert p["usd_per_hour"] == 50.0 and "SkyPilot catalog cache" in p["price_source"]
    assert p["cost_usd"] == p["wall_hours"] * 50.0


def test_local_rate_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(prices.LOCAL_RATE_ENV, "0.5")
    p = planner.plan(RunConfig.build(depth=2, gpu="cpu", head_dim=64, seq_len=64, total_batch=512, device_batch=8,
                               iterations=4), mfu=None)
    assert p["usd_per_hour"] == 0.5 and prices.LOCAL_RATE_ENV in p["price_source"]


def test_b200_is_planned_with_its_snapshot_price(tmp_path):
    """docs/prices.md: a bucket-mounting run on 8×B200 lands on Lambda's gpu_8x_b200_sxm6; the cheapest spot is AWS
    p6-b200; GCP's a4-highgpu-8g is left out (the catalog prices its VM part 0.0, so the node price is unknown)."""
    r = nl(tmp_path, "plan", "d20", "--gpu", "B200:8", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert (p["gpu"], p["gpu_memory_gib"], p["peak_flops"]) == ("B200", 180, 2250e12)
    assert p["usd_per_hour"] == 53.52 and p["usd_per_hour_spot"] == 13.0338
    assert p["price_source"] == ("lambda gpu_8x_b200_sxm6 (us-east-1), "
                                 "nanolaunch snapshot of skypilot-catalog, 2026-11-21")
    assert prices.cheapest("B200", 1)[0].usd_per_hour == 6.79  # RunPod, for a run that mounts no bucket
    assert {o.cloud for o in prices.offers() if o.accelerator == "B200"} == {"aws", "lambda", "runpod"}
