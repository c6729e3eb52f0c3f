"""The ledger: one SQLite row per run or probe, under NANOLAUNCH_HOME.

The schema is an append-only list of migrations (never edit one that shipped; add the next). WAL and a
busy timeout let several nanolaunch processes write at once; every write is one short transaction, so a
killed process leaves either the old row or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from nanolaunch.errors import NanolaunchError
from nanolaunch.presets import home
from trainer import events

STATUSES = ("running", "ok", "oom", "crashed", "over_budget", "cancelled", "failed_to_launch")
FINISHED = tuple(s for s in STATUSES if s != "running")

MIGRATIONS: list[tuple[str, str]] = [
    ("001_runs", """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            project TEXT NOT NULL DEFAULT 'default',
            title TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('dry', 'run')),
            preset TEXT,
            config TEXT NOT NULL,          -- RunConfig as JSON
            plan TEXT,                     -- the planner's numbers at launch, as JSON
            backend TEXT NOT NULL,         -- local, sky, external
            gpu TEXT,
            gpu_count INTEGER,
            nodes INTEGER,
            status TEXT NOT NULL,
            started_at REAL,
            ended_at REAL,
            wall_seconds REAL,
            usd_per_hour REAL,
            price_source TEXT,
            cost_usd REAL,
            val_bpb REAL,
            mfu REAL,
            tokens_per_second REAL,
            step_ms REAL,
            peak_memory_gib REAL,
            steps INTEGER,
            run_dir TEXT,
            log_path TEXT,
            result_path TEXT,
            wandb_url TEXT,
            git_commit TEXT,
            error TEXT,
            pid INTEGER                    -- the launcher's, then the trainer's process, while it runs locally
        );
        CREATE INDEX runs_project ON runs (project, id);
    """),
    ("002_cloud", """
        ALTER TABLE runs ADD COLUMN cluster TEXT;          -- SkyPilot cluster (or managed job name)
        ALTER TABLE runs ADD COLUMN sky_job_id INTEGER;    -- job id on the cluster, or the managed job's id
        ALTER TABLE runs ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;  -- 1: a managed (spot) job
        ALTER TABLE runs ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE run_events (          -- what happened to a run's machines: launched, preempted, recovered, down
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs (id),
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX run_events_run ON run_events (run_id, id);
    """),
    ("003_timings", """
        ALTER TABLE runs ADD COLUMN step_ms_mean REAL;     -- mean of the steps step_ms is the median of
        ALTER TABLE runs ADD COLUMN eval_seconds REAL;     -- time in evaluations (0 for a probe)
    """),
    ("004_machine", """
        ALTER TABLE runs ADD COLUMN gzip_bpb REAL;         -- gzip -9 on the text val_bpb was measured on
        ALTER TABLE runs ADD COLUMN device_name TEXT;      -- the GPU's name, or the CPU's model, cores and bf16 flags
        ALTER TABLE runs ADD COLUMN machine TEXT;          -- a CPU's key (trainer/hardware.py): rows alike in speed
    """),
    ("005_data", """
        ALTER TABLE runs ADD COLUMN data TEXT;             -- what it trained on, as resolved: id[:config][/split]@commit
    """),
    ("006_device_batch", """
        ALTER TABLE runs ADD COLUMN device_batch INTEGER;  -- the device batch it ran at (the config's, or smaller
                                                           -- after running out of memory before its first update)
        ALTER TABLE runs ADD COLUMN peak_reserved_gib REAL;  -- CUDA: max_memory_reserved (peak_memory_gib: allocated)
    """),
    ("007_removed", """
        ALTER TABLE runs ADD COLUMN removed_at REAL;       -- `ledger rm`: out of tables, totals and calibration;
                                                           -- kept, with the event that says why
    """),
    ("008_result", """
        ALTER TABLE runs ADD COLUMN result TEXT;           -- the trainer's result fields as JSON: those without a
                                                           -- column of their own appear in the row from here
    """),
]

COLUMNS = ("project", "title", "kind", "preset", "config", "plan", "backend", "gpu", "gpu_count", "nodes", "status",
           "started_at", "ended_at", "wall_seconds", "usd_per_hour", "price_source", "cost_usd", "val_bpb", "mfu",
           "tokens_per_second", "step_ms", "peak_memory_gib", "steps", "run_dir", "log_path", "result_path",
           "wandb_url", "git_commit", "error", "pid", "cluster", "sky_job_id", "managed", "recoveries", "step_ms_mean",
           "eval_seconds", "gzip_bpb", "device_name", "machine", "data", "device_batch",
           "peak_reserved_gib", "removed_at", "result")
JSON_COLUMNS = ("config", "plan", "result")

# A row as commands print and export it (--json, --csv): the launcher's columns a user reads, every field of the
# trainer's result (trainer.events.Result), and two from its config (the planned batch, the depth).
LAUNCH_COLUMNS = ("id", "project", "title", "kind", "status", "preset", "gpu", "gpu_count", "nodes", "backend",
                  "started_at", "ended_at", "wall_seconds", "usd_per_hour", "price_source", "cost_usd")
WHERE_COLUMNS = ("run_dir", "cluster", "managed", "recoveries", "wandb_url", "git_commit")


def export_columns() -> tuple[str, ...]:
    return (*LAUNCH_COLUMNS, *events.Result.row_fields(), "planned_device_batch", "depth", *WHERE_COLUMNS)


def export_row(r: dict) -> dict:
    """A ledger row as commands print and export it."""
    config = r.get("config") or {}
    derived = {"device_batch": r.get("device_batch") or config.get("device_batch"),  # as run, else as planned
               "planned_device_batch": config.get("device_batch"), "depth": config.get("depth"),
               "data": r.get("data") or config.get("data")}  # as trained on, else as asked for
    return {k: derived[k] if k in derived else r.get(k) for k in export_columns()}


def default_path() -> Path:
    return home() / "ledger.db"


class Ledger:
    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_path())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NanolaunchError(f"cannot create {self.path.parent} for the ledger (NANOLAUNCH_HOME): "
                                  f"{e.strerror or e}") from None
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise NanolaunchError(f"cannot open the ledger {self.path}: {e}") from None

    def _migrate(self) -> None:
        with self._write():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            done = {r[0] for r in self.db.execute("SELECT name FROM migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in filter(str.strip, sql.split(";")):
                        self.db.execute(statement)
                    self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))

    def _write(self):
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so concurrent writers queue, not fail."""
        db = self.db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, *_):
                db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()

    def close(self) -> None:
        self.db.close()

    # -- writing -------------------------------------------------------------------------------------------
    def add(self, **fields) -> int:
        fields.setdefault("started_at", time.time())
        names, values = self._encode(fields)
        with self._write():
            cur = self.db.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                  values)
        return int(cur.lastrowid)

    def update(self, run_id: int, **fields) -> None:
        if not fields:
            return
        names, values = self._encode(fields)
        with self._write():
            self.db.execute(f"UPDATE runs SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?", (*values, run_id))

    def finish(self, run_id: int, status: str, result: events.Result | dict | None = None, **fields) -> None:
        """Closes a run: its status, the result's fields, wall time and cost from its own hourly rate."""
        if status not in FINISHED:
            raise ValueError(f"not a finished status: {status}")
        row = self.get(run_id)
        ended = fields.pop("ended_at", time.time())
        wall = fields.pop("wall_seconds", None) or ended - (row["started_at"] or ended)
        result = result if isinstance(result, events.Result) else events.Result.of(result, status)
        figures = result.row()
        extra = {k: figures.pop(k) for k in list(figures) if k not in COLUMNS}  # no column of its own: the JSON
        if extra:
            figures["result"] = extra
        rate = row["usd_per_hour"]
        cost = None if rate is None else rate * wall / 3600
        if status == "failed_to_launch":  # SkyPilot got no machine: no time ran on one, nothing was billed
            wall, cost = None, 0.0
        self.update(run_id, status=status, ended_at=ended, wall_seconds=wall, pid=None, cost_usd=cost, **figures,
                    **fields)

    def add_event(self, run_id: int, kind: str, detail: str = "") -> None:
        with self._write():
            self.db.execute("INSERT INTO run_events (run_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                            (run_id, time.time(), kind, detail))

    @staticmethod
    def _encode(fields: dict) -> tuple[list[str], list]:
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger columns: {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        values = [json.dumps(v, default=str) if k in JSON_COLUMNS and v is not None else v for k, v in fields.items()]
        return list(fields), values

    # -- reading -------------------------------------------------------------------------------------------
    def get(self, run_id: int) -> dict:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NanolaunchError(f"no run #{run_id} in the ledger {self.path}; see `nanolaunch ledger --all`")
        return _decode(row)

    def rows(self, project: str | None = None) -> list[dict]:
        """The rows not removed with `ledger rm`, oldest first."""
        if project is None:
            cur = self.db.execute("SELECT * FROM runs WHERE removed_at IS NULL ORDER BY id")
        else:
            cur = self.db.execute("SELECT * FROM runs WHERE removed_at IS NULL AND project = ? ORDER BY id",
                                  (project,))
        return [_decode(r) for r in cur]

    def correct(self, run_id: int, why: str, **fields) -> None:
        """Change a finished row by hand, and say so in its events: what changed from what, and why."""
        row = self.get(run_id)
        if row["status"] == "running":
            raise NanolaunchError(f"run #{run_id} is still running: correct it once it has ended")
        changes = {k: v for k, v in fields.items() if row[k] != v}
        if not changes:
            return
        detail = ("out of tables, totals and calibration" if "removed_at" in changes else
                  "; ".join(f"{k} {row[k]!r} → {v!r}" for k, v in changes.items()))
        with self._write():
            names, values = self._encode(changes)
            self.db.execute(f"UPDATE runs SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?", (*values, run_id))
            self.db.execute("INSERT INTO run_events (run_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                            (run_id, time.time(), "edited" if "removed_at" not in changes else "removed",
                             f"{detail}{f' ({why})' if why else ''}"))

    def events(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT at, kind, detail FROM run_events WHERE run_id = ? ORDER BY id",
                                                 (run_id,))]

    def running(self) -> list[dict]:
        return [_decode(r) for r in self.db.execute("SELECT * FROM runs WHERE status = 'running' ORDER BY id")]


def _decode(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in JSON_COLUMNS:
        if d.get(k):
            d[k] = json.loads(d[k])
    for k, v in (d.pop("result", None) or {}).items():  # result fields without a column of their own
        d.setdefault(k, v)
    return d


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has finished: it only waits for a parent that may be gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
