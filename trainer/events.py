"""The event contract of docs/events.md (version 1), both sides of it: the trainer emits, the launcher parses.

Rank 0 prints one JSON object per line on stdout; human lines go to stderr. The final `result` is also
written atomically to RUN_DIR/result.json. Torch-free: nanolaunch imports this module too.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
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


def emit_result(run_dir: Path | None, status: str, **fields) -> dict:
    """Print the result event and write it to RUN_DIR/result.json (best effort: a full disk must not
    hide the result line)."""
    assert status in STATUSES, status
    record = emit("result", status=status, **fields)
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
