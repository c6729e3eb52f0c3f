"""Parse the trainer's event stream (docs/events.md), from a local subprocess or a SkyPilot log alike."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

SCHEMA_VERSION = 1
EXIT_STATUS = {0: "ok", 1: "crashed", 3: "oom", 4: "over_budget", 130: "cancelled"}


def parse_line(line: str) -> dict | None:
    """The event on this line, or None. Text before the first '{' (log prefixes) is ignored."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except ValueError:
        return None
    if isinstance(event, dict) and "event" in event and event.get("v") == SCHEMA_VERSION:
        return event
    return None


@dataclass
class RunState:
    """What a follower knows about a run so far, from its events alone."""
    start: dict | None = None
    last_step: dict | None = None
    val_bpb: float | None = None
    result: dict | None = None
    curve: list[dict] = field(default_factory=list)  # (step, loss) and (step, val_bpb) points
    checkpoints: list[dict] = field(default_factory=list)

    def feed(self, line: str) -> dict | None:
        event = parse_line(line)
        if event is None:
            return None
        kind = event["event"]
        if kind == "start":
            self.start = event
        elif kind == "step":
            self.last_step = event
            self.curve.append({"step": event["step"], "loss": event.get("loss")})
        elif kind == "eval":
            self.val_bpb = event.get("val_bpb")
            self.curve.append({"step": event["step"], "val_bpb": self.val_bpb})
        elif kind == "checkpoint":
            self.checkpoints.append(event)
        elif kind == "result":
            self.result = event
        return event
