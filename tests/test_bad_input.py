"""A cost table you can trust: every bad input is one line on stderr, a non-zero exit, and nothing changed;
corrections are events (issue 24). Each case runs the real CLI in a process of its own."""
import json
import sqlite3

import pytest

from conftest import nl


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def ledger_rows(home) -> list[dict]:
    return json.loads(nl(home, "ledger", "--all", "--json").stdout)


def snapshot(home) -> tuple:
    """The ledger's rows and events, and the files under home: what a refused command must leave alone."""
    db = home / "ledger.db"
    rows = events = None
    if db.exists():
        con = sqlite3.connect(db)
        rows = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
        events = con.execute("SELECT * FROM run_events ORDER BY id").fetchall()
        con.close()
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "ledger.db" not in p.name)
    return rows, events, files


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    r = nl(home, "ledger", "add", "d12", "--gpu", "H100:1", "--title", "seed row", "--wall-minutes", "60",
           "--cost", "2.5", "--val-bpb", "0.95", "--json")
    assert r.returncode == 0, r.stderr
    return home


@pytest.mark.parametrize("args,says", [
    (["ledger", "add", "d12", "--gpu", "H100:1", "--cost", "inf"], "--cost must be a finite number in [0, ∞), got inf"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--cost", "nan"], "--cost must be a finite number"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--mfu", "5"], "--mfu must be a finite number in (0, 1], got 5"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--val-bpb", "-1"], "--val-bpb must be a finite number in (0, ∞)"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--peak-memory-gib", "-3"], "--peak-memory-gib must be"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--wall-minutes", "-1"], "--wall-minutes must be"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--project", ""], "--project must not be empty"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--title", "two\nlines"], "--title must be one line"),
    (["ledger", "add", "d12", "--gpu", "H100:1", "--title", "x" * 201], "--title must be one line"),
    (["ledger", "edit", "1", "--cost", "-2"], "--cost must be a finite number in [0, ∞)"),
    (["ledger", "edit", "1"], "nothing to change"),
    (["ledger", "rm", "7"], "no run #7 in the ledger"),
    (["show", "99999999999999999999999"], "no run #99999999999999999999999"),
    (["ledger", "--csv", "/nonexistent-folder/rows.csv"], "--csv /nonexistent-folder/rows.csv: the folder"),
    (["show", "1", "--plot", "/nonexistent-folder/c.png"], "--plot /nonexistent-folder/c.png: the folder"),
    (["plan", "d12", "--depth", "4"], "d12 and --depth 4 disagree"),
    (["plan", "d12", "--vocab", "7"], "vocab_size must be at least 257"),
    (["plan", "d12", "--ratio", "1e30"], "ratio must be positive and at most 10,000"),
    (["dry", "--preset", "a100_d10", "--batch", "64"], "batch 64 predicted not to fit on A100:1: try --batch 32"),
])
def test_a_bad_value_is_one_line_and_changes_nothing(home, args, says):
    before = snapshot(home)
    assert says in one_line_error(nl(home, *args))
    assert snapshot(home) == before


def test_an_output_path_that_is_a_folder_is_refused_before_any_work(home, tmp_path):
    assert "is a folder; give a file name" in one_line_error(nl(home, "ledger", "--csv", tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_home_that_cannot_hold_a_ledger_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    assert "cannot create" in one_line_error(nl(tmp_path / "file", "ledger"))
    assert "cannot create" in one_line_error(nl(tmp_path / "file" / "sub", "ledger"))


def test_csv_cells_never_become_formulas(home, tmp_path):
    assert nl(home, "ledger", "add", "d12", "--gpu", "H100:1", "--title", "=HYPERLINK(\"x\")").returncode == 0
    assert nl(home, "ledger", "--csv", tmp_path / "rows.csv").returncode == 0
    text = (tmp_path / "rows.csv").read_text()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text


def test_corrections_and_removals_are_events_and_leave_totals(home):
    r = nl(home, "ledger", "edit", "1", "--cost", "4", "--title", "fixed", "--why", "the bill")
    assert r.returncode == 0, r.stderr
    [row] = ledger_rows(home)
    assert (row["cost_usd"], row["title"], row["usd_per_hour"]) == (4.0, "fixed", 4.0)  # 60 minutes: $4/h
    events = json.loads(nl(home, "show", "1", "--json").stdout)["events"]
    assert events[-1]["kind"] == "edited" and "cost_usd 2.5 → 4.0" in events[-1]["detail"]
    assert events[-1]["detail"].endswith("(the bill)")
    assert nl(home, "ledger", "rm", "1", "--why", "a test row").returncode == 0
    assert ledger_rows(home) == [] and "the ledger is empty" in nl(home, "ledger").stdout
    shown = json.loads(nl(home, "show", "1", "--json").stdout)  # still in the file, with why
    assert shown["events"][-1]["kind"] == "removed" and "a test row" in shown["events"][-1]["detail"]
    assert "was removed already" in one_line_error(nl(home, "ledger", "rm", "1"))


def test_an_old_ledger_is_upgraded_through_the_migrations_with_its_rows(tmp_path):
    from nanolaunch.ledger import MIGRATIONS, Ledger

    path = tmp_path / "ledger.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, sql in MIGRATIONS[:3]:  # a ledger written by a version with three migrations
        con.executescript(sql)
        con.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    con.execute("INSERT INTO runs (project, title, kind, config, backend, status, cost_usd) "
                "VALUES ('p', 'old', 'run', '{}', 'local', 'ok', 1.5)")
    con.commit()
    con.close()
    db = Ledger(path)
    [row] = db.rows()
    assert (row["title"], row["cost_usd"], row["removed_at"], row["device_batch"]) == ("old", 1.5, None, None)
    applied = [r[0] for r in db.db.execute("SELECT name FROM migrations ORDER BY name")]
    assert applied == [name for name, _ in MIGRATIONS]


@pytest.mark.parametrize("flag,value", [("--name", "x; rm -rf ~"), ("--name", "a\nb"), ("--bucket", "b$(id)"),
                                        ("--name", "")])
def test_yaml_names_that_reach_the_node_are_plain(home, flag, value):
    assert f"{flag} must be 1–63 letters" in one_line_error(nl(home, "yaml", "--preset", "a100_d10", flag, value))


def test_promoting_a_hand_added_row_or_a_model_worse_than_gzip_warns(home):
    con = sqlite3.connect(home / "ledger.db")
    con.execute("UPDATE runs SET gzip_bpb = 0.9 WHERE id = 1")  # as a run on text gzip packs better (val_bpb 0.95)
    con.commit()
    con.close()
    r = nl(home, "preset", "promote", "1", "--name", "from_hand")
    assert r.returncode == 0, r.stderr
    assert "added by hand" in r.stderr and "no better than gzip -9 on the same text (0.9000)" in r.stderr
