"""`nanolaunch ledger [add]`: every run and probe with wall time, cost, val_bpb, MFU and outcome."""
from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from nanolaunch import output as out, table
from nanolaunch.commands.common import (BatchOpt, GpuOpt, JsonOpt, ModelArg, PresetOpt, ProjectFilterOpt, ProjectOpt,
                                        RunArg, TitleOpt, check_range, label, resolve)
from nanolaunch.errors import NanolaunchError
from nanolaunch.ledger import FINISHED, STATUSES, Ledger, export_columns, export_row
from nanolaunch.runs import reconcile

app = typer.Typer(help="The ledger of runs and probes.", invoke_without_command=True)

RECENT = 30


@app.callback()
def ledger(
    ctx: typer.Context,
    project: ProjectFilterOpt = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="Only runs (run) or probes (dry).")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help="Only rows with this outcome (ok, oom, …).")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Only rows on this GPU kind (H100, cpu, …).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Only rows whose data names this text.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only rows started on or after this UTC day "
                                                                 "(YYYY-MM-DD).")] = None,
    sort: Annotated[Optional[str], typer.Option("--sort", help=f"Order by one of {', '.join(table.SORTABLE)}; "
                                                               "a leading - sorts descending.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help=f"Every row, not only the last {RECENT}.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Cost, wall time and val_bpb of finished runs on the "
                                                            "same data, cheapest first, with gzip's figure.")] = False,
    totals_only: Annotated[bool, typer.Option("--totals", help="Only the totals: per project and in all.")] = False,
    as_json: JsonOpt = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write every selected row, and the total, to this "
                                                                   "CSV file.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a markdown table, with the totals.")] = False,
) -> None:
    """Show the ledger: one row per run or probe, filtered and sorted, with totals per project and in all."""
    if ctx.invoked_subcommand:
        return
    if kind is not None and kind not in ("run", "dry"):
        raise NanolaunchError(f"--kind must be run or dry, got {kind!r}")
    if status is not None and status not in STATUSES:
        raise NanolaunchError(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    if csv_file:
        out.check_output_path(csv_file, "--csv")
    db = Ledger()
    reconcile(db)
    rows = table.select([export_row(r) for r in db.rows(project)], kind=kind, status=status, gpu=gpu, data=data,
                        since=since, sort=sort)
    if compare:
        return out.emit(table.compare(rows), as_json, _render_compare)
    if totals_only:
        return out.emit(table.totals(rows), as_json, _render_totals)
    if csv_file:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(export_columns()))
        writer.writeheader()
        writer.writerows([{k: _cell(k, v) for k, v in r.items()} for r in rows])
        everything = table.totals(rows)["all"]
        writer.writerow({"id": "total", "wall_seconds": everything["wall_seconds"], "cost_usd": everything["cost_usd"],
                         "val_bpb": everything["best_val_bpb"]})
        out.write_file(csv_file, buf.getvalue(), "--csv")
        out.console(stderr=True).print(f"wrote {len(rows)} rows and their total to {csv_file}")
        return
    all_rows = rows
    if not show_all and not as_json:
        rows = rows[-RECENT:]
    if markdown:
        return _markdown(rows, table.totals(all_rows))
    out.emit(rows, as_json, lambda shown: _render(shown, table.totals(all_rows)))


TIMES = ("started_at", "ended_at")


def _cell(column: str, value):
    """A CSV cell as a spreadsheet should read it: times as ISO 8601 (UTC), and text starting with = + - @
    (a formula) behind a quote."""
    import datetime

    if column in TIMES and value is not None:
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat(timespec="seconds")
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _cells(r: dict) -> list[str]:
    return [str(r["id"]), r["project"], r["title"] or "", r["kind"], _config(r), _data(r),
            f"{r['gpu_count'] or 1}×{r['gpu']}",
            out.num(r["val_bpb"], 3) if r["val_bpb"] is not None else "—", out.seconds(r["wall_seconds"]),
            out.usd(r["cost_usd"]), out.pct(r["mfu"]), _outcome(r)]


def _outcome(r: dict) -> str:
    n = r.get("recoveries") or 0
    return f"{r['status']} ({n} recover{'y' if n == 1 else 'ies'})" if n else r["status"]


HEAD = ("#", "project", "title", "kind", "config", "data", "gpu", "val_bpb", "wall", "cost", "MFU", "outcome")


def _config(r: dict) -> str:
    return f"d{r['depth']} b{r['device_batch']}" if r.get("depth") else (r.get("preset") or "")


def _data(r: dict) -> str:
    """Short enough for a table: a Hub dataset's name without its owner, and 7 digits of its commit."""
    data = r.get("data") or ""
    m = re.fullmatch(r"(?:[\w.-]+/)?([\w.:-]+)(?:@(\w{7})\w*)?(.*)", data)
    return data if data.startswith("/") or not m else m[1] + (f"@{m[2]}" if m[2] else "") + m[3]


def _render(rows: list[dict], totals: dict) -> None:
    c = out.console()
    if not rows:
        c.print("the ledger is empty: try `nanolaunch run --preset cpu_demo --local`")
        return
    t = out.table(*HEAD)
    for r in rows:
        t.add_row(*_cells(r))
    c.print(t)
    c.print()
    _render_totals(totals)


TOTALS_HEAD = ("project", "runs", "probes", "wall", "cost", "best val_bpb")


def _total_cells(project: str, s: dict) -> list[str]:
    return [project, str(s["runs"]), str(s["probes"]), out.seconds(s["wall_seconds"]), out.usd(s["cost_usd"]),
            out.num(s["best_val_bpb"], 3) if s["best_val_bpb"] is not None else "—"]


