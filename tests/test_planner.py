"""The planner's numbers against docs/DESIGN.md §3 and the seed record."""
import math

import pytest

from nanolaunch import memory, planner
from nanolaunch.config import ConfigError, RunConfig
from nanolaunch.presets import load
from trainer.arithmetic import ModelShape


def test_d10_reference_figures():
    p = planner.plan(RunConfig.build(depth=10, ratio=20, gpu="A100:1"))
    assert p["params"] == 133_038_080
    assert p["flops_per_token"] == 703_856_640
    assert p["iterations"] == 5075
    assert p["tokens"] == 2_660_761_600
    assert p["total_flops"] == pytest.approx(1.872795e18, rel=1e-6)
    assert (p["model_dim"], p["n_heads"], p["head_dim"]) == (640, 5, 128)


def test_batch_that_does_not_divide_is_refused_with_the_arithmetic():
    config = load("a100_d10").config.replace(device_batch=48)
    with pytest.raises(planner.PlanError, match=r"5\.33") as e:
        planner.plan(config)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("batch, verdict", [(16, "fits"), (32, "fits"), (64, "does not fit")])
def test_seed_record_memory_outcomes(batch, verdict):
    """The A100-40GB d10 record: batch 16 and 32 ran, batch 64 ran out of memory."""
    p = planner.plan(load("a100_d10").config.replace(device_batch=batch))
    assert p["verdict"] == verdict


@pytest.mark.parametrize("batch, verdict", [(2, "fits"), (4, "fits"), (8, "probe first"), (16, "does not fit")])
def test_d34_on_8_h100_has_a_range_and_a_verdict(batch, verdict):
    """The d34 record ran at device batch 4 on 8×H100 (69,811.85 MiB allocated)."""
    p = planner.plan(RunConfig.build(depth=34, ratio=40, gpu="H100:8", device_batch=batch))
    assert p["verdict"] == verdict and p["peak_memory_high_gib"] > p["peak_memory_gib"]


def test_the_high_end_covers_every_fitted_published_figure():
    per_param, source = memory.excess_per_param()
    assert per_param > 0 and "nanochat-d34" in source
    for r in memory.published():
        if r["fitted"] == "yes":
            high = r["predicted_gib"] + per_param * r["params"] / memory.GIB
            assert r["allocated_gib"] <= high + 1e-6, r["source"]


def test_seed_wall_time_and_cost_from_its_measured_mfu():
    preset = load("a100_d10")
    measured, source = planner.measured_from_preset(preset, preset.config)
    p = planner.plan(preset.config, measured=measured, measured_from=source)
    assert p["mfu"] == 0.55 and "a100_d10" in p["mfu_source"]
    assert p["wall_hours"] * 60 == pytest.approx(60.7, rel=0.05)  # the seed run took 60.7 min
    assert p["grad_accum"] == 8 and p["evals"] == 7


def test_shards_for_the_seed_record():
    # 1,500 × 524,288 tokens: 14 shards (13 train) risk a second epoch, 18 (17 train) do not at 5 chars/token
    base = load("a100_d10").config
    assert planner.plan(base.replace(shards=14))["repeat_above_chars_per_token"] < 5.0
    assert planner.plan(base.replace(shards=18))["repeat_above_chars_per_token"] > 5.0
    assert planner.plan(base.replace(shards=None))["train_shards"] == math.ceil(1500 * 524_288 * 5 / 250e6)


def test_d34_long_run_matches_its_record():
    preset = load("h100x8_d34")
    measured, source = planner.measured_from_preset(preset, preset.config)
    p = planner.plan(preset.config, measured=measured, measured_from=source)
    assert p["grad_accum"] == 8 and p["world_size"] == 8
    assert 80 < p["wall_hours"] < 110  # the record: about 100 hours at 47% MFU
    assert p["fits"]


def test_multi_node_world_size_and_price_scale():
    one = planner.plan(RunConfig.build(depth=20, gpu="H100:8", device_batch=16))
    two = planner.plan(RunConfig.build(depth=20, gpu="H100:8", device_batch=16, nodes=2))
    assert two["world_size"] == 16 and two["grad_accum"] == one["grad_accum"] / 2
    assert two["usd_per_hour"] == pytest.approx(2 * one["usd_per_hour"])
    assert two["wall_hours"] == pytest.approx(one["wall_hours"] / 2)


def test_unknown_peak_means_unknown_mfu_never_a_guess():
    p = planner.plan(RunConfig.build(depth=2, gpu="cpu", device_batch=1, seq_len=64, total_batch=64, iterations=5))
    assert p["mfu"] is None and p["step_seconds"] is None and p["wall_hours"] is None
    assert "unknown" in p["mfu_source"]


def test_explicit_mfu_is_used_and_named():
    p = planner.plan(RunConfig.build(depth=12, gpu="L40S:1", device_batch=8), mfu=0.3)
    assert p["mfu"] == 0.3 and p["mfu_source"] == "given with --mfu"


@pytest.mark.parametrize("bad", [{"depth": 0}, {"depth": 5}, {"depth": 4, "gpu": "H100:x"},
                                 {"depth": 4, "ratio": 2, "iterations": 3}, {"depth": 4, "device_batch": "8"},
                                 {"depth": 4, "shards": 1}, {"depth": True}])
def test_bad_configs_are_refused_at_construction(bad):
    with pytest.raises(ConfigError):
        RunConfig.build(**bad)


@pytest.mark.parametrize("preset", ["a100_d10", "h100x8_d34"])
def test_the_trainer_fetches_the_shards_the_plan_counts(preset, hub, monkeypatch, tmp_path):
    """They disagreed (train+1 against ⌈⌉+2): h100x8_d34 planned 1,775 shards and the trainer fetched 1,776.
    The default dataset's 1,823 files are listed by the loopback Hub; what the trainer fetches is recorded."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanolaunch import presets
    from trainer import dataset, fineweb
    from trainer import hub as hub_data
    from trainer.common import DistEnv

    if fineweb.REPO not in hub.repos:
        blob = io.BytesIO()
        pq.write_table(pa.table({"text": ["a document"]}), blob)
        hub.add(fineweb.REPO, {f"shard_{i:05d}.parquet": blob.getvalue() for i in range(fineweb.SHARDS_TOTAL)})
    config = presets.load(preset).config.replace(shards=None, data_dir=str(tmp_path))
    plan = planner.plan(config)
    from trainer import stream
    fetched, streamed = [], []

    def fetch(listing, paths, data_dir, **kw):  # the validation file, fetched before training
        fetched.extend(paths)
        return []

    def stream_files(self, listing, files, data_dir, **kw):  # the training files, streamed while training
        streamed.extend(files)
        raise RuntimeError("recorded")  # nothing to download here: what was asked for is the test

    monkeypatch.setattr(hub_data, "fetch", fetch)
    monkeypatch.setattr(stream.Stream, "__init__", stream_files)
    with pytest.raises(RuntimeError, match="recorded"):
        dataset.prepare(config.train, DistEnv(), plan["tokens"])
    assert fetched == ["shard_01822.parquet"] and len(streamed) + 1 == plan["shards"]
    fetched = streamed + fetched
    assert fetched[:-1] == [f"shard_{i:05d}.parquet" for i in range(plan["shards"] - 1)]
    if preset == "h100x8_d34":
        assert plan["shards"] == 1775
