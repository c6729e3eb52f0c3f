"""The life of one run or probe, written once for every backend: work out its plan, open its ledger row, write
its task, follow its output, decide its outcome and finish the row with a typed Result.

A backend is transport only: it starts the task somewhere, hands each output line to `Session.feed` and says
how the job ended (`Ended`); the session does the rest."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from nanolaunch.config import RunConfig
from nanolaunch.events import RunState
from nanolaunch.ledger import Ledger
from nanolaunch.presets import Preset
from nanolaunch.progress import Display
from nanolaunch.runs import LOG_NAME, git_commit, run_dir
from nanolaunch.task import Placement, render, to_yaml
from trainer import events
from trainer.events import EXIT_STATUS, trainer_exit_code

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

    @property
    def label(self) -> str:
        return self.title or (f"{self.preset.name if self.preset else f'd{self.config.train.depth}'} "
                              f"{f'probe b{self.config.train.device_batch}' if self.kind == 'dry' else 'run'}")


def derived(config: RunConfig, preset: Preset | None, probe: bool = False) -> dict:
    """The plan a run is launched with (and later compared against): the ledger's own measurements first."""
    from nanolaunch import calibration
    from nanolaunch.planner import plan as make_plan

    rows = calibration.ledger_rows()
    measured, source = calibration.measured_for(config, preset, rows, probe=probe)
    return make_plan(config, measured=measured, measured_from=source, probe=probe,
                     memory_measured=calibration.measured_memory(rows, config))


def for_run(req: Request, plan: dict, place: Placement) -> RunConfig:
    """The one builder of what a backend hands the trainer: the request's config with this run's folder,
    data cache, probe, memory cap, budget (at the plan's price) and W&B project. Runs always resume: a
    restarted job continues from its newest complete checkpoint. Shards kept in the store stay for later
    runs; shards on a node's own disk are deleted once read (they die with the node anyway)."""
    return req.config.replace(
        run_dir=place.run_dir, data_dir=place.data_dir, store_dir=place.store_dir,
        keep_data=place.store_dir == place.data_dir, resume=req.probe is None, probe=req.probe,
        memory_limit_gib=req.memory_limit_gib, max_cost=req.max_cost,
        price_per_hour=(plan["usd_per_hour"] or 0.0) if req.max_cost is not None else None,
        wandb_project=req.wandb_project)


@dataclass(frozen=True)
class Ended:
    """How the transport saw the job end; the session reads the rest from the output it was fed."""
    exit_code: int | None = None  # the run command's own code, where the transport knows it
    setup_exit_code: int | None = None  # the setup command's, when setup failed
    cancelled: bool = False  # we stopped it (Ctrl-C)
    sky_status: int | None = None  # SkyPilot's job status code (sky.exceptions.JobExitCode), when that is all
    result_file: Path | None = None  # where the trainer wrote result.json, when it is on this machine


SKY_JOB_SUCCEEDED, SKY_JOB_FAILED, SKY_JOB_CANCELLED = 0, 100, 103
SKY_JOB_CODES = {0: "SUCCEEDED", 100: "FAILED", 101: "NOT_FINISHED", 102: "NOT_FOUND", 103: "CANCELLED"}


class Session:
    """One run or probe, from its ledger row opened to its ledger row finished."""

    def __init__(self, req: Request, ledger: Ledger, backend: str, *, nodes: int, plan: dict | None = None,
                 **row_fields):
        self.req, self.ledger = req, ledger
        self.plan = plan or derived(req.config, req.preset, probe=req.probe is not None)
        self.run_id = ledger.add(
            project=req.project, title=req.label, kind=req.kind, preset=req.preset.name if req.preset else None,
            config=req.config.to_dict(), plan=self.plan, backend=backend, gpu=req.config.accelerator.name,
            gpu_count=req.config.gpus_per_node, nodes=nodes, status="running", usd_per_hour=self.plan["usd_per_hour"],
            price_source=self.plan["price_source"], git_commit=git_commit(), **row_fields)
        self.folder = run_dir(self.run_id)
        self.log_path = self.folder / LOG_NAME
        self.display = Display(f"#{self.run_id} {req.label}", req.probe or self.plan["iterations"],
                               self.plan["usd_per_hour"] or 0.0, quiet=req.quiet)
        self.follower = Follower(ledger, self.run_id, self.display)

    @property
    def state(self) -> RunState:
        return self.follower.state

    def task(self, place: Placement, name: str) -> tuple[dict, RunConfig]:
        """The filled task for this run, kept next to its log with the config (secrets never in either)."""
        config = for_run(self.req, self.plan, place)
        task = render(config, place.opts, name=name)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "task.yaml").write_text(to_yaml(task))
        (self.folder / "config.json").write_text(json.dumps(config.train.to_dict(), indent=2))
        self.ledger.update(self.run_id, run_dir=place.run_dir, log_path=str(self.log_path))
        return task, config

    def feed(self, line: str) -> None:
        self.follower(line)

    def outcome(self, ended: Ended) -> events.Result:
        return outcome(self.state, ended, self.log_path)

    def failed(self, error: BaseException | str, status: str = "crashed") -> events.Result:
        """A run that ended without the trainer's result: stopped here, or failed in the transport."""
        return events.Result.of({**partial(self.state), "error": str(error)}, status)

    def finish(self, result: events.Result) -> dict:
        self.ledger.finish(self.run_id, result.status, result)
        return self.ledger.get(self.run_id)


