"""The ledger as a cost table, on pandas: which rows (filters), in which order, their totals, and the runs that
compare (cost, wall time and val_bpb of finished runs on the same data). Rows are `export_row` dicts."""
from __future__ import annotations

import datetime
import math

from nanolaunch.errors import NanolaunchError

SORTABLE = ("id", "started_at", "wall_seconds", "cost_usd", "val_bpb", "mfu", "tokens_per_second", "peak_memory_gib",
            "depth", "device_batch")


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["id"])


def _day(text: str) -> float:
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise NanolaunchError(f"--since must be a date as YYYY-MM-DD, got {text!r}") from None
    return datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp()


def select(rows: list[dict], *, kind: str | None = None, status: str | None = None, gpu: str | None = None,
           data: str | None = None, since: str | None = None, sort: str | None = None) -> list[dict]:
    """The rows that match every filter given (gpu: the kind, any case; data: part of the name; since: started
    on or after that UTC day), sorted by `sort` (a column; a leading - for descending), oldest first else."""
    descending, column = (sort or "id").startswith("-"), (sort or "id").lstrip("-")
    if column not in SORTABLE:
        raise NanolaunchError(f"--sort must be one of {', '.join(SORTABLE)} (a leading - sorts descending), "
                              f"got {sort!r}")
    start = _day(since) if since else None
    if not rows:
        return []
    df = _frame(rows)
    keep = df["id"].notna()
    if kind:
        keep &= df["kind"] == kind
    if status:
        keep &= df["status"] == status
    if gpu:
        keep &= df["gpu"].fillna("").str.upper() == gpu.split(":")[0].upper()
    if data:
        keep &= df["data"].fillna("").str.contains(data, regex=False)
    if start is not None:
        keep &= df["started_at"].fillna(0) >= start
    df = df[keep].sort_values(column, ascending=not descending, na_position="last", kind="stable")
    return [_plain(r) for r in df.to_dict("records")]


def _plain(row: dict) -> dict:
    """pandas' NaN back to None, its numbers back to Python's."""
    return {k: None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v)
            for k, v in row.items()}


def totals(rows: list[dict]) -> dict:
    """Per project and for all rows: runs, probes, wall seconds, $ and the best val_bpb of a run."""
    if not rows:
        return {"all": {"runs": 0, "probes": 0, "wall_seconds": 0.0, "cost_usd": 0.0, "best_val_bpb": None}}
    df = _frame(rows)

    def one(group) -> dict:
        best = group.loc[group["kind"] == "run", "val_bpb"].min()
        return {"runs": int((group["kind"] == "run").sum()), "probes": int((group["kind"] == "dry").sum()),
                "wall_seconds": float(group["wall_seconds"].fillna(0).sum()),
                "cost_usd": float(group["cost_usd"].fillna(0).sum()),
                "best_val_bpb": None if math.isnan(best) else float(best)}

    by = {str(project): one(group) for project, group in df.groupby("project", sort=False)}
    return {**by, "all": one(df)}


def compare(rows: list[dict]) -> list[dict]:
    """Finished runs with a val_bpb, grouped by the data they trained on (val_bpb compares only on the same
    text), each group cheapest first; `frontier`: no cheaper run of its group reached a lower val_bpb."""
    if not rows:
        return []
    df = _frame(rows)
    df = df[(df["kind"] == "run") & (df["status"] == "ok") & df["val_bpb"].notna()].copy()
    df["data"] = df["data"].fillna("")
    df = df.sort_values(["data", "cost_usd", "val_bpb"], na_position="last", kind="stable")
    cheaper_best = df.groupby("data")["val_bpb"].transform(lambda s: s.cummin().shift(fill_value=math.inf))
    df["frontier"] = df["val_bpb"] < cheaper_best
    df["below_gzip"] = df["gzip_bpb"] - df["val_bpb"]
    return [_plain(r) for r in df.to_dict("records")]
