"""Predictions from the ledger's own measurements, and how far past predictions were from them."""
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nanolaunch.cli import app
from nanolaunch.config import RunConfig
from nanolaunch.ledger import Ledger
from trainer.hardware import this_cpu


# cpu_demo in the shape these rows were recorded at (batch 8 of a 4,096-token step)
OLD_DEMO = ("--preset", "cpu_demo", "--batch", "8", "--total-batch", "4096")


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    return Ledger()


def record(db, config: RunConfig, kind="dry", status="ok", plan=None, **measured) -> int:
    """A finished row as the trainer reports it: a CPU row names this machine unless told another."""
    gpu, _, count = config.gpu.partition(":")
    if config.on_cpu:
        measured.setdefault("machine", this_cpu().key)
    run_id = db.add(project="t", title=kind, kind=kind, preset=measured.pop("preset", None), config=config.to_dict(),
                    plan=plan or {}, backend="local", gpu=gpu, gpu_count=int(count or 1), nodes=1, status="running")
    db.finish(run_id, status, {"steps": 20, **measured}, wall_seconds=measured.get("wall_seconds", 30.0))
    return run_id


def plan(*args) -> dict:
    out = CliRunner().invoke(app, ["plan", *args, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_no_ledger_means_the_default_and_planning_creates_none(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path / "fresh"))
    p = plan("d6", "--gpu", "H100:1")
    assert p["mfu"] == 0.47 and "seed record" in p["mfu_source"] and p["past_predictions"] == []
    assert not (tmp_path / "fresh" / "ledger.db").exists()


def test_nearest_probe_of_the_same_gpu_kind_sets_the_mfu(db):
    record(db, RunConfig.build(depth=4, gpu="H100:1", device_batch=16, iterations=20), mfu=0.31, tokens_per_second=1e6)
    far = record(db, RunConfig.build(depth=20, gpu="H100:1", iterations=20), mfu=0.52, tokens_per_second=1e5)
    record(db, RunConfig.build(depth=6, gpu="A100:1", iterations=20), mfu=0.60, tokens_per_second=5e5)  # another kind
    record(db, RunConfig.build(depth=6, gpu="H100:1", iterations=20), status="oom")  # not a measurement
    p = plan("d6", "--gpu", "H100:1")
    assert p["mfu"] == 0.31 and p["mfu_source"].startswith("measured (ledger #1: dry d4 batch 16")
    p = plan("d18", "--gpu", "H100:1")
    assert p["mfu"] == 0.52 and f"ledger #{far}" in p["mfu_source"]
    assert plan("d6", "--gpu", "H100:1", "--mfu", "0.4")["mfu"] == 0.4  # --mfu still wins


def test_on_a_cpu_the_probe_flops_carry_over_and_its_startup_counts(db):
    probe = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                      total_batch=4096, iterations=20, data="stdlib")
    record(db, probe, tokens_per_second=10_000.0, step_ms=409.6, wall_seconds=20.0)
    p = plan(*OLD_DEMO, "--depth", "4")
    flops_per_second = 10_000.0 * probe.shape.flops_per_token
    assert p["step_seconds"] == pytest.approx(4096 * p["flops_per_token"] / flops_per_second)
    assert p["startup_seconds"] == pytest.approx(20.0 - 20 * 0.4096)
    assert p["wall_hours"] * 3600 == pytest.approx(p["train_seconds"] + p["eval_seconds"] + p["startup_seconds"])


def test_plan_shows_how_far_past_predictions_were(db):
    config = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                       total_batch=4096, iterations=300, data="stdlib")
    predicted = {"wall_hours": 110 / 3600, "cost_usd": 0.11, "peak_memory_gib": 0.55}
    record(db, config, kind="run", plan=predicted, preset="cpu_demo", wall_seconds=100.0, peak_memory_gib=0.5,
           tokens_per_second=9000.0)
    p = plan(*OLD_DEMO)
    (past,) = p["past_predictions"]
    assert past["wall_error"] == pytest.approx(0.10) and past["memory_error"] == pytest.approx(0.10)
    assert past["cost_error"] is None  # measured at $0 (local rate 0): no ratio to show
    text = CliRunner().invoke(app, ["plan", *OLD_DEMO]).output
    assert "past predictions against measurements" in text and "+10%" in text