def outcome(state: RunState, ended: Ended, log_path: Path) -> events.Result:
    """The trainer's own result when it reported one; else the exit code (the trainer's own, from torchrun's
    summary, before the run command's), with the log's last lines."""
    from nanolaunch.runs import read_result

    record = read_result(ended.result_file) if ended.result_file else None
    record = record or state.result
    if record is not None:
        result = events.Result.of(record)
        if result.status == "crashed" and not result.error:
            result.error = f"exit {ended.exit_code}: {log_tail(log_path)}"
        return result
    code = ended.exit_code
    if code != 0:  # failed or unknown: torchrun exits 1 for any failed worker; its summary names the code
        try:
            code = trainer_exit_code(log_path.read_text(errors="replace")) or code
        except OSError:
            pass
    if ended.setup_exit_code is not None:
        status, why = "crashed", f"setup failed (exit {ended.setup_exit_code})"
    elif ended.cancelled:
        status, why = "cancelled", "interrupted"
    elif code:
        status, why = EXIT_STATUS.get(code, "crashed"), f"exit {code}"
    elif ended.sky_status == SKY_JOB_CANCELLED:
        status, why = "cancelled", "SkyPilot cancelled the job"
    elif code == 0 or ended.sky_status == SKY_JOB_SUCCEEDED:
        status, why = "crashed", "the job succeeded but the trainer reported no result"
    else:
        status, why = "crashed", f"SkyPilot job status {SKY_JOB_CODES.get(ended.sky_status, ended.sky_status)}"
    return events.Result.of({**partial(state), "error": f"{why}: {log_tail(log_path)}"}, status)


def partial(state: RunState) -> dict:
    """What the output showed before it stopped."""
    return {"val_bpb": state.val_bpb, "steps": state.last_step["step"] if state.last_step else None}


ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRANSPORT_LINE = re.compile(r"srun: error|Job finished \(status|failed with return code|setup failed with return code")


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines the job itself printed, on one line (SkyPilot's own status lines and colours left out)."""
    try:
        text = [ANSI.sub("", x).strip() for x in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    own = [x for x in text if x and not TRANSPORT_LINE.search(x)]
    return " | ".join(own[-lines:])[-1000:] or "(no output)"


class Follower:
    """Events from the job's output: the live row and display, and each trainer restart as a recovery."""

    def __init__(self, ledger: Ledger, run_id: int, display: Display | None, known_starts: int = 1):
        self.ledger, self.run_id, self.display = ledger, run_id, display
        self.state = RunState()
        self.starts = 0
        self.known_starts = known_starts  # starts already in the ledger (a reattach replays the whole log)
        self.last_write = 0.0

    def __call__(self, line: str) -> None:
        last_step = self.state.last_step
        event = self.state.feed(line)
        if event is None:
            return
        if event["event"] == "start":
            self.starts += 1
            if self.starts > self.known_starts:  # it started again: its node was preempted and SkyPilot recovered it
                after = f"after step {last_step['step']}" if last_step else "before the first step"
                self.ledger.add_event(self.run_id, "preempted", after)
                self.ledger.add_event(self.run_id, "recovered",
                                      f"resumed from step {event.get('resumed_from_step') or 0}")
                self.ledger.update(self.run_id, recoveries=self.starts - 1)
        self._live(event)

    def _live(self, event: dict) -> None:
        """The display, and the row kept current, written at most every LEDGER_UPDATE_SECONDS."""
        if self.display is not None:
            self.display.update(event, self.state)
        if event["event"] == "wandb" and event.get("url"):
            self.ledger.update(self.run_id, wandb_url=event["url"])
        now = time.monotonic()
        if event["event"] == "step" and now - self.last_write > LEDGER_UPDATE_SECONDS:
            self.last_write = now
            self.ledger.update(self.run_id, steps=event["step"], mfu=event.get("mfu"),
                               tokens_per_second=event.get("tokens_per_second"), val_bpb=self.state.val_bpb)

    def settle_recoveries(self, counted_by_skypilot: int) -> None:
        """SkyPilot's count stands where the stream showed fewer restarts (an attempt lost before it printed)."""
        seen = max(self.starts - 1, self.ledger.get(self.run_id)["recoveries"] or 0)
        if counted_by_skypilot > seen:
            self.ledger.add_event(self.run_id, "recovered", f"SkyPilot recovered the job {counted_by_skypilot} "
                                                            f"time(s); {seen} seen in its output")
            self.ledger.update(self.run_id, recoveries=counted_by_skypilot)