def _render_totals(totals: dict) -> None:
    t = out.table(*TOTALS_HEAD, title="totals")
    for project, s in totals.items():
        t.add_row(*_total_cells("all projects" if project == "all" else project, s))
    out.console().print(t)


def _render_compare(rows: list[dict]) -> None:
    c = out.console()
    if not rows:
        c.print("no finished run with a val_bpb to compare")
        return
    t = out.table("#", "title", "config", "data", "gpu", "val_bpb", "gzip -9", "wall", "cost", "",
                  title="finished runs by data, cheapest first (→: no cheaper run on the same data did better)")
    for r in rows:
        t.add_row(str(r["id"]), r["title"] or "", _config(r), _data(r), f"{r['gpu_count'] or 1}×{r['gpu']}",
                  out.num(r["val_bpb"], 4), out.num(r["gzip_bpb"], 4) if r["gzip_bpb"] is not None else "—",
                  out.seconds(r["wall_seconds"]), out.usd(r["cost_usd"]), "→" if r["frontier"] else "")
    c.print(t)


def _markdown(rows: list[dict], totals: dict) -> None:
    for head, lines in ((HEAD, [_cells(r) for r in rows]),
                        (TOTALS_HEAD, [_total_cells("all projects" if p == "all" else p, s) for p, s in totals.items()])):
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for cells in lines:
            print("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
        print()


@app.command("add")
def add(
    model: ModelArg = None,
    preset: PresetOpt = None,
    title: TitleOpt = "",
    project: ProjectOpt = "default",
    kind: Annotated[str, typer.Option(help="run or dry.")] = "run",
    gpu: GpuOpt = None,
    batch: BatchOpt = None,
    status: Annotated[str, typer.Option(help=f"One of {', '.join(FINISHED)}.")] = "ok",
    wall_minutes: Annotated[float, typer.Option(help="Wall time in minutes.")] = 0.0,
    cost: Annotated[Optional[float], typer.Option(help="$ it cost.")] = None,
    val_bpb: Annotated[Optional[float], typer.Option(help="Final val_bpb.")] = None,
    mfu: Annotated[Optional[float], typer.Option(help="MFU as a fraction.")] = None,
    peak_memory_gib: Annotated[Optional[float], typer.Option(help="Peak memory per GPU.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a run made elsewhere (by hand, another tool) so its cost and result count."""
    if kind not in ("run", "dry"):
        raise NanolaunchError(f"--kind must be run or dry, got {kind!r}")
    if status not in FINISHED:
        raise NanolaunchError(f"--status must be one of {', '.join(FINISHED)}, got {status!r}")
    check_range("--wall-minutes", wall_minutes, 0)
    check_range("--cost", cost, 0)
    check_range("--val-bpb", val_bpb, 0, low_open=True)
    check_range("--mfu", mfu, 0, 1, low_open=True)
    check_range("--peak-memory-gib", peak_memory_gib, 0, low_open=True)
    config, chosen = resolve(model, preset, gpu=gpu, device_batch=batch)
    now = time.time()
    db = Ledger()
    wall = wall_minutes * 60
    run_id = db.add(project=project, title=title, kind=kind, preset=chosen.name if chosen else None,
                    config=config.to_dict(), backend="external", gpu=config.accelerator.name, gpu_count=config.gpus_per_node,
                    nodes=config.nodes, status=status, started_at=now - wall, ended_at=now, wall_seconds=wall,
                    cost_usd=cost, val_bpb=val_bpb, mfu=mfu, peak_memory_gib=peak_memory_gib,
                    usd_per_hour=cost / (wall / 3600) if cost is not None and wall else None,
                    price_source="given with ledger add")
    out.emit(export_row(db.get(run_id)), as_json, lambda r: out.console().print(f"recorded run #{r['id']}"))


WhyOpt = Annotated[str, typer.Option("--why", help="Why: kept with the change in the run's events.")]


@app.command("edit")
def edit(
    run: RunArg,
    title: Annotated[Optional[str], typer.Option("--title", help="A new title.",
                                                 callback=label("--title", empty_ok=True))] = None,
    project: Annotated[Optional[str], typer.Option("--project", help="Another project.",
                                                   callback=label("--project", empty_ok=False))] = None,
    cost: Annotated[Optional[float], typer.Option(help="$ it really cost.")] = None,
    val_bpb: Annotated[Optional[float], typer.Option(help="Its val_bpb.")] = None,
    why: WhyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Correct a finished row (a title, its project, a cost from the bill); the change and why go into its events."""
    check_range("--cost", cost, 0)
    check_range("--val-bpb", val_bpb, 0, low_open=True)
    changes = {k: v for k, v in dict(title=title, project=project, cost_usd=cost, val_bpb=val_bpb).items()
               if v is not None}
    if not changes:
        raise NanolaunchError("nothing to change: give --title, --project, --cost or --val-bpb")
    db = Ledger()
    if cost is not None:  # the rate follows the cost, so totals and calibration agree with the bill
        wall = db.get(run)["wall_seconds"]
        changes["usd_per_hour"] = cost / (wall / 3600) if wall else None
        changes["price_source"] = "corrected with ledger edit"
    db.correct(run, why, **changes)
    out.emit(export_row(db.get(run)), as_json, lambda r: out.console().print(f"run #{r['id']} corrected"))


@app.command("rm")
def remove(run: RunArg, why: WhyOpt = "", as_json: JsonOpt = False) -> None:
    """Take a finished row out of the tables, totals and calibration; it stays in the file with the event
    that says when and why (`show` still finds it)."""
    db = Ledger()
    if db.get(run)["removed_at"] is not None:
        raise NanolaunchError(f"run #{run} was removed already")
    db.correct(run, why, removed_at=time.time())
    out.emit({"id": run, "removed": True}, as_json, lambda r: out.console().print(f"run #{run} removed"))
