"""The trainer's Result is the one list of a run's result fields: the ledger row, its exports and promoted
presets follow it, so a new field is added in one place."""
import json
from dataclasses import dataclass

from typer.testing import CliRunner

from nanolaunch.cli import app
from nanolaunch.config import RunConfig
from nanolaunch.events import RunState
from nanolaunch.ledger import Ledger, export_columns, export_row
from nanolaunch.session import Ended, outcome
from trainer import events


def test_a_new_result_field_reaches_the_row_its_export_and_a_promoted_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path / "nl"))

    @dataclass
    class Extended(events.Result):  # the one edit a new field takes
        tokens_seen: float | None = events.figure(preset=True)

    monkeypatch.setattr(events, "Result", Extended)
    # The trainer reports it; the launcher reads the event line as it follows the output.
    sent = Extended(status="ok", steps=3, val_bpb=1.5, tokens_seen=12288.0)
    state = RunState()
    state.feed("some log prefix " + json.dumps(events.make("result", **sent.record())))
    result = outcome(state, Ended(exit_code=0), tmp_path / "train.log")
    assert result.tokens_seen == 12288.0

    ledger = Ledger()
    config = RunConfig.build(depth=2, gpu="cpu", iterations=3).to_dict()
    run_id = ledger.add(project="p", title="t", kind="run", config=config, backend="local", status="running",
                        gpu="cpu", gpu_count=1, nodes=1)
    ledger.finish(run_id, result.status, result)
    row = ledger.get(run_id)
    assert row["tokens_seen"] == 12288.0 and row["val_bpb"] == 1.5  # in the row, without a migration of its own
    assert "tokens_seen" in export_columns() and export_row(row)["tokens_seen"] == 12288.0

    promoted = CliRunner().invoke(app, ["preset", "promote", str(run_id), "--name", "with_tokens_seen"])
    assert promoted.exit_code == 0, promoted.output
    shown = CliRunner().invoke(app, ["preset", "show", "with_tokens_seen", "--json"])
    assert json.loads(shown.stdout)["results"]["tokens_seen"] == 12288.0


def test_unknown_fields_of_a_newer_trainer_are_left_out_and_nothing_is_lost_in_the_ledger(tmp_path, monkeypatch):
    """A result from a newer trainer (a field this launcher does not know) still closes the row."""
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path / "nl"))
    result = events.Result.of({"status": "ok", "val_bpb": 1.2, "from_the_future": 7})
    assert result.status == "ok" and not hasattr(result, "from_the_future")
    ledger = Ledger()
    run_id = ledger.add(kind="run", config={}, backend="local", status="running")
    ledger.finish(run_id, "ok", {"status": "ok", "val_bpb": 1.2, "from_the_future": 7})
    assert ledger.get(run_id)["val_bpb"] == 1.2
