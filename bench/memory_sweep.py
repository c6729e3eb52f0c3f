"""Measured vs predicted peak memory of the CPU trainer over depth, device batch and sequence length.

    .venv/bin/python bench/memory_sweep.py [--grid full|test] [--steps 8] [--jobs 2] [--csv OUT] [--fit]
    .venv/bin/python bench/memory_sweep.py --from-csv nanolaunch/data/memory_cpu.csv --fit   # refit only

Every measured figure is the trainer's own report: `python -m trainer.train --probe N` on synthetic data
with what the CPU model describes (--dtype fp32, compile off, fused loss on), one micro-step per
optimizer step, 1 torch thread per process; its result event's peak_memory_gib is the process's peak
resident set size. The prediction is nanolaunch.memory.estimate(..., "cpu"). --fit prints the least-squares
CPU constants (docs/memory.md): the weights, grads, optimizer-state, logit and Muon-step terms are counted, the
activation and retained bytes, the step's heap factor, the overlap and the overhead are fitted (relative error).
The peak RSS grows over the first steps (glibc keeps freed heap chunks) and is flat from about step 6;
the constants are fitted to 8-step probes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nanolaunch import memory  # noqa: E402
from trainer.arithmetic import ModelShape  # noqa: E402

HEAD_DIM = 64  # the CPU presets' head_dim
STEPS = 8  # probe steps per run: the peak RSS is flat from about step 6, and the constants are fitted to this
GIB = 2**30

# (depth, device_batch, seq_len, vocab), depth 2–8, batch 1–32, seq 128–1024; vocab 4,096 (cpu_demo) and
# some 65,536 (the default), where the logits dominate. Fits in 8 GiB; a few minutes per depth-8 run.
TEST_GRID = [  # the configurations tests/test_memory_calibration.py measures (cheap ones)
    (2, 1, 128, 4096), (2, 32, 128, 4096), (2, 32, 256, 4096), (2, 8, 1024, 4096), (2, 2, 512, 65536),
    (4, 4, 256, 4096), (4, 16, 128, 4096), (4, 1, 1024, 4096),
    (6, 2, 256, 4096), (6, 8, 128, 4096), (6, 1, 1024, 4096),
    (8, 1, 128, 4096), (8, 4, 256, 4096), (8, 2, 512, 4096),
]
FULL_GRID = TEST_GRID + [
    (2, 8, 256, 4096), (2, 16, 512, 4096), (2, 16, 1024, 4096), (2, 32, 1024, 4096), (2, 4, 512, 65536),
    (2, 8, 1024, 65536),
    (4, 4, 128, 4096), (4, 8, 512, 4096), (4, 16, 256, 4096), (4, 32, 512, 4096), (4, 16, 1024, 4096),
    (4, 8, 256, 65536), (4, 4, 1024, 65536),
    (6, 8, 1024, 4096), (6, 16, 512, 4096), (6, 32, 256, 4096), (6, 32, 1024, 4096),
    (8, 4, 512, 4096), (8, 16, 256, 4096), (8, 8, 1024, 4096), (8, 32, 512, 4096), (8, 16, 1024, 4096),
    (8, 8, 512, 65536),
]


def trainer_cmd(depth: int, batch: int, seq: int, vocab: int, run_dir: Path, steps: int, threads: int = 1,
                accum: int = 1) -> list[str]:
    return [sys.executable, "-m", "trainer.train", "--depth", str(depth), "--seq-len", str(seq),
            "--device-batch", str(batch), "--total-batch", str(batch * seq * accum), "--vocab-size", str(vocab),
            "--head-dim", str(HEAD_DIM), "--probe", str(steps), "--data", "synthetic",
            "--eval-tokens", str(batch * seq), "--run-dir", str(run_dir), "--threads", str(threads),
            "--dtype", "fp32"]


def measure(depth: int, batch: int, seq: int, vocab: int, work: Path, steps: int = STEPS, threads: int = 1,
            accum: int = 1, timeout: float = 1800) -> float:
    """The trainer's own peak_memory_gib over a probe of `steps` optimizer steps."""
    run_dir = Path(work) / f"d{depth}_b{batch}_t{seq}_v{vocab}_s{steps}_a{accum}_th{threads}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(trainer_cmd(depth, batch, seq, vocab, run_dir, steps, threads, accum), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line) for line in out.stdout.splitlines()
               if line.startswith("{") and '"event": "result"' in line]
    if out.returncode != 0 or not results or results[-1].get("status") != "ok":
        tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"trainer d{depth} b{batch} t{seq} v{vocab} failed (exit {out.returncode}): {tail[0]}")
    return float(results[-1]["peak_memory_gib"])