def test_repeated_measurements_of_one_config_pool_into_their_median(db):
    """One probe can land in a slow spell of a shared machine; the median of the config's rows cannot."""
    probe = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                      total_batch=4096, iterations=20, data="stdlib")
    for tps, wall in ((10_000.0, 20.0), (14_000.0, 30.0), (11_000.0, 22.0)):
        record(db, probe, tokens_per_second=tps, step_ms=4096 / tps * 1000, wall_seconds=wall)
    record(db, probe.replace(iterations=300), kind="run", tokens_per_second=12_000.0, step_ms=341.3, wall_seconds=90.0)
    record(db, probe.replace(device_batch=4), tokens_per_second=50_000.0, step_ms=81.9, wall_seconds=5.0)  # not a twin
    p = plan(*OLD_DEMO)
    assert p["mfu_source"].startswith("measured tokens/s (median of ledger #4, #3, #2, #1: dry/run d2 batch 8")
    assert p["step_seconds"] == pytest.approx(4096 / 11_500.0)  # median of 10k, 14k, 11k and the run's 12k
    startups = sorted(w - 20 * 4096 / t for t, w in ((10_000.0, 20.0), (14_000.0, 30.0), (11_000.0, 22.0)))
    assert p["startup_seconds"] == pytest.approx(startups[1])  # the run's steps were not timed: left out


def test_a_run_predicts_from_its_mean_step_and_gives_its_start_up(db):
    """Wall time adds up the mean step, not the median: slow spells stay in the steps, and a run alone gives
    the next plan its start-up (wall − steps × mean step − evaluations)."""
    config = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                       total_batch=4096, iterations=300, data="stdlib")
    record(db, config, kind="run", preset="cpu_demo", tokens_per_second=16_000.0, step_ms=256.0, wall_seconds=100.0,
           steps=300, step_ms_mean=272.0, eval_seconds=9.0)
    p = plan(*OLD_DEMO, "--iterations", "300")
    assert p["step_seconds"] == pytest.approx(0.272) and "15,059 tok/s" in p["mfu_source"]
    assert p["startup_seconds"] == pytest.approx(100.0 - 300 * 0.272 - 9.0)
    assert p["wall_hours"] * 3600 == pytest.approx(100.0, rel=0.05)  # the run itself back (evaluations from FLOPs)


def test_precision_and_compilation_weigh_more_than_size(db):
    """FLOPs scale a measurement across depths; nothing scales it across eager and compiled."""
    eager = record(db, RunConfig.build(depth=6, gpu="H100:1", iterations=20, compile=False), mfu=0.20, tokens_per_second=1e5)
    compiled = record(db, RunConfig.build(depth=4, gpu="H100:1", iterations=20, compile=True), mfu=0.40,
                      tokens_per_second=2e5)
    assert f"#{compiled}" in plan("d6", "--gpu", "H100:1")["mfu_source"]  # a plan compiles on CUDA by default
    assert f"#{eager}" not in plan("d6", "--gpu", "H100:1")["mfu_source"]


def test_a_probe_is_predicted_without_evaluations():
    """A probe never evaluates, so its own prediction is its steps plus start-up (this was 27–42% high)."""
    from nanolaunch.planner import plan as make_plan

    config = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                       total_batch=4096, iterations=20, eval_every=5, data="stdlib")
    measured = {"tokens_per_second": 10_000.0, "flops_per_token": config.shape.flops_per_token, "startup_seconds": 3.0}
    probe, run = make_plan(config, measured=measured, probe=True), make_plan(config, measured=measured)
    assert probe["evals"] == 0 and probe["wall_hours"] * 3600 == pytest.approx(20 * 4096 / 10_000.0 + 3.0)
    assert run["evals"] == 5 and run["wall_hours"] > probe["wall_hours"]


def test_start_up_comes_from_rows_of_the_kind_planned(db):
    """A run prepares real data and checkpoints; a probe does neither: each predicts its own kind's start-up."""
    from nanolaunch.calibration import ledger_rows, measured_for

    config = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                       total_batch=4096, iterations=300, data="stdlib")
    record(db, config, kind="run", tokens_per_second=16_000.0, step_ms=256.0, wall_seconds=100.0, steps=300,
           step_ms_mean=256.0, eval_seconds=9.0)
    record(db, config.replace(iterations=20), tokens_per_second=16_000.0, step_ms=256.0, wall_seconds=8.0,
           step_ms_mean=256.0, eval_seconds=0.0)
    rows = ledger_rows()
    assert measured_for(config, None, rows)[0]["startup_seconds"] == pytest.approx(100.0 - 300 * 0.256 - 9.0)
    assert measured_for(config, None, rows, probe=True)[0]["startup_seconds"] == pytest.approx(8.0 - 20 * 0.256)


