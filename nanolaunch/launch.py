"""What every backend shares for one run or probe: the request, its plan, the trainer settings it runs with,
its ledger row, its folder and its live display."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from nanolaunch import output as out
from nanolaunch.config import RunConfig
from nanolaunch.events import RunState
from nanolaunch.ledger import Ledger
from nanolaunch.planner import plan as make_plan
from nanolaunch.presets import Preset
from nanolaunch.runs import git_commit
from nanolaunch.task import to_yaml

LEDGER_UPDATE_SECONDS = 2.0


@dataclass(frozen=True)
class Request:
    kind: str  # "run" or "dry"
    config: RunConfig
    preset: Preset | None = None
    title: str = ""
    project: str = "default"
    probe: int | None = None
    memory_limit_gib: float | None = None
    max_cost: float | None = None
    wandb_project: str | None = None  # W&B logging (the key comes from WANDB_API_KEY, as a secret in the cloud)
    quiet: bool = False
    managed: bool = False  # a SkyPilot managed job: recovered after preemption or node failure (spot runs always are)

    @property
    def recovered(self) -> bool:
        """Runs as a managed job that SkyPilot brings back after its cluster is lost."""
        return self.kind == "run" and (self.managed or self.config.spot)


def for_run(req: Request, plan: dict, run_dir: str, data_dir: str, store_dir: str | None = None) -> RunConfig:
    """The one builder of what a backend hands the trainer: the request's config with this run's folder,
    data cache, probe, memory cap, budget (at the plan's price) and W&B project. Runs always resume: a
    restarted job continues from its newest complete checkpoint. Shards kept in the store stay for later
    runs; shards on a node's own disk are deleted once read (they die with the node anyway)."""
    store_dir = store_dir or data_dir
    return req.config.replace(
        run_dir=run_dir, data_dir=data_dir, store_dir=store_dir, keep_data=store_dir == data_dir,
        resume=req.probe is None, probe=req.probe,
        memory_limit_gib=req.memory_limit_gib, max_cost=req.max_cost,
        price_per_hour=(plan["usd_per_hour"] or 0.0) if req.max_cost is not None else None,
        wandb_project=req.wandb_project)


def derived(config: RunConfig, preset: Preset | None, probe: bool = False) -> dict:
    """The plan a run is launched with (and later compared against): the ledger's own measurements first."""
    from nanolaunch import calibration

    rows = calibration.ledger_rows()
    measured, source = calibration.measured_for(config, preset, rows, probe=probe)
    return make_plan(config, measured=measured, measured_from=source, probe=probe,
                     memory_measured=calibration.measured_memory(rows, config))


def open_row(ledger: Ledger, req: Request, plan: dict, backend: str, nodes: int, **fields) -> int:
    """The run's ledger row, status running, with everything known before it starts."""
    return ledger.add(project=req.project, title=req.title or _default_title(req), kind=req.kind,
                      preset=req.preset.name if req.preset else None, config=req.config.to_dict(), plan=plan,
                      backend=backend, gpu=req.config.accelerator.name, gpu_count=req.config.gpus_per_node, nodes=nodes, status="running",
                      usd_per_hour=plan["usd_per_hour"], price_source=plan["price_source"], git_commit=git_commit(),
                      **fields)


def write_task(folder, task: dict, config: RunConfig) -> None:
    """What ran, next to its log: the filled task (secrets never in it) and the config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(to_yaml(task))
    (folder / "config.json").write_text(json.dumps(config.train.to_dict(), indent=2))


def _default_title(req: Request) -> str:
    c = req.config
    what = f"probe b{c.train.device_batch}" if req.kind == "dry" else "run"
    return f"{req.preset.name if req.preset else f'd{c.train.depth}'} {what}"


class LiveRow:
    """Keeps a running row current from its event stream, writing at most every LEDGER_UPDATE_SECONDS."""

    def __init__(self, ledger: Ledger, run_id: int, display: "Display | None"):
        self.ledger, self.run_id, self.display = ledger, run_id, display
        self.last_write = 0.0

    def __call__(self, event: dict, state: RunState) -> None:
        if self.display is not None:
            self.display.update(event, state)
        if event["event"] == "wandb" and event.get("url"):
            self.ledger.update(self.run_id, wandb_url=event["url"])
        now = time.monotonic()
        if event["event"] == "step" and now - self.last_write > LEDGER_UPDATE_SECONDS:
            self.last_write = now
            self.ledger.update(self.run_id, steps=event["step"], mfu=event.get("mfu"),
                               tokens_per_second=event.get("tokens_per_second"), val_bpb=state.val_bpb)


class Display:
    """A rich progress bar: step, loss, tokens/s, $ so far, ETA. Silent with --json."""

    def __init__(self, run_id: int, req: Request, plan: dict):
        self.quiet = req.quiet
        self.total = req.probe or plan["iterations"]
        self.label = f"#{run_id} {req.title or _default_title(req)}"
        self.rate = plan["usd_per_hour"] or 0.0
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
