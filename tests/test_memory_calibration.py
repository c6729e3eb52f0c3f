"""The CPU peak-memory model against the real trainer's own peak-memory report (docs/memory.md).

Each configuration of bench/memory_sweep.py's test grid is a real `python -m trainer.train --probe` subprocess
in what the CPU model describes (fp32, eager, fused loss; pinned, since `--dtype auto` is bf16 where a CPU has
native bf16), on synthetic data, as long as the probes the constants were fitted to; its result event's
peak_memory_gib (the process's peak RSS) must be within ±15% of nanolaunch.memory.estimate(..., "cpu") with
Newton–Schulz in the precision the trainer chooses on this CPU. Two trainers run at a time.
"""
import os
import statistics
from concurrent.futures import ThreadPoolExecutor

from bench.memory_sweep import STEPS, TEST_GRID, measure, ns_bytes_here, predict

TOLERANCE = 0.15


def test_grid_spans_the_required_ranges():
    depths, batches, seqs = ({c[i] for c in TEST_GRID} for i in range(3))
    assert len(set(TEST_GRID)) >= 12
    assert (min(depths), max(depths)) == (2, 8) and len(depths) >= 4
    assert (min(batches), max(batches)) == (1, 32)
    assert (min(seqs), max(seqs)) == (128, 1024)


def test_predicted_peak_within_15_percent_of_measured(tmp_path):
    jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    order = sorted(TEST_GRID, key=lambda c: -c[0] ** 2 * c[1] * c[2])  # longest first: the two workers end together
    with ThreadPoolExecutor(jobs) as pool:
        peaks = dict(zip(order, pool.map(lambda c: measure(*c, tmp_path), order)))
    ns_bytes = ns_bytes_here()
    lines = [f"{'depth':>5} {'batch':>5} {'seq':>5} {'vocab':>6} {'predicted':>9} {'measured':>9} {'error':>7}"]
    errors = []
    for cfg in TEST_GRID:
        predicted = predict(*cfg, ns_bytes).total_gib
        err = predicted / peaks[cfg] - 1
        errors.append(abs(err))
        flag = "" if abs(err) <= TOLERANCE else "  <-- outside ±15%"
        lines.append("{:>5} {:>5} {:>5} {:>6}".format(*cfg) + f" {predicted:>9.3f} {peaks[cfg]:>9.3f} {err:>+7.1%}{flag}")
    lines.append(f"max |error| {max(errors):.1%}, median {statistics.median(errors):.1%} ({STEPS}-step probes, "
                 f"Newton–Schulz {'bf16' if ns_bytes == 2 else 'fp32'})")
    table = "\n".join(lines)
    print(table)
    assert max(errors) <= TOLERANCE, "predicted vs measured peak memory (GiB):\n" + table
