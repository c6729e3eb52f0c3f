"""Promotion: a finished ok run becomes a preset that plans exactly its config; nothing else does."""
import json

import pytest

from conftest import nl


def test_promotion_round_trips_and_never_overwrites(tmp_path):
    added = nl(tmp_path, "ledger", "add", "d6", "--gpu", "H100:8", "--batch", "16", "--wall-minutes", "30",
               "--cost", "15", "--val-bpb", "1.01", "--mfu", "0.41", "--title", "elsewhere", "--json")
    assert added.returncode == 0, added.stderr
    run = json.loads(added.stdout)["id"]
    r = nl(tmp_path, "preset", "promote", str(run), "--name", "h100x8_d6")
    assert r.returncode == 0, r.stderr
    plan = json.loads(nl(tmp_path, "plan", "--preset", "h100x8_d6", "--json").stdout)
    row = json.loads(nl(tmp_path, "ledger", "--json").stdout)[0]
    assert plan["config"]["depth"] == 6 and plan["config"]["device_batch"] == 16 and plan["config"]["gpu"] == "H100:8"
    assert plan["mfu"] == 0.41 and "h100x8_d6" in plan["mfu_source"]  # the measured MFU, with provenance
    shown = json.loads(nl(tmp_path, "preset", "show", "h100x8_d6", "--json").stdout)
    assert shown["provenance"]["run_id"] == str(run) and shown["results"]["val_bpb"] == 1.01
    assert row["id"] == run

    again = nl(tmp_path, "preset", "promote", str(run), "--name", "h100x8_d6")
    assert again.returncode == 2 and "--force" in again.stderr
    assert nl(tmp_path, "preset", "promote", str(run), "--name", "h100x8_d6", "--force").returncode == 0


@pytest.mark.parametrize("status, kind", [("oom", "run"), ("ok", "dry")])
def test_only_finished_ok_runs_are_promoted(tmp_path, status, kind):
    added = nl(tmp_path, "ledger", "add", "d4", "--status", status, "--kind", kind, "--json")
    run = json.loads(added.stdout)["id"]
    r = nl(tmp_path, "preset", "promote", str(run), "--name", "nope")
    assert r.returncode == 2 and "only a finished ok run" in r.stderr
    assert not (tmp_path / "presets" / "nope.toml").exists()


def test_promotion_cannot_take_a_builtin_name(tmp_path):
    run = json.loads(nl(tmp_path, "ledger", "add", "d4", "--json").stdout)["id"]
    r = nl(tmp_path, "preset", "promote", str(run), "--name", "a100_d10")
    assert r.returncode == 2 and "built-in" in r.stderr
