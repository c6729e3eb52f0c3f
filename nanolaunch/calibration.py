"""Predictions from what this ledger has measured, and how good past predictions were.

Throughput: the finished probe or run of the same GPU kind nearest in depth, then device batch, then
sequence length; its achieved FLOP/s per device carries over to the new config, so step time scales with
FLOPs per step. Its start-up time (wall time not spent in steps) carries over too. A run's own row is
compared with the plan it was launched with: wall, cost and peak memory, predicted against measured.
"""
from __future__ import annotations

import math

from nanolaunch import gpus
from nanolaunch.config import RunConfig

TRACK_RECORD = 5  # past rows shown by `plan`


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


def nearest(rows: list[dict], config: RunConfig) -> dict | None:
    """The ok row on the same GPU kind (and GPUs per node) closest to `config`, newest first on ties."""
    gpu, per_node = gpus.parse_gpu_spec(config.gpu)
    same = [r for r in rows if r["status"] == "ok" and r["gpu"] == gpu.name and (r["gpu_count"] or 1) == per_node
            and r["tokens_per_second"] and r["config"] and r["steps"]]

    def distance(r: dict):
        c = r["config"]
        return (abs(c["depth"] - config.depth), abs(math.log2(c["device_batch"] / config.device_batch)),
                c["seq_len"] != config.seq_len, c["vocab_size"] != config.vocab_size, -r["id"])

    return min(same, key=distance, default=None)


def measurement(row: dict) -> dict:
    """What the planner needs from a measured row: its FLOP/s (through tokens/s and FLOPs/token) and MFU,
    and its start-up seconds (wall time before and after the timed steps)."""
    config = RunConfig(**row["config"])
    devices = (row["gpu_count"] or 1) * (row["nodes"] or 1)
    startup = None
    if row["wall_seconds"] and row["step_ms"] and row["kind"] == "dry":
        # a probe: no evaluation, so what is not steps is start-up (imports, data, model, first step)
        startup = max(0.0, row["wall_seconds"] - row["steps"] * row["step_ms"] / 1000)
    return {"mfu": row["mfu"], "tokens_per_second": row["tokens_per_second"],
            "flops_per_token": config.shape.flops_per_token, "devices": devices, "startup_seconds": startup}


def describe(row: dict) -> str:
    c = row["config"]
    return (f"ledger #{row['id']}: {row['kind']} d{c['depth']} batch {c['device_batch']} seq {c['seq_len']} on "
            f"{row['gpu_count'] or 1}×{row['gpu']}, {row['tokens_per_second']:,.0f} tok/s")


def measured_for(config: RunConfig, preset, rows: list[dict]) -> tuple[dict | None, str]:
    """The ledger's nearest measurement, else the preset's recorded results, else nothing."""
    from nanolaunch.planner import measured_from_preset

    row = nearest(rows, config)
    if row is not None:
        return measurement(row), describe(row)
    return measured_from_preset(preset, config)


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
