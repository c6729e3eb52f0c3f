"""What val_bpb a training budget buys: a power law of val_bpb in training compute, fitted to the published
records of nanochat-style runs on the same data (nanolaunch/data/records.csv) and this machine's own ledger
rows on that data, refitted as rows arrive; its error is measured by leaving one compute budget out at a time.

    val_bpb = a · (C / 1e18) ^ (−b),  C = FLOPs/token × tokens  (least squares in log-log)
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from trainer import fineweb
from trainer.arithmetic import ModelShape

RECORDS = Path(__file__).parent / "data" / "records.csv"
SCALE = 1e18


def published() -> list[dict]:
    lines = [line for line in RECORDS.read_text().splitlines() if not line.startswith("#")]
    rows = []
    for r in csv.DictReader(lines):
        shape = ModelShape(int(r["depth"]))
        rows.append({"source": r["source"], "kind": "published", "depth": int(r["depth"]),
                     "flops": float(shape.flops_per_token) * int(r["tokens"]), "val_bpb": float(r["val_bpb"])})
    return rows


def from_ledger(rows: list[dict], data: str = fineweb.REPO, vocab_size: int = 65_536) -> list[dict]:
    """Finished runs of this ledger (launched or added by hand) on the same data and vocabulary, with a val_bpb;
    their training FLOPs from their own config (trainer/arithmetic.py)."""
    from nanolaunch.config import RunConfig
    from nanolaunch.errors import NanolaunchError
    from trainer.arithmetic import ShapeError

    found = []
    for r in rows:
        if r["kind"] != "run" or r["status"] != "ok" or not r.get("val_bpb") or not r.get("config"):
            continue
        try:
            t = RunConfig.build(**r["config"]).train
            flops = training_flops(t)
        except (NanolaunchError, ShapeError, TypeError):
            continue  # a row whose config this version cannot read
        if t.data == data and t.vocab_size == vocab_size:
            found.append({"source": f"ledger #{r['id']}", "kind": "ledger", "depth": t.depth, "flops": flops,
                          "val_bpb": r["val_bpb"]})
    return found


def training_flops(t) -> float:
    """FLOPs/token × the tokens of the horizon, for a TrainConfig (trainer/arithmetic.py's counts)."""
    from trainer.arithmetic import iterations_for

    shape = t.shape
    steps = iterations_for(shape.params, t.total_batch, flops_per_token=shape.flops_per_token, **t.horizon)
    return float(shape.flops_per_token) * steps * t.total_batch


@dataclass(frozen=True)
class Fit:
    a: float
    b: float
    points: int
    budgets: int  # distinct compute budgets among the points
    loo_error: float  # root mean square of the relative errors, each budget predicted by a fit without it
    loo: list[dict]

    def predict(self, flops: float) -> float:
        return self.a * (flops / SCALE) ** -self.b

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "points": self.points, "budgets": self.budgets,
                "loo_error": self.loo_error, "loo": self.loo,
                "formula": f"val_bpb = {self.a:.4f} · (C / 1e18)^-{self.b:.4f}"}


def _least_squares(frame) -> tuple[float, float]:
    import numpy as np

    slope, intercept = np.polyfit(np.log(frame["flops"] / SCALE), np.log(frame["val_bpb"]), 1)
    return math.exp(intercept), -slope


def fit(points: list[dict]) -> Fit:
    """The power law over every point, and its leave-one-budget-out error (repeats of one budget leave together:
    they say nothing about another budget)."""
    import pandas as pd

    frame = pd.DataFrame(points)
    if frame.empty or frame["flops"].nunique() < 3:
        raise ValueError("the fit needs points at three or more compute budgets")
    a, b = _least_squares(frame)
    loo = []
    for flops, held in frame.groupby("flops"):
        la, lb = _least_squares(frame[frame["flops"] != flops])
        predicted = la * (flops / SCALE) ** -lb
        measured = float(held["val_bpb"].mean())
        loo.append({"flops": float(flops), "measured": measured, "predicted": float(predicted),
                    "error": float((predicted - measured) / measured)})
    rms = math.sqrt(sum(x["error"] ** 2 for x in loo) / len(loo))
    return Fit(float(a), float(b), len(frame), int(frame["flops"].nunique()), rms, loo)


def write_plot(points: list[dict], law: Fit, chosen: dict | None, path: Path) -> None:
    """The points, the fitted curve, and the budget's choice on it, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["flops"] for p in points] + ([chosen["flops"]] if chosen else [])
    lo, hi = min(xs) / 2, max(xs) * 2
    grid = [lo * (hi / lo) ** (i / 99) for i in range(100)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(grid, [law.predict(c) for c in grid], "-", color="gray",
            label=f"fit: {law.a:.3f}·(C/1e18)^-{law.b:.4f} (leave-one-out ±{law.loo_error:.1%})")
    for kind, marker in (("published", "o"), ("ledger", "s")):
        mine = [p for p in points if p["kind"] == kind]
        if mine:
            ax.plot([p["flops"] for p in mine], [p["val_bpb"] for p in mine], marker, label=kind, linestyle="none")
    if chosen:
        ax.plot([chosen["flops"]], [chosen["val_bpb"]], "*", markersize=14, label=chosen["label"])
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("val_bpb")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    from nanolaunch.output import write_file

    try:
        write_file(path, lambda tmp: fig.savefig(tmp, format="png"), "--plot")
    finally:
        plt.close(fig)
