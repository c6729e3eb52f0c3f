"""The trainer's tokens/s on this CPU at depth 4, seq 256, total batch 4,096, vocab 65,536.

    .venv/bin/python bench/cpu_throughput.py [--runs 3] [--steps 8] [--curve-steps 40] [--work DIR]

Every figure comes from the trainer itself (`python -m trainer.train --probe N --probe-data real`):
its median step time after the first step, as tokens/s. Several runs per setting; the median of
their tokens/s is printed. Settings: fp32 eager, fp32 compiled, and, where the CPU has bf16 dot-product
instructions, bf16 autocast eager and compiled. A loss-curve check trains fp32 and bf16 side by side on
real text and prints both curves, so bf16 is only recommended where it tracks fp32.
(nanochat's own trainer, measured side by side: bench/nanochat_side_by_side.py, docs/benchmarks.md.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPE = ["--depth", "4", "--seq-len", "256", "--total-batch", "4096", "--vocab-size", "65536"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def trainer(args: list[str], timeout: int = 3600) -> tuple[list[dict], float]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "trainer.train", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    events = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0:
        raise SystemExit(f"trainer failed ({out.returncode}): {out.stderr.strip().splitlines()[-1]}")
    return events, time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="probe steps per run (the first is not timed)")
    p.add_argument("--device-batch", type=int, default=16)
    p.add_argument("--curve-steps", type=int, default=40, help="0: skip the bf16 loss-curve check")
    p.add_argument("--work", default="/tmp/nanolaunch-bench", help="corpus and 65,536-token tokenizer cache")
    p.add_argument("--only", nargs="*", help="settings to run, e.g. fp32-eager bf16-compile")
    a = p.parse_args()

    import torch
    cores = len(os.sched_getaffinity(0))
    print(time.strftime("%Y-%m-%d %H:%M:%S"), "(a load average above the core count means the CPU is shared)")
    print(f"machine: {cpu_model()}, {cores} cores, torch {torch.__version__}, bf16 instructions: {has_bf16()}")
    data = ["--data", "stdlib", "--data-dir", Path(a.work) / "data"]
    common = [*SHAPE, "--device-batch", a.device_batch, "--device", "cpu", *data, "--probe-data", "real"]
    trainer([*common, "--probe", 1, "--run-dir", Path(a.work) / "warm"])  # builds corpus + tokenizer once

    settings = {"fp32-eager": ["--dtype", "fp32", "--no-compile"], "fp32-compile": ["--dtype", "fp32", "--compile"]}
    if has_bf16():
        settings |= {"bf16-eager": ["--dtype", "bf16", "--no-compile"], "bf16-compile": ["--dtype", "bf16", "--compile"]}
    if a.only:
        settings = {k: v for k, v in settings.items() if k in a.only}
    rows = []
    for name, flags in settings.items():
        tps, wall = [], []
        for r in range(a.runs):
            events, seconds = trainer([*common, *flags, "--probe", a.steps, "--run-dir", Path(a.work) / name])
            res = events[-1]
            tps.append(res["tokens_per_second"])
            wall.append(seconds)
            print(f"  {name} run {r + 1}: {res['tokens_per_second']:,.0f} tok/s (median step {res['step_ms']:.0f} ms, "
                  f"peak RSS {res['peak_memory_gib']:.2f} GiB, process wall {seconds:.1f}s, "
                  f"load average {os.getloadavg()[0]:.2f})", flush=True)
        rows.append((name, statistics.median(tps), min(tps), max(tps), statistics.median(wall)))
    print(f"\nmedian of {a.runs} runs, each the median of steps 2..{a.steps} "
          f"(depth 4, seq 256, total batch 4,096, device batch {a.device_batch}, vocab 65,536):")
    print(f"{'setting':<14} {'tok/s':>8} {'min':>8} {'max':>8} {'wall/run':>9}")
    for name, med, lo, hi, w in rows:
        print(f"{name:<14} {med:>8,.0f} {lo:>8,.0f} {hi:>8,.0f} {w:>8.1f}s")

    if a.curve_steps and has_bf16():
        curves = {}
        for dtype in ("fp32", "bf16"):
            events, _ = trainer([*SHAPE, "--device-batch", a.device_batch, "--device", "cpu", *data, "--dtype", dtype,
                                 "--iterations", a.curve_steps, "--eval-every", a.curve_steps, "--eval-tokens", 32768,
                                 "--checkpoint-every", 0, "--run-dir", Path(a.work) / f"curve-{dtype}"])
            curves[dtype] = ([e["loss"] for e in events if e["event"] == "step"],
                             [e["val_bpb"] for e in events if e["event"] == "eval"])
        (l32, v32), (l16, v16) = curves["fp32"], curves["bf16"]
        print(f"\nloss curve, {a.curve_steps} steps on the stdlib corpus (every 5th step):")
        print("step  " + " ".join(f"{i + 1:>6}" for i in range(0, len(l32), 5)))
        print("fp32  " + " ".join(f"{x:>6.3f}" for x in l32[::5]))
        print("bf16  " + " ".join(f"{x:>6.3f}" for x in l16[::5]))
        last = slice(-5, None)
        print(f"mean loss of the last 5 steps: fp32 {statistics.mean(l32[last]):.4f}, bf16 {statistics.mean(l16[last]):.4f}; "
              f"val_bpb start {v32[0]:.4f}/{v16[0]:.4f} → end fp32 {v32[-1]:.4f}, bf16 {v16[-1]:.4f}")


if __name__ == "__main__":
    main()
