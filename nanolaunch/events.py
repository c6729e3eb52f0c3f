"""What a follower of a run knows from its event stream (the contract itself: trainer/events.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from trainer.events import parse_line


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