def ns_bytes_here() -> int:
    """Bytes per element of Newton–Schulz's buffers in the trainer on this CPU: bf16 where bf16 products are
    native, fp32 where emulated (trainer/precision.py decides; the planner's _bf16_native mirrors it)."""
    import torch
    from trainer.precision import bf16_native
    return 2 if bf16_native(torch.device("cpu")).bf16 else 4


def predict(depth: int, batch: int, seq: int, vocab: int, ns_bytes: int) -> memory.MemoryEstimate:
    return memory.estimate(ModelShape(depth, vocab, seq, HEAD_DIM), batch, 64.0, "cpu", real_data=False,
                           ns_bytes=ns_bytes)


def row(cfg: tuple, measured: float, ns_bytes: int, seconds: float | None = None) -> dict:
    d, b, t, v = cfg
    est = predict(*cfg, ns_bytes)
    return dict(depth=d, device_batch=b, seq_len=t, vocab=v, ns_bytes=ns_bytes, measured_gib=measured,
                predicted_gib=round(est.total_gib, 4), error=round(est.total_gib / measured - 1, 4),
                seconds=None if seconds is None else round(seconds, 1))


def sweep(grid, work: Path, jobs: int = 2, **kw) -> list[dict]:
    """Measure every configuration, `jobs` trainer processes at a time (longest first)."""
    ns_bytes = ns_bytes_here()

    def one(cfg):
        t0 = time.time()
        return row(cfg, measure(*cfg, work, **kw), ns_bytes, time.time() - t0)
    order = sorted(grid, key=lambda c: -c[0] ** 2 * c[1] * c[2])  # ~ the step's work
    with ThreadPoolExecutor(jobs) as pool:
        done = dict(zip(order, pool.map(one, order)))
    return [done[c] for c in grid]


def table(rows: list[dict]) -> str:
    lines = [f"{'depth':>5} {'batch':>5} {'seq':>5} {'vocab':>6} {'predicted':>9} {'measured':>9} {'error':>7}"]
    for r in rows:
        lines.append(f"{r['depth']:>5} {r['device_batch']:>5} {r['seq_len']:>5} {r['vocab']:>6} "
                     f"{r['predicted_gib']:>9.3f} {r['measured_gib']:>9.3f} {r['error']:>+7.1%}")
    errs = [abs(r["error"]) for r in rows]
    lines.append(f"max |error| {max(errs):.1%}, median |error| {statistics.median(errs):.1%} over {len(rows)} configs")
    return "\n".join(lines)


def counted(rows: list[dict], ns_bytes: int):
    """Per row: the model's estimate, the step's temporaries as counted (before the heap factor), the measured GiB."""
    import numpy as np
    est = [predict(r["depth"], r["device_batch"], r["seq_len"], r["vocab"], ns_bytes) for r in rows]
    return (est, np.array([e.optimizer_step_gib / e.step_heap for e in est]),
            np.array([r["measured_gib"] for r in rows]))


def fit(rows: list[dict], ns_bytes: int) -> dict:
    """CPU constants minimising the squared relative error over `rows`, with every counted term of
    memory.estimate held exact (weights, grads, optimizer state, logits, Muon's step at `ns_bytes`): a grid over
    activation bytes a, retained bytes r, the step's heap factor f and the overlap k, the overhead in closed form
    for each point."""
    import numpy as np
    est, counted_step, m = counted(rows, ns_bytes)
    shapes = [ModelShape(r["depth"], r["vocab"], r["seq_len"], HEAD_DIM) for r in rows]
    tokens = [r["device_batch"] * r["seq_len"] for r in rows]
    fixed = np.array([e.weights_gib + e.grads_gib + e.optimizer_gib for e in est])
    lc = np.array([n * s.depth * s.model_dim / GIB for n, s in zip(tokens, shapes)])
    heap = np.array([4 * n * s.model_dim < memory.MMAP_THRESHOLD_MAX for n, s in zip(tokens, shapes)], dtype=float)
    logits = np.array([e.logits_gib for e in est])
    R = np.arange(0.0, 80.0, 1.0)[:, None, None]  # retained bytes
    F = np.arange(1.0, 4.01, 0.05)[None, :, None]  # RSS per counted byte of the step's temporaries
    best = None
    for k in np.arange(0.0, 1.01, 0.05):
        for a in np.arange(40.0, 160.0, 1.0):
            fwd = (a + R * heap) * lc + logits
            step = F * counted_step
            x = fixed + np.maximum(fwd, step) + k * np.minimum(fwd, step)
            c = ((1 - x / m) / m).sum(-1) / (1 / m**2).sum()
            err = (c[..., None] + x) / m - 1
            score = (err**2).sum(-1)
            i, j = np.unravel_index(np.argmin(score), score.shape)
            if best is None or score[i, j] < best["score"]:
                best = dict(score=float(score[i, j]), activation_bytes=float(a), retained_bytes=float(R[i, 0, 0]),
                            step_heap=round(float(F[0, j, 0]), 2), overlap=round(float(k), 2),
                            overhead_gib=float(c[i, j]), max_error=float(np.abs(err[i, j]).max()),
                            median_error=float(np.median(np.abs(err[i, j]))))
    return best


