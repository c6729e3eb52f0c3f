"""Choosing the device batch: which sizes to probe, in what order, when to stop, and which one wins.

Candidates divide the total batch evenly. Those predicted not to fit with headroom are never probed. The
rest are probed largest first; throughput rarely improves as the batch shrinks (more micro-steps), so the
search stops once PATIENCE probes in a row failed to beat the best by more than TIE. The winner is the
fastest (tokens/s) — and among probes within TIE of the fastest, the largest, since a difference that
small is timing noise in a short probe. An exhaustive sweep uses the same rule, so both agree.
"""
from __future__ import annotations

# Throughput within this fraction of the best counts as equally fast. GPUs time steadily; CPU probes share
# their cores with everything else: identical 20-step cpu_demo probes measured 14,824 and 17,159 tokens/s
# (16% apart) on 2 cores here, so on a CPU only a 20% difference is a real one.
TIE = {"gpu": 0.03, "cpu": 0.20}
PATIENCE = 2  # probes in a row that do not beat the best before the search stops


def tie(rows: list[dict]) -> float:
    return TIE["cpu" if rows and rows[0].get("gpu") == "cpu" else "gpu"]


def candidates(total_batch: int, seq_len: int, world_size: int) -> list[int]:
    """Device batches that split the total batch into whole micro-steps, largest first."""
    if total_batch % (seq_len * world_size):
        return []
    sequences = total_batch // (seq_len * world_size)
    return sorted((b for b in range(1, sequences + 1) if sequences % b == 0), reverse=True)


def best(rows: list[dict]) -> dict | None:
    """The fastest ok probe; within TIE of it, the largest batch."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("tokens_per_second")]
    if not ok:
        return None
    top = max(r["tokens_per_second"] for r in ok)
    return max((r for r in ok if r["tokens_per_second"] >= top * (1 - tie(ok))), key=lambda r: r["device_batch"])


def should_stop(rows: list[dict]) -> bool:
    """After each probe (largest first): PATIENCE ok probes in a row that did not beat the best so far by TIE."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("tokens_per_second")]
    if len(ok) <= PATIENCE:
        return False
    leader = ok[0]["tokens_per_second"]
    misses = 0
    for r in ok[1:]:
        if r["tokens_per_second"] > leader * (1 + tie(ok)):
            leader, misses = r["tokens_per_second"], 0
        else:
            misses += 1
    return misses >= PATIENCE
