"""`nanolaunch show RUN`: one run's config, derived numbers, results and its loss and val_bpb curves."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nanolaunch import output as out
from nanolaunch.commands.common import JsonOpt, RunArg
from nanolaunch.ledger import Ledger, export_row
from nanolaunch.runs import follow_log, reconcile

BARS = "▁▂▃▄▅▆▇█"


def show(
    run: RunArg,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write the curves to this PNG file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: config, plan, results and curves; --plot FILE writes the curves as a PNG."""
    if plot:
        out.check_output_path(plot, "--plot")
    db = Ledger()
    reconcile(db)
    row = db.get(run)
    state = follow_log(row["log_path"])
    data = {**export_row(row), "config": row["config"], "plan": row["plan"], "curve": state.curve,
            "events": db.events(run)}
    if plot:
        write_plot(data, plot)
    out.emit(data, as_json, _render)
    if plot:
        out.console(stderr=True).print(f"wrote {plot}")


def sparkline(values: list[float], width: int = 60) -> str:
    if not values:
        return ""
    if len(values) > width:  # keep the shape: sample evenly, always the last point
        values = [values[int(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(BARS[int((v - lo) / span * (len(BARS) - 1))] for v in values)


def _series(curve: list[dict], key: str) -> list[tuple[int, float]]:
    return [(p["step"], p[key]) for p in curve if p.get(key) is not None]


def _render(d: dict) -> None:
    c = out.console()
    c.print(f"[bold]run #{d['id']}[/] {d['title'] or ''}  ({d['kind']}, {d['status']}, project {d['project']})")
    cfg = d["config"] or {}
    c.print("config    " + " ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    plan = d["plan"] or {}
    if plan:
        c.print(f"plan      params {out.num(plan.get('params'))} · FLOPs/token {out.num(plan.get('flops_per_token'))}"
                f" · {out.num(plan.get('iterations'))} iterations · accum {plan.get('grad_accum')}"
                f" · predicted peak {out.num(plan.get('peak_memory_gib'), 2)} GiB"
                f" · predicted wall {out.hours(plan.get('wall_hours'))}")
    bar = "" if d.get("gzip_bpb") is None else f" (gzip -9 on the same text: {d['gzip_bpb']:.4f})"
    c.print(f"result    val_bpb {out.num(d['val_bpb'], 4)}{bar} · MFU {out.pct(d['mfu'])} · "
            f"{out.num(d['tokens_per_second'])} tokens/s · step {out.num(d['step_ms'])} ms · peak "
            f"{out.num(d['peak_memory_gib'], 2)} GiB · {out.num(d['steps'])} steps · wall "
            f"{out.seconds(d['wall_seconds'])} · {out.usd(d['cost_usd'])}")
    planned = cfg.get("device_batch")
    if d.get("device_batch") and planned and d["device_batch"] != planned:
        c.print(f"batch     ran at batch {d['device_batch']} (planned {planned}): out of memory before the first "
                f"update, halved with grad accumulation doubled")
    c.print(f"data      {d.get('data') or cfg.get('data')}" +
            ("" if d.get("data") else " (as asked for; not yet resolved)"))
    if d.get("device_name"):
        c.print(f"machine   {d['device_name']}" + (f" · key {d['machine']}" if d.get("machine") else ""))
    if d.get("error"):
        c.print(f"error     {d['error']}")
    c.print(f"folder    {d['run_dir']}")
    if d.get("cluster"):
        start = d["started_at"] or 0
        happened = " · ".join(f"{e['kind']} {e['detail']} (+{out.seconds(e['at'] - start)})".replace("  ", " ")
                              for e in d["events"])
        c.print(f"cloud     {d['cluster']}: {happened or 'no events'}")
    for key in ("loss", "val_bpb"):
        points = _series(d["curve"], key)
        if points:
            c.print(f"{key:<9} {points[0][1]:.4f} {sparkline([v for _, v in points])} {points[-1][1]:.4f}"
                    f"  (steps {points[0][0]}–{points[-1][0]})")


def write_plot(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, style in (("loss", "-"), ("val_bpb", "o-")):
        points = _series(d["curve"], key)
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], style, label=key, markersize=3)
    ax.set_xlabel("step")
    ax.set_title(f"run #{d['id']} {d['title'] or ''} ({d['status']})")
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        out.write_file(path, lambda tmp: fig.savefig(tmp, format="png"), "--plot")
    finally:
        plt.close(fig)
