"""The event contract of docs/events.md (version 1), both sides of it: the trainer emits, the launcher parses.

Rank 0 prints one JSON object per line on stdout; human lines go to stderr. The final `result` is also
written atomically to RUN_DIR/result.json. Torch-free: nanolaunch imports this module too.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

VERSION = 1
STATUSES = ("ok", "oom", "over_budget", "crashed", "cancelled")
EXIT_CODES = {"ok": 0, "crashed": 1, "oom": 3, "over_budget": 4, "cancelled": 130}
EXIT_STATUS = {code: status for status, code in EXIT_CODES.items()}
USAGE_EXIT = 2  # settings that cannot run: one line on stderr
RESULT_NAME = "result.json"
# torchrun exits 1 whenever a worker fails; its failure summary names the first failed worker's own code:
#   Root Cause (first observed failure):  …  exitcode  : 3 (pid: 2085)
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?exitcode\s*:\s*(-?\d+)", re.S)


def figure(preset: bool = False, row: bool = True):
    """A result field; `preset`: a promoted preset carries it; `row`: it reaches the ledger row and its exports
    (False where the ledger measures the same name itself)."""
    return field(default=None, metadata={"preset": preset, "row": row})


@dataclass
class Result:
    """The trainer's result: the `result` event and RUN_DIR/result.json (docs/events.md). The one list of its
    fields: the ledger row, `--json`/`--csv` exports and promoted presets are derived from it, so a new field is
    added here and nowhere else (the ledger keeps fields without a column of their own in the row's result JSON)."""
    status: str
    steps: int | None = figure()
    val_bpb: float | None = figure(preset=True)
    gzip_bpb: float | None = figure(preset=True)  # gzip -9 on the very text val_bpb was measured on
    loss: float | None = figure()
    device_batch: int | None = figure()  # as run: smaller than planned after an OOM before the first update
    device_name: str | None = figure()
    machine: str | None = figure()  # a CPU's key (trainer/hardware.py)
    data: str | None = figure()  # what it trained on, as resolved: id[:config][/split]@commit
    mfu: float | None = figure(preset=True)
    peak_memory_gib: float | None = figure(preset=True)  # allocated, on the busiest rank
    peak_reserved_gib: float | None = figure()  # CUDA: what the caching allocator held
    tokens_per_second: float | None = figure(preset=True)
    step_ms: float | None = figure(preset=True)  # median, the first step of the process left out
    step_ms_mean: float | None = figure()
    eval_seconds: float | None = figure()
    wall_seconds: float | None = figure(row=False)  # this process; the ledger counts the launch to teardown
    total_wall_seconds: float | None = figure(row=False)  # with the earlier segments of a resumed run
    error: str | None = None

    @classmethod
    def of(cls, record: dict | None, status: str | None = None) -> "Result":
        """From a result record (an event, result.json, or what a follower saw), fields it does not know left out."""
        record = dict(record or {})
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in record.items() if k in names}
        known["status"] = status or known.get("status") or "crashed"
        return cls(**known)

    def record(self) -> dict:
        return dataclasses.asdict(self)

    def row(self) -> dict:
        """What the ledger row takes: every row field that has a value."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.metadata.get("row") and getattr(self, f.name) is not None}
        if self.error:
            values["error"] = str(self.error)[:2000]
        return values

    @classmethod
    def row_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("row")) + ("error",)

    @classmethod
    def preset_fields(cls) -> dict[str, type]:
        """The figures a promoted preset carries, with their types."""
        hints = typing.get_type_hints(cls)
        return {f.name: next(t for t in typing.get_args(hints[f.name]) if t is not type(None))
                for f in dataclasses.fields(cls) if f.metadata.get("preset")}


def trainer_exit_code(log_text: str) -> int | None:
    """The trainer's own exit code from torchrun's failure summary in a run's log (the last one: a recovered
    run may have failed before), or None when torchrun printed none. Negative: killed by that signal."""
    found = _ROOT_CAUSE.findall(log_text)
    return int(found[-1]) if found else None


def _clean(value):
    """JSON without NaN/inf (they become null) so every parser reads it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def make(event: str, **fields) -> dict:
    return _clean({"event": event, "v": VERSION, "time": round(time.time(), 3), **fields})


def emit(event: str, **fields) -> dict:
    record = make(event, **fields)
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return record


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def emit_result(run_dir: Path | None, result: Result) -> dict:
    """Print the result event and write it to RUN_DIR/result.json (best effort: a full disk must not
    hide the result line)."""
    assert result.status in STATUSES, result.status
    record = emit("result", **result.record())
    if run_dir is not None:
        try:
            write_json_atomic(Path(run_dir) / RESULT_NAME, record)
        except OSError as e:
            print(f"could not write {Path(run_dir) / RESULT_NAME}: {e}", file=sys.stderr, flush=True)
    return record


def parse_line(line: str) -> dict | None:
    """The event on this line, or None. Text before the first '{' (log prefixes) is ignored."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except ValueError:
        return None
    if isinstance(event, dict) and "event" in event and event.get("v") == VERSION:
        return event
    return None
