"""The search: plan and run find the GPU, GPUs per node, nodes and batch; a config that cannot fit is refused
before SkyPilot is asked anything. Prices here are the shipped snapshot's (no SkyPilot catalog is seeded);
tests/test_sky_prices.py holds the prices to SkyPilot's own optimizer."""
import json

import pytest

from conftest import nl
from nanolaunch import planner, search
from nanolaunch.config import RunConfig
from test_cli import run_and_list_imports


def plan_json(*args) -> dict:
    r = run_and_list_imports("plan", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("args", [["d34", "--ratio", "40"], ["d12"], ["d20", "--ratio", "20"]])
def test_plan_without_gpu_or_batch_chooses_a_config_that_fits(args):
    p = plan_json(*args)
    s = p["search"]
    chosen = s["within"]["chosen"]
    assert s["searched"] and chosen["verdict"] == p["verdict"] == "fits"
    # the plan printed is the chosen config's, at the price the search gave it
    assert (f"{p['gpu']}:{p['gpus_per_node']}", p["nodes"], p["device_batch"]) == (
        chosen["spec"], chosen["nodes"], chosen["device_batch"])
    assert p["cost_usd"] == pytest.approx(chosen["cost_usd"]) and p["usd_per_hour"] == chosen["usd_per_hour"]
    # explained: why this one, on which clouds, with each alternative's sources
    assert "cheapest of" in s["within"]["why"] and "largest that fits" in s["within"]["why"]
    alternatives = s["overall"]["alternatives"]
    assert alternatives[0]["role"] == "chosen" and any(a["role"] == "fastest" for a in alternatives)
    assert all(a["verdict"] == "fits" and a["price_source"] and a["mfu_source"] for a in alternatives)
    # nothing that fits is both cheaper and faster than the choice
    assert not [a for a in alternatives if a["cost_usd"] < chosen["cost_usd"] * (1 - search.TIE)]
    # and the chosen batch is the largest that fits there: twice as large does not, at the high end
    config = RunConfig.build(depth=p["depth"], gpu=chosen["spec"], nodes=chosen["nodes"],
                             device_batch=2 * chosen["device_batch"], ratio=p["tokens_per_param"])
    assert planner.memory_for(config).verdict != "fits" or p["grad_accum"] == 1


def test_plan_text_prints_the_choice_first_and_the_alternatives(tmp_path):
    r = nl(tmp_path, "plan", "d34", "--ratio", "40")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("chosen: ") and "cheapest of" in lines[0]
    assert "configs that fit, cheapest first" in r.stdout and "→ chosen" in r.stdout and "fastest" in r.stdout


def test_a_given_config_is_planned_as_given_with_its_verdict():
    p = plan_json("d34", "--ratio", "40", "--gpu", "H100:1")
    assert not p["search"]["searched"] and (p["gpu"], p["gpus_per_node"], p["device_batch"]) == ("H100", 1, 32)
    assert p["verdict"] == "does not fit" and p["search"]["overall"]["chosen"]["verdict"] == "fits"


def test_limits_constrain_the_search():
    config = RunConfig.build(depth=20, ratio=20)
    free = search.search(config, search.Fixed())
    fastest = min((c for _, c in free.alternatives), key=lambda c: c.wall_hours)
    capped = search.search(config, search.Fixed(), max_hours=fastest.wall_hours * 1.01)
    assert capped.chosen.wall_hours <= fastest.wall_hours * 1.01 and "--max-hours" in capped.why
    cheap = search.search(config, search.Fixed(), max_cost=free.chosen.cost_usd * 1.001)
    assert cheap.chosen.cost_usd <= free.chosen.cost_usd * 1.001
    none = search.search(config, search.Fixed(), max_cost=free.chosen.cost_usd / 2)
    assert none.chosen is None and none.why.startswith("no config that fits is within the limits")


def test_node_count_can_be_fixed_and_the_search_fills_the_rest():
    p = plan_json("d20", "--ratio", "20", "--nodes", "2")
    assert p["nodes"] == 2 and p["search"]["searched"] and p["fits"]


def test_a_batch_that_does_not_divide_is_never_a_candidate():
    config = RunConfig.build(depth=12, total_batch=3 * 2048 * 8, gpu="H100:8")
    assert search.batches(config, 8) == [1] and search.batches(config, 16) == []


def test_run_refuses_what_cannot_fit_in_one_line_before_skypilot(tmp_path):
    r = run_and_list_imports("run", "d34", "--ratio", "40", "--gpu", "H100:1",
                             env={"NANOLAUNCH_HOME": str(tmp_path)})
    assert r.returncode == 2  # a usage error, as every refused input
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "HEAVY=" in r.stderr and "sky" not in r.stderr.split("HEAVY=")[1]
    largest = search.largest_batch(RunConfig.build(depth=34, ratio=40, gpu="H100:1"))
    assert "does not fit" in error[0] and f"the largest batch that fits on 1×H100 is {largest}" in error[0]
    assert "the cheapest config that fits is --gpu" in error[0] and "--force" in error[0]
    assert not (tmp_path / "ledger.db").exists() or "d34" not in (tmp_path / "ledger.db").read_bytes().decode(
        errors="ignore")


@pytest.mark.parametrize("flag, value", [("--max-cost", "-1"), ("--max-hours", "0"), ("--max-cost", "inf")])
def test_bad_limits_are_refused(flag, value):
    r = run_and_list_imports("plan", "d12", flag, value)
    assert r.returncode != 0 and f"{flag} must be a finite number in (0, ∞)" in r.stderr