def test_a_resumed_run_gives_no_start_up():
    """Its steps count earlier segments too, so wall − steps reads negative: unknown, not zero."""
    from nanolaunch.calibration import startup

    resumed = {"kind": "run", "wall_seconds": 40.0, "steps": 300, "step_ms": 250.0, "step_ms_mean": 255.0,
               "eval_seconds": 5.0}
    assert startup(resumed) is None and startup({**resumed, "wall_seconds": 90.0}) == pytest.approx(8.5)


def test_a_probe_predicts_with_its_median_step_a_run_with_its_mean(db):
    """One slow step moves a 20-step mean; over hundreds of steps the mean is what wall time adds up."""
    probe = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                      total_batch=4096, iterations=20, data="stdlib")
    record(db, probe, tokens_per_second=16_000.0, step_ms=256.0, step_ms_mean=290.0, wall_seconds=9.0,
           eval_seconds=0.0)
    p = plan(*OLD_DEMO)
    assert p["step_seconds"] == pytest.approx(0.256) and p["startup_seconds"] == pytest.approx(9.0 - 20 * 0.256)


def test_a_row_this_version_cannot_read_is_skipped_not_fatal(db):
    record(db, RunConfig.build(depth=6, gpu="H100:1", iterations=20), mfu=0.30, tokens_per_second=1e5)
    db.db.execute("UPDATE runs SET config = ? WHERE id = 1", ('{"depth": 6, "renamed_field": 1}',))
    assert plan("d6", "--gpu", "H100:1")["mfu_source"].startswith("seed record")


def test_a_fresh_home_plans_a_cpu_run_from_one_calibration_of_this_machine(tmp_path):
    """No ledger row of this CPU: the plan comes from a short probe of this machine, measured once and kept."""
    home = tmp_path / "fresh"
    env = {**os.environ, "NANOLAUNCH_HOME": str(home)}
    first = subprocess.run([sys.executable, "-m", "nanolaunch.cli", "plan", "--preset", "cpu_demo", "--json"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    p = json.loads(first.stdout)
    assert p["mfu_source"].startswith("measured tokens/s (calibration of this machine")
    assert p["wall_hours"] > 0 and p["startup_seconds"] > 0 and "calibrating this machine once" in first.stderr
    saved = json.loads(next(home.glob("cache/machines/*/calibration.json")).read_text())
    assert saved["machine"] == this_cpu().key and saved["tokens_per_second"] > 0
    assert not (home / "ledger.db").exists()  # a calibration is not a run
    again = subprocess.run([sys.executable, "-m", "nanolaunch.cli", "plan", "--preset", "cpu_demo", "--json"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "calibrating" not in again.stderr
    assert json.loads(again.stdout)["step_seconds"] == p["step_seconds"]


def test_rows_of_another_cpu_are_not_used_for_this_one(db, monkeypatch):
    from nanolaunch import machine

    monkeypatch.setattr(machine, "cached", lambda: {"tokens_per_second": 5_000.0, "flops_per_token": 6_291_456,
                                                    "startup_seconds": 4.0, "device_name": "this CPU",
                                                    "probe": "12-step probe"})
    config = RunConfig.build(depth=2, gpu="cpu", head_dim=64, vocab_size=4096, seq_len=256, device_batch=8,
                             total_batch=4096, iterations=20, data="stdlib")
    record(db, config, tokens_per_second=50_000.0, step_ms=81.92, machine="another-cpu")
    p = plan(*OLD_DEMO)
    assert "calibration of this machine" in p["mfu_source"]
    assert p["step_seconds"] == pytest.approx(4096 / 5_000.0 * p["flops_per_token"] / 6_291_456)
    mine = record(db, config, tokens_per_second=8_000.0, step_ms=512.0)
    p = plan(*OLD_DEMO)
    assert f"ledger #{mine}" in p["mfu_source"]
