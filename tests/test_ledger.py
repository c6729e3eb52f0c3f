"""The ledger: migrations, concurrent writers, and rows that are never half-written."""
import multiprocessing as mp
import sqlite3

import pytest

from nanolaunch.ledger import MIGRATIONS, Ledger


def _writer(path, worker, n):
    ledger = Ledger(path)
    for i in range(n):
        run_id = ledger.add(project=f"p{worker}", title=f"w{worker}-{i}", kind="dry", config={"depth": 2},
                            backend="local", status="running", usd_per_hour=3.6)
        ledger.finish(run_id, "ok", {"val_bpb": 1.0 + i, "mfu": None, "steps": i})
    ledger.close()


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = Ledger(path).rows()
    assert len(rows) == 400
    assert {r["title"] for r in rows} == {f"w{w}-{i}" for w in range(8) for i in range(50)}
    assert all(r["status"] == "ok" and r["cost_usd"] is not None for r in rows)


def test_migrations_apply_once_and_are_recorded(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    Ledger(path).close()
    names = [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM migrations")]
    assert names == [name for name, _ in MIGRATIONS]


def test_finish_computes_wall_and_cost_from_the_recorded_rate(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    run_id = ledger.add(kind="run", config={}, backend="local", status="running", usd_per_hour=36.0,
                        started_at=1000.0)
    ledger.finish(run_id, "ok", {"val_bpb": 0.9, "steps": 10}, ended_at=1100.0)
    row = ledger.get(run_id)
    assert row["wall_seconds"] == 100 and row["cost_usd"] == pytest.approx(1.0)
    assert row["val_bpb"] == 0.9 and row["config"] == {}


def test_unknown_columns_and_statuses_are_refused(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    with pytest.raises(ValueError):
        ledger.add(kind="run", config={}, backend="local", status="running", nonsense=1)
    with pytest.raises(ValueError):
        ledger.add(kind="run", config={}, backend="local", status="great")
    assert ledger.rows() == []


def test_a_file_that_is_not_a_ledger_gives_a_clean_error(tmp_path):
    from nanolaunch.errors import NanolaunchError
    bad = tmp_path / "ledger.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NanolaunchError, match="cannot open the ledger"):
        Ledger(bad)
