"""Candidates for the cpu_demo preset, compared at the same wall budget (docs/benchmarks.md).

Each candidate is first timed with a short probe on real data; then it trains for as many steps as fit the
budget at that speed (start-up and evaluations included, as the demo pays them) and reports val_bpb beside
gzip -9 on the same validation text. Run it with the CPU narrowed to the slowest machine to design for, e.g.
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 (an AVX2-only x86 CPU).

    .venv/bin/python bench/cpu_demo_candidates.py --budget 150 --data-dir /tmp/demo-data
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D2 = ["--depth", "2", "--vocab-size", "4096", "--seq-len", "256", "--device-batch", "8"]
CANDIDATES = {  # name: trainer flags (the rest shared below)
    "d2-v4096": [*D2, "--total-batch", "4096"],
    "d3-v4096": ["--depth", "3", "--vocab-size", "4096", "--seq-len", "256", "--device-batch", "8",
                 "--total-batch", "4096"],
    "d2-v2048": ["--depth", "2", "--vocab-size", "2048", "--seq-len", "256", "--device-batch", "8",
                 "--total-batch", "4096"],
    "d2-v4096-b2048": [*D2, "--total-batch", "2048"],
    "d2-v4096-lr2x": [*D2, "--total-batch", "4096", "--matrix-lr", "0.04", "--embedding-lr", "0.4",
                      "--unembedding-lr", "0.008"],
    "d2-v4096-lr0.5x": [*D2, "--total-batch", "4096", "--matrix-lr", "0.01", "--embedding-lr", "0.1",
                        "--unembedding-lr", "0.002"],
    "d2-v4096-b8192": ["--depth", "2", "--vocab-size", "4096", "--seq-len", "256", "--device-batch", "16",
                       "--total-batch", "8192"],
    "d2-v4096-wd50": [*D2, "--total-batch", "4096", "--warmdown-ratio", "0.5"],
    "d2-v4096-seq128": ["--depth", "2", "--vocab-size", "4096", "--seq-len", "128", "--device-batch", "16",
                        "--total-batch", "4096"],
}
SHARED = ["--device", "cpu", "--data", "stdlib", "--eval-tokens", "65536"]


def trainer(args: list[str], run_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "trainer.train", *args, "--run-dir", run_dir],
                         capture_output=True, text=True)
    result = json.loads((Path(run_dir) / "result.json").read_text())
    if result["status"] != "ok":
        raise SystemExit(f"{args}: {result['status']}\n{out.stderr[-2000:]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=150.0, help="seconds of training wall per candidate")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--extra", nargs="*", default=[], help="more trainer flags for every candidate")
    a = ap.parse_args()
    for name, flags in CANDIDATES.items():
        if a.only and name not in a.only:
            continue
        common = [*flags, *SHARED, *a.extra, "--data-dir", a.data_dir]
        with tempfile.TemporaryDirectory() as d:
            probe = trainer([*common, "--probe", "12", "--probe-data", "real"], d + "/probe")
            startup = 8.0  # imports, data, tokenizer from the cache, first step's warm-up; evals added below
            step = probe["step_ms"] / 1000
            eval_s = 65536 / probe["tokens_per_second"] / 3  # forward only
            iters = int((a.budget - startup - 3 * eval_s) / step)
            t = time.time()
            res = trainer([*common, "--iterations", str(iters), "--eval-every", str(max(1, iters // 2))], d + "/run")
            print(json.dumps({"candidate": name, "iterations": iters, "tokens_per_second": res["tokens_per_second"],
                              "wall_s": round(time.time() - t, 1), "val_bpb": round(res["val_bpb"], 4),
                              "gzip_bpb": round(res["gzip_bpb"], 4), "extra": a.extra}), flush=True)


if __name__ == "__main__":
    main()
