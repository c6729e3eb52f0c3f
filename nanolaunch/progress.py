"""The live display of one run: a rich progress bar with step, loss, tokens/s, val_bpb, $ so far and ETA."""
from __future__ import annotations

import time

from nanolaunch import output as out
from nanolaunch.events import RunState


class Display:
    """Silent with --json (quiet): stdout is the command's result, and people read nothing of it."""

    def __init__(self, label: str, total: int, usd_per_hour: float, quiet: bool = False):
        self.label, self.total, self.rate, self.quiet = label, total, usd_per_hour, quiet
        self.started = time.monotonic()
        self.progress = None

    def status(self, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, info=info)

    def __enter__(self):
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=out.console(stderr=True), transient=False)
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=self.total, info="starting")
        return self

    def update(self, event: dict, state: RunState) -> None:
        if self.progress is None:
            return
        if event["event"] == "start":
            self.progress.update(self.task, total=event.get("iterations") or self.total, info="training")
        elif event["event"] == "step":
            info = f"loss {event['loss']:.3f} · {out.num(event.get('tokens_per_second'))} tok/s"
            if state.val_bpb is not None:
                info += f" · val_bpb {state.val_bpb:.3f}"
            if self.rate:
                info += f" · {out.usd(self.rate * (time.monotonic() - self.started) / 3600)}"
            self.progress.update(self.task, completed=event["step"], info=info)
        elif event["event"] == "result":
            self.progress.update(self.task, info=event["status"])

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
