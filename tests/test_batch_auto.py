"""`dry --batch auto` on cpu_demo: the same choice as an exhaustive sweep, with fewer probes, all in the ledger."""
import json

from conftest import nl as run_nl


def nl(home, *args):
    out = run_nl(home, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_auto_matches_the_exhaustive_sweep_with_fewer_probes(tmp_path):
    every = json.loads(nl(tmp_path, "dry", "--preset", "cpu_demo", "--batch", "1,2,4,8,16,32", "--iters", "10",
                          "--local", "--project", "exhaustive", "--json"))
    auto = json.loads(nl(tmp_path, "dry", "--preset", "cpu_demo", "--batch", "auto", "--iters", "10", "--local",
                         "--project", "auto", "--save-preset", "cpu_demo_tuned", "--json"))
    assert [r["device_batch"] for r in every] == [1, 2, 4, 8, 16, 32]
    assert [r["device_batch"] for r in auto] == [32, 16, 8, 4, 2, 1][:len(auto)]  # largest first
    assert len(auto) < len(every)
    (best_every,) = [r["device_batch"] for r in every if r["best"]]
    (best_auto,) = [r["device_batch"] for r in auto if r["best"]]
    assert best_auto == best_every, (every, auto)
    ledger = json.loads(nl(tmp_path, "ledger", "--json"))
    assert {r["id"] for r in ledger} == {r["id"] for r in every + auto}  # both sweeps recorded
    assert all(r["kind"] == "dry" and r["status"] == "ok" for r in ledger)
    saved = json.loads(nl(tmp_path, "preset", "show", "cpu_demo_tuned", "--json"))
    assert saved["config"]["device_batch"] == best_auto and saved["config"]["depth"] == 2
    assert saved["results"]["tokens_per_second"] > 0 and "probes #" in saved["provenance"]["source"]
