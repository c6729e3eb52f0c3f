"""Predictions from what this ledger has measured, and how good past predictions were.

Throughput: the finished probes and runs of the same GPU kind and the nearest config (precision and
compilation, then depth, device batch, sequence length); the median of their achieved FLOP/s per device
carries over to the new config, so step time scales with FLOPs per step. Their median start-up time
(wall time not spent in steps or evaluations) carries over too. A run's own row is compared with the plan
it was launched with: wall, cost and peak memory, predicted against measured.
"""
from __future__ import annotations

import math
import statistics

from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError

TRACK_RECORD = 5  # past rows shown by `plan`
POOL = 5  # newest measurements of one config whose median a prediction uses
MEAN_STEPS = 100  # a row of this many steps predicts with its mean step, a shorter one with its median


def ledger_rows() -> list[dict]:
    """Every row of this machine's ledger; none when there is no ledger yet (planning creates nothing)."""
    from nanolaunch.ledger import Ledger, default_path

    if not default_path().exists():
        return []
    db = Ledger()
    try:
        return db.rows()
    finally:
        db.close()


def nearest(rows: list[dict], config: RunConfig) -> list[dict]:
    """The measurements of the nearest measured config: ok rows on the same GPU kind (and GPUs per node; for
    a local CPU plan, this very machine), closest to `config` first in precision and compilation (they change speed
    outright, unlike size, which FLOPs scale for), then depth, device batch, sequence length and vocabulary;
    up to POOL of them, newest first."""
    machine = this_machine() if config.on_this_cpu else None
    same = [(r, c) for r in rows if r["status"] == "ok" and r["gpu"] == config.accelerator.name
            and (r["gpu_count"] or 1) == config.gpus_per_node and (machine is None or r.get("machine") == machine)
            and r["tokens_per_second"] and r["steps"] and (c := _config(r)) is not None]
    if not same:
        return []

    def distance(c: RunConfig):
        return (c.mode != config.mode, abs(c.train.depth - config.train.depth),
                abs(math.log2(c.train.device_batch / config.train.device_batch)), c.train.seq_len != config.train.seq_len,
                c.train.vocab_size != config.train.vocab_size)

    _, closest = min(same, key=lambda rc: (distance(rc[1]), -rc[0]["id"]))
    alike = [r for r, c in same if _speed_key(c) == _speed_key(closest)]
    return sorted(alike, key=lambda r: -r["id"])[:POOL]


def _speed_key(c: RunConfig) -> tuple:
    """What a row's speed depends on besides the machine: rows alike in this measured the same thing."""
    return c.train.depth, c.train.device_batch, c.train.seq_len, c.train.vocab_size, c.train.head_dim, c.mode


def _config(row: dict) -> RunConfig | None:
    """The config the row ran (its device batch as run: smaller than planned after an out-of-memory fallback);
    None for one this version cannot read (a field renamed since), which is skipped."""
    try:
        config = RunConfig.build(**(row["config"] or {}))
        ran = row.get("device_batch")
        return config.replace(device_batch=ran) if ran and ran != config.train.device_batch else config
    except (TypeError, NanolaunchError):
        return None


def measurement(rows: list[dict], probe: bool = False) -> dict:
    """What the planner needs from measured rows of one config: the median over rows of their FLOP/s
    (through tokens/s and FLOPs/token), MFU and start-up seconds. One timing can land in a slow spell of a
    shared machine; the median of several cannot. Start-up comes from rows of the kind planned where there
    are any: a run prepares real data and saves a checkpoint, a probe does neither (2.5 s apart on cpu_demo)."""
    config = _config(rows[0])
    devices = (rows[0]["gpu_count"] or 1) * (rows[0]["nodes"] or 1)
    mfus = [r["mfu"] * _rate_scale(r) for r in rows if r["mfu"]]
    alike = [r for r in rows if (r["kind"] == "dry") == probe]
    startups = [s for s in map(startup, alike) if s is not None] or [s for s in map(startup, rows) if s is not None]
    return {"mfu": statistics.median(mfus) if mfus else None,
            "tokens_per_second": statistics.median(r["tokens_per_second"] * _rate_scale(r) for r in rows),
            "flops_per_token": config.shape.flops_per_token, "devices": devices,
            "startup_seconds": statistics.median(startups) if startups else None}


def _step_ms(row: dict) -> float:
    """The step a row predicts with: the mean over a run of MEAN_STEPS or more (wall time adds up every
    step, slow ones included), else the median (one slow step moves a 20-step probe's mean: +14% once)."""
    if row.get("step_ms_mean") and row["steps"] >= MEAN_STEPS:
        return row["step_ms_mean"]
    return row["step_ms"]


