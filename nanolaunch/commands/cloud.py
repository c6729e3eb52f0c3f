"""`nanolaunch yaml`, `status`, `down RUN` and `logs RUN`: the SkyPilot side of runs."""
from __future__ import annotations

import re
import sys
import time
from typing import Annotated, Optional

import typer

from nanolaunch import output as out
from nanolaunch.commands.common import (BatchOpt, CheckpointEveryOpt, DataOpt, DataSplitOpt, GpuOpt, InfraOpt,
                                        IterationsOpt, JsonOpt, ManagedOpt, ModelArg, NodesOpt, PresetOpt, RatioOpt,
                                        RunArg, SeqOpt, SpotOpt, TextColumnOpt, TotalBatchOpt, ValueEmbeddingsOpt,
                                        VocabOpt, resolve)
from nanolaunch.errors import NanolaunchError
from nanolaunch.ledger import Ledger, export_row, pid_alive


def _plain_name(flag: str):
    """A folder or bucket name goes into paths and shell commands on the node: letters, digits, . _ - only."""
    def check(value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value):
            raise typer.BadParameter(f"{flag} must be 1–63 letters, digits, '.', '_' or '-', starting with a letter "
                                     f"or digit, got {value!r}")
        return value
    return check


def yaml(
    model: ModelArg = None,
    preset: PresetOpt = None,
    ratio: RatioOpt = None,
    iterations: IterationsOpt = None,
    batch: BatchOpt = None,
    seq: SeqOpt = None,
    total_batch: TotalBatchOpt = None,
    vocab: VocabOpt = None,
    value_embeddings: ValueEmbeddingsOpt = None,
    data: DataOpt = None,
    data_split: DataSplitOpt = None,
    text_column: TextColumnOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    gpu: GpuOpt = None,
    infra: InfraOpt = None,
    nodes: NodesOpt = None,
    spot: SpotOpt = None,
    managed: ManagedOpt = False,
    name: Annotated[str, typer.Option(help="Run folder name inside the bucket.", callback=_plain_name("--name"))] = "manual",
    bucket: Annotated[Optional[str], typer.Option(help="Bucket for checkpoints and data [env NANOLAUNCH_BUCKET].",
                                                  callback=_plain_name("--bucket"))] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the filled SkyPilot task: `sky launch` (or `sky jobs launch` with --spot or --managed) runs it by hand."""
    from nanolaunch.session import Request, derived, for_run
    from nanolaunch.task import placement, render, to_yaml

    config, chosen = resolve(model, preset, infra=infra, ratio=ratio, iterations=iterations, device_batch=batch,
                             seq_len=seq, total_batch=total_batch, vocab_size=vocab, value_embeddings=value_embeddings,
                             checkpoint_every=checkpoint_every, gpu=gpu, nodes=nodes, spot=spot, data=data,
                             data_split=data_split, text_column=text_column)
    plan = derived(config, chosen)  # the same validation as plan: a batch that cannot divide fails here
    req = Request("run", config, chosen, managed=managed)
    place = placement(config, name, managed=req.recovered, bucket=bucket, disk=plan["disk"])
    config = for_run(req, plan, place)
    out.emit(render(config, place.opts, name=f"nl-{name}"), as_json, lambda task: sys.stdout.write(to_yaml(task)))


def status(as_json: JsonOpt = False) -> None:
    """What nanolaunch has running on SkyPilot: clusters and managed jobs, with their ledger rows."""
    from nanolaunch.backends import sky_sdk
    from nanolaunch.backends.skypilot import PREFIX

    db = Ledger()
    rows = []
    for c in sky_sdk.clusters(PREFIX):
        rows.append(_with_row(db, {"what": "cluster", "name": c["name"], "status": c["status"],
                                   "resources": c.get("resources_str"), "since": c.get("launched_at")}))
    for j in sky_sdk.jobs(PREFIX, active_only=True):
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


def down(run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Tear down a run's cluster (or cancel its managed job) and close its ledger row."""
    from nanolaunch.backends import sky_sdk

    db = Ledger()
    row = db.get(run_id)
    if not row["cluster"]:
        raise NanolaunchError(f"run #{run_id} ran on the {row['backend']} backend: it has no cluster to tear down")
    existed = True
    if row["managed"]:
        sky_sdk.job_cancel(row["sky_job_id"])
    else:
        existed = sky_sdk.down(row["cluster"])
    cancelled = []
    for other in db.rows():  # a probe sweep shares one cluster: every row on it has stopped
        if other["cluster"] == row["cluster"]:
            db.add_event(other["id"], "down", f"nanolaunch down {run_id}")
            if other["status"] == "running":
                db.finish(other["id"], "cancelled", {"error": "torn down by `nanolaunch down`"})
                cancelled.append(other["id"])
    done = "cancelled managed job" if row["managed"] else ("tore down" if existed else "nothing to tear down:")
    result = {"run": run_id, "cluster": row["cluster"], "managed": bool(row["managed"]), "existed": existed,
              "done": done.rstrip(":"), "cancelled_runs": cancelled}
    out.emit(result, as_json, lambda r: out.console().print(f"{done} {r['cluster']} (run #{r['run']})"))


def logs(
    run_id: RunArg,
    follow: Annotated[bool, typer.Option(help="Keep following until the run ends.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Reattach to a run's output: from SkyPilot for cloud runs, from its log file for local ones.

    With --json the log goes to stderr and stdout gets the run's ledger row when the log ends."""
    stream = sys.stderr if as_json else sys.stdout
    db = Ledger()
    row = db.get(run_id)
    if not row["cluster"]:
        _local_logs(row, follow, stream)
    else:
        from nanolaunch.backends import sky_sdk
        from nanolaunch.backends.skypilot import LogSink, Reattached, follow_job

        follower = Reattached(db, row)
        # Its own file: SkyPilot replays only what it still has (a managed job: the latest attempt), and
        # train.log holds every attempt the launcher saw.
        n = 1
        while (path := follower.log_path.with_name(f"reattach-{n}.log")).exists():
            n += 1
        sink = LogSink(path, lambda line: (print(line, file=stream, flush=True), follower(line)), mode="w")
        try:
            code = (sky_sdk.job_tail(row["sky_job_id"], sink) if row["managed"]
                    else follow_job(row["cluster"], row["sky_job_id"], sink, follower.epilogue))
        finally:
            sink.close()
        follower.settle(code, launcher_alive=pid_alive(row["pid"]))
    out.emit(export_row(db.get(run_id)), as_json, lambda r: None)  # people have read the log: nothing to add


def _local_logs(row: dict, follow: bool, stream) -> None:
    from pathlib import Path

    path = Path(row["log_path"] or "")
    if not path.is_file():
        raise NanolaunchError(f"run #{row['id']} has no log at {path}")
    with open(path, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                stream.write(chunk)
                stream.flush()
            elif not follow or Ledger().get(row["id"])["status"] != "running":
                return
            else:
                time.sleep(0.5)


def _run_of(name: str) -> int | None:
    from nanolaunch.backends.skypilot import PREFIX

    tail = name[len(PREFIX):] if name.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() else None


def _get(db: Ledger, run_id: int) -> dict | None:
    try:
        return db.get(run_id)
    except NanolaunchError:
        return None
