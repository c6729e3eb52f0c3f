"""The CPU peak-memory model against the real trainer's own peak-memory report (docs/memory.md).

Each configuration is a real `python -m trainer.train --probe` subprocess in what the CPU model describes
(fp32, eager, fused loss; pinned, since `--dtype auto` is bf16 where a CPU has native bf16), on synthetic
data; its result event's peak_memory_gib (the process's peak RSS) must be within ±15% of
nanolaunch.memory.estimate(..., "cpu"). Two trainers run at a time.
"""
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nanolaunch import memory
from trainer.arithmetic import ModelShape

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 0.15
STEPS = 4  # the peak RSS grows over the first steps (glibc keeps freed heap); near its plateau by step 4 here
HEAD_DIM = 64
# (depth, device batch, seq len, vocab): depth 2–8, batch 1–32, seq 128–1024; cheap ones (bench/memory_sweep.py)
CONFIGS = [
    (2, 1, 128, 4096), (2, 32, 128, 4096), (2, 32, 256, 4096), (2, 8, 1024, 4096), (2, 2, 512, 65536),
    (4, 4, 256, 4096), (4, 16, 128, 4096), (4, 1, 1024, 4096),
    (6, 2, 256, 4096), (6, 8, 128, 4096), (6, 1, 1024, 4096),
    (8, 1, 128, 4096), (8, 4, 256, 4096), (8, 2, 512, 4096),
]


def measured_peak(cfg, run_dir: Path) -> float:
    depth, batch, seq, vocab = cfg
    cmd = [sys.executable, "-m", "trainer.train", "--depth", depth, "--seq-len", seq, "--device-batch", batch,
           "--total-batch", batch * seq, "--vocab-size", vocab, "--head-dim", HEAD_DIM, "--probe", STEPS,
           "--data", "synthetic", "--eval-tokens", batch * seq, "--threads", 1, "--dtype", "fp32",
           "--run-dir", run_dir]
    out = subprocess.run(list(map(str, cmd)), cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    results = [json.loads(line) for line in out.stdout.splitlines()
               if line.startswith("{") and '"event": "result"' in line]
    assert out.returncode == 0 and results and results[-1]["status"] == "ok", (cfg, out.stderr[-2000:])
    return results[-1]["peak_memory_gib"]


def test_grid_spans_the_required_ranges():
    depths, batches, seqs = ({c[i] for c in CONFIGS} for i in range(3))
    assert len(set(CONFIGS)) >= 12
    assert (min(depths), max(depths)) == (2, 8) and len(depths) >= 4
    assert (min(batches), max(batches)) == (1, 32)
    assert (min(seqs), max(seqs)) == (128, 1024)


def test_predicted_peak_within_15_percent_of_measured(tmp_path):
    jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    order = sorted(CONFIGS, key=lambda c: -c[0] ** 2 * c[1] * c[2])  # longest first: the two workers end together
    with ThreadPoolExecutor(jobs) as pool:
        peaks = dict(zip(order, pool.map(lambda c: measured_peak(c, tmp_path / "d{}_b{}_t{}_v{}".format(*c)), order)))
    lines = [f"{'depth':>5} {'batch':>5} {'seq':>5} {'vocab':>6} {'predicted':>9} {'measured':>9} {'error':>7}"]
    errors = []
    for cfg in CONFIGS:
        depth, batch, seq, vocab = cfg
        predicted = memory.estimate(ModelShape(depth, vocab, seq, HEAD_DIM), batch, 24.0, "cpu",
                                    real_data=False).total_gib
        err = predicted / peaks[cfg] - 1
        errors.append(abs(err))
        flag = "" if abs(err) <= TOLERANCE else "  <-- outside ±15%"
        lines.append(f"{depth:>5} {batch:>5} {seq:>5} {vocab:>6} {predicted:>9.3f} {peaks[cfg]:>9.3f} {err:>+7.1%}{flag}")
    lines.append(f"max |error| {max(errors):.1%}, median {statistics.median(errors):.1%} ({STEPS}-step probes)")
    table = "\n".join(lines)
    print(table)
    assert max(errors) <= TOLERANCE, "predicted vs measured peak memory (GiB):\n" + table