def fit_step_heap(rows: list[dict], ns_bytes: int) -> dict:
    """The step's heap factor alone (memory.STEP_HEAP_CPU[ns_bytes]) minimising the squared relative error over
    `rows`, every other constant held at memory.py's: for Newton–Schulz in the other precision."""
    import numpy as np
    est, counted_step, m = counted(rows, ns_bytes)
    base = np.array([e.weights_gib + e.grads_gib + e.optimizer_gib + e.overhead_gib for e in est])
    fwd = np.array([e.forward_gib for e in est])
    F = np.arange(1.0, 6.01, 0.05)[:, None]
    step = F * counted_step
    err = (base + np.maximum(fwd, step) + memory.OVERLAP["cpu"] * np.minimum(fwd, step)) / m - 1
    i = int(np.argmin((err**2).sum(-1)))
    return dict(step_heap=round(float(F[i, 0]), 2), max_error=float(np.abs(err[i]).max()),
                median_error=float(np.median(np.abs(err[i]))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", choices=("full", "test"), default="full")
    p.add_argument("--jobs", type=int, default=2, help="trainer processes at a time")
    p.add_argument("--steps", type=int, default=STEPS, help="probe steps per run")
    p.add_argument("--threads", type=int, default=1, help="torch threads per trainer")
    p.add_argument("--accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--csv", type=Path, help="write the rows here")
    p.add_argument("--from-csv", type=Path, help="take measured_gib from this CSV instead of running the trainer")
    p.add_argument("--fit", action="store_true", help="also print least-squares CPU constants")
    p.add_argument("--fit-step", action="store_true", help="also print the least-squares step heap factor alone "
                   "(the other constants held): for a sweep with Newton–Schulz in the other precision")
    args = p.parse_args()
    t0 = time.time()
    if args.from_csv:
        with open(args.from_csv) as f:
            rows = [row((int(r["depth"]), int(r["device_batch"]), int(r["seq_len"]), int(r["vocab"])),
                        float(r["measured_gib"]), int(r["ns_bytes"]), float(r["seconds"]) if r.get("seconds") else None)
                    for r in csv.DictReader(f)]
    else:
        grid = FULL_GRID if args.grid == "full" else TEST_GRID
        with tempfile.TemporaryDirectory() as work:
            rows = sweep(grid, Path(work), args.jobs, steps=args.steps, threads=args.threads, accum=args.accum)
        print(f"{len(rows)} trainer runs of {args.steps} steps in {time.time() - t0:.0f}s "
              f"({args.jobs} at a time, {args.threads} thread(s) each, {args.accum} micro-step(s) per step)")
    print(table(rows))
    if args.fit:
        f = fit(rows, rows[0]["ns_bytes"])
        print(f"least-squares fit: activation {f['activation_bytes']:g} B, retained {f['retained_bytes']:g} B, "
              f"step heap {f['step_heap']:g}×, overlap {f['overlap']:g}, overhead "
              f"{f['overhead_gib']:.3f} GiB (max error {f['max_error']:.1%}, median {f['median_error']:.1%})")
    if args.fit_step:
        f = fit_step_heap(rows, rows[0]["ns_bytes"])
        print(f"least-squares step heap factor at {rows[0]['ns_bytes']}-byte Newton–Schulz: {f['step_heap']:g}× "
              f"(max error {f['max_error']:.1%}, median {f['median_error']:.1%})")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
