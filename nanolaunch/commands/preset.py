"""`nanolaunch preset list | show`: the named presets and their provenance."""
from __future__ import annotations

import re
from typing import Annotated

import typer

from nanolaunch import output as out, presets
from nanolaunch.errors import NanolaunchError
from nanolaunch.commands.common import JsonOpt, RunArg

app = typer.Typer(no_args_is_help=True, help="Named presets: validated configs with their provenance.")


@app.command("list")
def list_presets(as_json: JsonOpt = False) -> None:
    """List every preset, built-in and promoted."""
    rows = [presets.load(name) for name in presets.names()]
    out.emit([p.as_dict() for p in rows], as_json, _render_list)


def _render_list(rows: list[dict]) -> None:
    t = out.table("name", "model", "gpu", "batch", "horizon", "val_bpb", "MFU", "description")
    for p in rows:
        c, r = p["config"], p["results"]
        horizon = (f"{c['iterations']:,} iters" if c["iterations"] else
                   f"ratio {c['ratio'] or 20:g}" if not c["target_flops"] else f"{c['target_flops']:.2e} FLOPs")
        t.add_row(p["name"], f"d{c['depth']}", c["gpu"] + (f" × {c['nodes']}" if c["nodes"] > 1 else ""),
                  str(c["device_batch"]), horizon, out.num(r.get("val_bpb"), 3), out.pct(r.get("mfu")),
                  p["description"])
    out.console().print(t)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Preset name.")], as_json: JsonOpt = False) -> None:
    """Show one preset: its config, provenance and measured results."""
    out.emit(presets.load(name).as_dict(), as_json, _render_one)


def _render_one(p: dict) -> None:
    c = out.console()
    c.print(f"[bold]{p['name']}[/]  {p['description']}")
    c.print(f"file: {p['path']}" + (f"  (derived from {p['base']})" if p["base"] else ""))
    for section in ("config", "provenance", "results"):
        t = out.table(section, "")
        for key, value in p[section].items():
            if value is not None:
                t.add_row(key, str(value))
        c.print(t)


@app.command("promote")
def promote(
    run: RunArg,
    name: Annotated[str, typer.Option("--name", help="Name of the new preset.")],
    force: Annotated[bool, typer.Option(help="Replace a promoted preset of that name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn a finished ok run into a named preset carrying its provenance and measured results."""
    from nanolaunch.ledger import Ledger

    row = Ledger().get(run)
    if row["kind"] != "run" or row["status"] != "ok":
        raise NanolaunchError(f"run #{run} is a {row['kind']} with status {row['status']}: only a finished ok run "
                              "can become a preset")
    if row["backend"] == "external":
        out.warn(f"run #{run} was added by hand (`ledger add`): its figures were typed in, not measured")
    if row["val_bpb"] is not None and row["gzip_bpb"] is not None and row["val_bpb"] >= row["gzip_bpb"]:
        out.warn(f"run #{run}'s val_bpb {row['val_bpb']:.4f} is no better than gzip -9 on the same text "
                 f"({row['gzip_bpb']:.4f}): the model learned less than a compressor")
    results = {k: row[k] for k in presets.result_fields() if row.get(k) is not None}
    provenance = {"source": f"nanolaunch run #{run} ({row['backend']}, {row['gpu_count']}×{row['gpu']})",
                  "run_id": str(run), "date": _date(row["ended_at"]), "commit": row["git_commit"],
                  "price_source": row["price_source"], "device_name": row["device_name"]}
    provenance = {k: v for k, v in provenance.items() if v is not None}
    config = dict(row["config"])
    if row.get("device_batch"):  # the batch it really ran at (smaller after running out of memory)
        config["device_batch"] = row["device_batch"]
    commit = re.search(r"@([0-9a-f]{40})\b", row["data"] or "")
    if commit and not config.get("data_revision"):
        config["data_revision"] = commit[1]  # the preset trains on the very data the run did
    text = presets.to_toml(f"promoted from run #{run}" + (f": {row['title']}" if row["title"] else ""),
                           config, provenance, results)
    path = presets.write(name, text, overwrite=force)
    out.emit(presets.load(name).as_dict(), as_json, lambda p: out.console().print(f"wrote preset {name} to {path}"))


def _date(timestamp: float | None) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp or 0, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