def _rate_scale(row: dict) -> float:
    """The ledger's rate is at the median step: this puts it at the step the row predicts with."""
    return row["step_ms"] / _step_ms(row) if row["step_ms"] else 1.0


def startup(row: dict) -> float | None:
    """Wall time a plan adds to `steps × step + evaluations`: imports, data, model, compilation and the
    first step's warm-up, the final checkpoint. None where it cannot be told: a run recorded before the
    trainer timed its evaluations."""
    if not row["wall_seconds"] or not row["step_ms"]:
        return None
    evals = 0.0 if row["kind"] == "dry" else row.get("eval_seconds")  # a probe never evaluates
    if evals is None:
        return None
    left = row["wall_seconds"] - row["steps"] * _step_ms(row) / 1000 - evals
    return left if left >= 0 else None  # negative: a resumed run (steps counted over its earlier segments)


def describe(rows: list[dict]) -> str:
    r, c = rows[0], rows[0]["config"]
    ids = ", ".join(f"#{x['id']}" for x in rows)
    what = f"ledger {ids}" if len(rows) == 1 else f"median of ledger {ids}"
    tps = statistics.median(x["tokens_per_second"] * _rate_scale(x) for x in rows)
    kinds = "/".join(sorted({x["kind"] for x in rows}))
    return (f"{what}: {kinds} d{c['depth']} batch {c['device_batch']} "
            f"seq {c['seq_len']} on {r['gpu_count'] or 1}×{r['gpu']}, {tps:,.0f} tok/s")


def this_machine() -> str:
    from trainer.hardware import this_cpu

    return this_cpu().key


def measured_for(config: RunConfig, preset, rows: list[dict], probe: bool = False,
                 calibrate: bool = False) -> tuple[dict | None, str]:
    """The ledger's nearest measurement; else, on a CPU, this machine's calibration (run first when
    `calibrate`), never a figure from another machine; else the preset's recorded results; else nothing.
    `probe`: for a probe's plan, whose start-up is a probe's."""
    from nanolaunch import machine
    from nanolaunch.planner import measured_from_preset

    pool = nearest(rows, config)
    if pool:
        return measurement(pool, probe), describe(pool)
    if config.on_this_cpu:
        return machine.measurement(calibrate)
    return measured_from_preset(preset, config)


def measured_memory(rows: list[dict], config: RunConfig) -> dict | None:
    """The newest GPU probe or run of this very config (GPU kind and count, nodes, shape, device batch as run,
    precision and compilation) that measured its peak, or ran out of memory: what the plan's verdict then
    stands on, with the row it came from."""
    if config.on_cpu:
        return None
    want = (_speed_key(config), config.gpus_per_node, config.nodes)
    for r in reversed(rows):
        if r["gpu"] != config.accelerator.name or r["status"] not in ("ok", "oom"):
            continue
        c = _config(r)
        if c is None or (_speed_key(c), r["gpu_count"] or 1, r["nodes"] or 1) != want:
            continue
        if r["status"] == "oom" and not r.get("device_batch"):  # ran out of memory at the planned batch
            return {"id": r["id"], "oom": True, "allocated_gib": None, "reserved_gib": None}
        if r["status"] == "ok" and r["peak_memory_gib"]:
            return {"id": r["id"], "oom": False, "allocated_gib": r["peak_memory_gib"],
                    "reserved_gib": r.get("peak_reserved_gib")}
    return None


def track_record(rows: list[dict], preset: str | None, gpu: str, limit: int = TRACK_RECORD) -> list[dict]:
    """Past rows of this preset (or, without one, this GPU kind): predicted against measured."""
    mine = [r for r in rows if r["status"] == "ok" and r["plan"]
            and (r["preset"] == preset if preset else r["gpu"] == gpu)]
    record = []
    for r in mine[-limit:]:
        plan = r["plan"]
        predicted_wall = plan["wall_hours"] * 3600 if plan.get("wall_hours") is not None else None
        record.append({
            "id": r["id"], "kind": r["kind"], "title": r["title"],
            "wall_predicted_s": predicted_wall, "wall_s": r["wall_seconds"],
            "wall_error": _error(predicted_wall, r["wall_seconds"]),
            "cost_predicted_usd": plan.get("cost_usd"), "cost_usd": r["cost_usd"],
            "cost_error": _error(plan.get("cost_usd"), r["cost_usd"]),
            "memory_predicted_gib": plan.get("peak_memory_gib"), "memory_gib": r["peak_memory_gib"],
            "memory_error": _error(plan.get("peak_memory_gib"), r["peak_memory_gib"]),
        })
    return record


def _error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted − measured) / measured: +10% means the prediction was 10% high."""
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured
