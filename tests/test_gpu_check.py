"""bench/gpu_check.py, the script for the day a GPU is lent, runs here in its reduced CPU mode and says so."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_reduced_on_cpu_and_says_it_needs_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the real figures need a GPU" in done.stderr
    report = json.loads(out.read_text())
    assert report["mode"].startswith("cpu (reduced")
    assert report["configs"] and all(r["status"] == "ok" and r["allocated_gib"] > 0 for r in report["configs"])
    assert all("counted_allocated_gib" in r and "per_rank_of_8_gib" in r for r in report["configs"])
