"""`nanolaunch yaml`, `status`, `down RUN` and `logs RUN`: the SkyPilot side of runs."""
from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from nanolaunch import output as out
from nanolaunch.commands.common import JsonOpt, ModelArg, PresetOpt, resolve
from nanolaunch.errors import NanolaunchError
from nanolaunch.ledger import Ledger, pid_alive

RunArg = Annotated[int, typer.Argument(help="Run number from `nanolaunch ledger`.", show_default=False)]


def yaml(
    model: ModelArg = None,
    preset: PresetOpt = None,
    ratio: Annotated[Optional[float], typer.Option(help="Train on RATIO × params tokens.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Train for exactly N optimizer steps.")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Device batch.")] = None,
    gpu: Annotated[Optional[str], typer.Option(help="KIND[:COUNT] per node.")] = None,
    nodes: Annotated[Optional[int], typer.Option(help="Number of nodes.")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Spot GPUs, recovered as a managed job.")] = False,
    name: Annotated[str, typer.Option(help="Run folder name inside the bucket.")] = "manual",
    bucket: Annotated[Optional[str], typer.Option(help="Bucket for checkpoints and data [env NANOLAUNCH_BUCKET].")] = None,
) -> None:
    """Print the filled SkyPilot task: `sky launch` (or `sky jobs launch` with --spot) runs it by hand."""
    from nanolaunch.launch import derived
    from nanolaunch.task import STORE, RunOptions, default_bucket, render, to_yaml

    config, chosen = resolve(model, preset, ratio=ratio, iterations=iterations, device_batch=batch, gpu=gpu,
                             nodes=nodes, spot=spot or None)
    derived(config, chosen)  # the same validation as plan: a batch that cannot divide fails here
    opts = RunOptions(run_dir=f"{STORE}/runs/{name}", data_dir=f"{STORE}/data/{config.data_source}",
                      bucket=bucket or default_bucket(), managed=config.spot)
    sys.stdout.write(to_yaml(render(config, opts, name=f"nl-{name}")))


def status(as_json: JsonOpt = False) -> None:
    """What nanolaunch has running on SkyPilot: clusters and managed jobs, with their ledger rows."""
    from nanolaunch import cloud
    from nanolaunch.remote import PREFIX

    db = Ledger()
    rows = []
    for c in cloud.clusters(PREFIX):
        rows.append(_with_row(db, {"what": "cluster", "name": c["name"], "status": c["status"],
                                   "resources": c.get("resources_str"), "since": c.get("launched_at")}))
    for j in cloud.jobs(PREFIX, active_only=True):
        rows.append(_with_row(db, {"what": "managed job", "name": j["job_name"], "status": j["status"],
                                   "resources": f"job {j['job_id']}, {j.get('recovery_count') or 0} recoveries",
                                   "since": j.get("submitted_at")}))
    out.emit(rows, as_json, _status_table)


def _with_row(db: Ledger, item: dict) -> dict:
    """The ledger row the name belongs to (nl-<run id>), and what it has cost so far."""
    run_id = _run_of(item["name"])
    row = _get(db, run_id) if run_id else None
    item["run"] = run_id
    item["title"] = row["title"] if row else None
    if row and row["usd_per_hour"] is not None and row["started_at"]:
        item["cost_so_far_usd"] = row["usd_per_hour"] * ((row["ended_at"] or time.time()) - row["started_at"]) / 3600
    else:
        item["cost_so_far_usd"] = None
    return item


def _status_table(rows: list[dict]) -> None:
    c = out.console()
    if not rows:
        c.print("nothing of nanolaunch's is running on SkyPilot")
        return
    t = out.table("run", "what", "name", "status", "resources", "title", "cost so far")
    for r in rows:
        t.add_row(str(r["run"] or "?"), r["what"], r["name"], str(r["status"]), str(r["resources"] or ""),
                  r["title"] or "", out.usd(r["cost_so_far_usd"]))
    c.print(t)
    c.print("remove one with `nanolaunch down RUN`")


def down(run_id: RunArg) -> None:
    """Tear down a run's cluster (or cancel its managed job) and close its ledger row."""
    from nanolaunch import cloud

    db = Ledger()
    row = db.get(run_id)
    if not row["cluster"]:
        raise NanolaunchError(f"run #{run_id} ran on the {row['backend']} backend: it has no cluster to tear down")
    existed = True
    if row["managed"]:
        cloud.job_cancel(row["sky_job_id"])
    else:
        existed = cloud.down(row["cluster"])
    for other in db.rows():  # a probe sweep shares one cluster: every row on it has stopped
        if other["cluster"] == row["cluster"]:
            db.add_event(other["id"], "down", f"nanolaunch down {run_id}")
            if other["status"] == "running":
                db.finish(other["id"], "cancelled", {"error": "torn down by `nanolaunch down`"})
    done = "cancelled managed job" if row["managed"] else ("tore down" if existed else "nothing to tear down:")
    out.console().print(f"{done} {row['cluster']} (run #{run_id})")


def logs(run_id: RunArg, follow: Annotated[bool, typer.Option(help="Keep following until the run ends.")] = True) -> None:
    """Reattach to a run's output: from SkyPilot for cloud runs, from its log file for local ones."""
    db = Ledger()
    row = db.get(run_id)
    if not row["cluster"]:
        _local_logs(row, follow)
        return
    from nanolaunch import cloud
    from nanolaunch.remote import LogSink, reattached

    follower = reattached(db, row)
    sink = LogSink(follower.log_path, lambda line: (print(line, flush=True), follower(line)), mode="w")
    try:
        code = (cloud.job_tail(row["sky_job_id"], sink) if row["managed"]
                else cloud.tail(row["cluster"], row["sky_job_id"], sink))
    finally:
        sink.close()
    follower.settle(code, launcher_alive=pid_alive(row["pid"]))


def _local_logs(row: dict, follow: bool) -> None:
    from pathlib import Path

    path = Path(row["log_path"] or "")
    if not path.is_file():
        raise NanolaunchError(f"run #{row['id']} has no log at {path}")
    with open(path, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            elif not follow or Ledger().get(row["id"])["status"] != "running":
                return
            else:
                time.sleep(0.5)


def _run_of(name: str) -> int | None:
    from nanolaunch.remote import PREFIX

    tail = name[len(PREFIX):] if name.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() else None


def _get(db: Ledger, run_id: int) -> dict | None:
    try:
        return db.get(run_id)
    except NanolaunchError:
        return None
