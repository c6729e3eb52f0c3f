"""`nanolaunch ledger` as the cost table of a baseline search: filters, sort, totals, exports and --compare."""
import csv
import datetime
import json

import pytest

from conftest import nl


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("table")
    for args in (["d12", "--gpu", "H100:1", "--title", "a", "--project", "p1", "--wall-minutes", "60", "--cost", "3",
                  "--val-bpb", "0.9"],
                 ["d12", "--gpu", "H100:1", "--title", "b", "--project", "p1", "--wall-minutes", "30", "--cost", "2",
                  "--val-bpb", "0.95"],
                 ["d20", "--gpu", "H100:8", "--title", "c", "--project", "p2", "--wall-minutes", "60", "--cost", "30",
                  "--val-bpb", "0.92"],
                 ["d12", "--gpu", "A100:1", "--title", "probe", "--kind", "dry", "--wall-minutes", "5", "--cost",
                  "0.25"],
                 ["d12", "--gpu", "A100:1", "--title", "oom", "--status", "oom", "--wall-minutes", "1", "--cost",
                  "0.05"]):
        r = nl(home, "ledger", "add", *args)
        assert r.returncode == 0, r.stderr
    return home


def rows(home, *args) -> list[dict]:
    r = nl(home, "ledger", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_filters_and_sort(home):
    assert [r["title"] for r in rows(home, "--kind", "run", "--sort", "-cost_usd")] == ["c", "a", "b", "oom"]
    assert [r["title"] for r in rows(home, "--gpu", "a100")] == ["probe", "oom"]
    assert [r["title"] for r in rows(home, "--status", "oom")] == ["oom"]
    assert [r["title"] for r in rows(home, "--project", "p1", "--sort", "val_bpb")] == ["a", "b"]
    assert [r["title"] for r in rows(home, "--data", "fineweb")] == ["a", "b", "c", "probe", "oom"]
    today = datetime.datetime.now(datetime.timezone.utc).date()
    assert len(rows(home, "--since", today.isoformat())) == 5
    assert rows(home, "--since", (today + datetime.timedelta(days=2)).isoformat()) == []
    for bad, says in ((["--sort", "title"], "--sort must be one of"), (["--kind", "runs"], "--kind must be run or dry"),
                      (["--status", "fine"], "--status must be one of"), (["--since", "yesterday"], "--since must be")):
        r = nl(home, "ledger", *bad)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_totals_per_project_and_in_all(home):
    totals = json.loads(nl(home, "ledger", "--totals", "--json").stdout)
    assert totals["p1"] == {"runs": 2, "probes": 0, "wall_seconds": 5400.0, "cost_usd": 5.0, "best_val_bpb": 0.9}
    assert totals["all"]["runs"] == 4 and totals["all"]["probes"] == 1
    assert totals["all"]["cost_usd"] == pytest.approx(35.3) and totals["all"]["best_val_bpb"] == 0.9
    table = nl(home, "ledger").stdout
    assert "all projects" in table and "$35.30" in table
    markdown = nl(home, "ledger", "--markdown").stdout
    assert "| all projects | 4 | 1 |" in markdown


def test_csv_has_iso_times_and_a_total_row(home, tmp_path):
    assert nl(home, "ledger", "--csv", tmp_path / "t.csv", "--kind", "run").returncode == 0
    lines = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [x["title"] for x in lines[:-1]] == ["a", "b", "c", "oom"]
    assert datetime.datetime.fromisoformat(lines[0]["started_at"]).tzinfo is not None
    assert lines[-1]["id"] == "total" and float(lines[-1]["cost_usd"]) == pytest.approx(35.05)


def test_compare_puts_cost_against_val_bpb_on_the_same_data(home):
    compared = json.loads(nl(home, "ledger", "--compare", "--json").stdout)
    # finished runs only, cheapest first; c cost ten times a and did worse: not on the frontier
    assert [(r["title"], r["frontier"]) for r in compared] == [("b", True), ("a", True), ("c", False)]
    shown = nl(home, "ledger", "--compare").stdout
    assert "gzip -9" in shown and "cheapest first" in shown
