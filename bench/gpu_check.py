"""The first thing to run on a lent GPU: the compiled trainer's peak memory (allocated and reserved), step time
and MFU at the shapes the plans stand on, against what nanolaunch's memory model counts for each.

    python bench/gpu_check.py [--out gpu_check.json] [--budget-seconds 450]

Each config is one probe of the real trainer in its own process (synthetic batches, bf16, compiled, one
micro-step per optimizer step): d34 b2/b4, d20 b16/b32, d10 b8/b16/b32, most informative first, until the time
budget is spent. One GPU holds the whole optimizer state; the 8-GPU per-rank figure is derived from the exact
shard arithmetic (nanolaunch/memory.py): measured − the state and step buffers one rank would not hold + the
communication buffers it would. Without CUDA it runs a reduced CPU mode (tiny models, a few steps) so the
script is known to work, and says that the real figures need CUDA. Writes one JSON document (docs/benchmarks.md
and docs/memory.md take it in).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanolaunch import memory  # noqa: E402
from trainer.arithmetic import ModelShape  # noqa: E402

GPU_CONFIGS = [(34, 4), (34, 2), (20, 32), (20, 16), (10, 32), (10, 16), (10, 8)]  # (depth, device batch)
CPU_CONFIGS = [(2, 2), (2, 4)]


def probe(depth: int, batch: int, cuda: bool, steps: int, run_dir: Path) -> dict:
    seq, vocab = (2048, 65536) if cuda else (128, 2048)
    args = ["--depth", depth, "--device-batch", batch, "--total-batch", batch * seq, "--seq-len", seq,
            "--vocab-size", vocab, "--probe", steps, "--data", "synthetic", "--run-dir", run_dir]
    args += ["--dtype", "bf16", "--compile", "true"] if cuda else ["--dtype", "fp32", "--threads", "2"]
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "trainer.train", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    events = [json.loads(line[line.index("{"):]) for line in done.stdout.splitlines() if line.lstrip().startswith("{")]
    result = next((e for e in events if e.get("event") == "result"), {"status": "crashed",
                                                                      "error": done.stderr[-500:]})
    shape = ModelShape(depth, vocab_size=vocab, seq_len=seq)
    one = memory.estimate(shape, batch, 80.0, "cuda", world_size=1)
    eight = memory.estimate(shape, batch, 80.0, "cuda", world_size=8)
    row = {"depth": depth, "device_batch": batch, "seq_len": seq, "vocab_size": vocab, "status": result["status"],
           "error": result.get("error"), "seconds": round(time.time() - started, 1),
           "allocated_gib": result.get("peak_memory_gib"), "reserved_gib": result.get("peak_reserved_gib"),
           "step_ms": result.get("step_ms"), "mfu": result.get("mfu"), "tokens_per_second": result.get("tokens_per_second"),
           "device_name": result.get("device_name"),
           "counted_allocated_gib": one.total_gib - memory.CUDA_CONTEXT_GIB, "counted_high_gib": one.high_gib}
    if row["allocated_gib"] is not None:
        row["error_of_count"] = (row["counted_allocated_gib"] - row["allocated_gib"]) / row["allocated_gib"]
        # what one of 8 ranks would hold instead: the model's own difference between the two world sizes
        row["per_rank_of_8_gib"] = row["allocated_gib"] - (one.total_gib - eight.total_gib)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="stop starting configs after this")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        print("gpu_check: no CUDA device; running the reduced CPU mode (tiny models): the real figures need a GPU",
              file=sys.stderr)
    configs, steps = (GPU_CONFIGS, args.steps) if cuda else (CPU_CONFIGS, 3)
    started, rows = time.time(), []
    for depth, batch in configs:
        if time.time() - started > args.budget_seconds:
            rows.append({"depth": depth, "device_batch": batch, "status": "skipped: time budget spent"})
            continue
        row = probe(depth, batch, cuda, steps, Path(f"/tmp/gpu_check_d{depth}_b{batch}"))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    report = {"mode": "cuda" if cuda else "cpu (reduced: tiny models; the real figures need CUDA)",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
              "steps": steps, "seconds": round(time.time() - started, 1), "configs": rows}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}: {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} configs ok, "
          f"{report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
