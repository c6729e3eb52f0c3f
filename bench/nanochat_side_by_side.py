"""tokens/s of karpathy/nanochat's own trainer and of ours, side by side, same shape, on this CPU.

    .venv/bin/python bench/nanochat_side_by_side.py --nanochat /tmp/nanochat \\
        --nanochat-python /tmp/nanochat-venv/bin/python --work /tmp/nanochat-sbs [--rounds 3] [--steps 12]

Nothing of nanochat lives in this repository: --nanochat is a work tree of its repository (e.g.
`git archive HEAD | tar -x`) and --nanochat-python an interpreter that can run it (torch, tiktoken,
rustbpe, pyarrow, wandb, ...). Both trainers get the same shape: depth 4 (d = 256, head dim 128, so 2
heads), full causal attention (nanochat: --window-pattern L), seq 256, device batch 16, total batch
4,096 (grad accumulation 1), --dtype (fp32, bf16, or auto: each trainer's own choice), vocab --vocab-size
(default 65,536), one process, OMP_NUM_THREADS=2.

Data (no network): our standard-library corpus (trainer.corpus.build_stdlib_corpus: parquet shards
with a `text` column, the last one held out), written to WORK/data for ours and copied into
WORK/nanochat-base/base_data_climbmix/ where nanochat's dataset module looks. Each trainer trains its
own tokenizer of the requested size on the same training shards (nanochat: scripts.tok_train; ours:
on its first run); the script stops if nanochat's cannot reach the requested size.

Timing: both trainers time each optimizer step themselves (data fetch + forward + backward + optimizer
step + a host sync): nanochat prints `dt` per step, ours emits `step` events with step_ms. Per run we
take the median step time of steps --skip+1 … --steps (1-based; the first steps include compilation
and warm-up) and report total_batch / median as tokens/s; the table gives the median of the runs.
Compile: nanochat always calls torch.compile (model, and its fused optimizer kernels); its eager
setting is the same trainer under TORCHDYNAMO_DISABLE=1 (PyTorch's switch that makes torch.compile a
no-op). Ours: --no-compile / --compile. Runs alternate between the trainers (the first trainer
swaps every round), and every run waits until the 1-minute load average is below --max-load. Other
engineers' jobs can start mid-run, so each run also measures the CPU time the rest of the machine used
meanwhile (/proc/stat minus the run's own rusage); a run where that exceeds --max-other-cpu of the
machine is logged, not counted, and run again (up to --retries times).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPTH, SEQ, DEVICE_BATCH, TOTAL_BATCH, HEAD_DIM = 4, 256, 16, 4096, 128
NANOCHAT_STEP = re.compile(r"^step (\d+)/(\d+) .*\| dt: ([\d.]+)ms \| tok/sec: ([\d,]+)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_quiet(max_load: float, limit_s: float, every_s: float = 30) -> float:
    """Wait until the 1-minute load average is below max_load; returns the load seen."""
    t0 = time.time()
    while True:
        load = load1()
        if load < max_load:
            return load
        if time.time() - t0 > limit_s:
            print(f"  load {load:.2f} still ≥ {max_load} after {limit_s / 60:.0f} min; measuring anyway "
                  f"(this run is contended)", flush=True)
            return load
        print(f"  waiting for a quiet machine: load {load:.2f} ≥ {max_load}", flush=True)
        time.sleep(every_s)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; steal excluded)."""
    user, nice, system, idle, iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run(cmd: list[str], *, cwd: Path, env: dict, timeout: int, log: Path) -> tuple[int, str, float, float, float]:
    """Run cmd; returns (exit code, stdout+stderr, wall seconds, the process's own peak RSS in GiB,
    share of the machine's CPU time that other processes used meanwhile, 0..1)."""
    t0, b0 = time.time(), busy_seconds()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    others = max(0.0, busy_seconds() - b0 - ru.ru_utime - ru.ru_stime) / (wall * os.cpu_count())
    return p.returncode, log.read_text(), wall, ru.ru_maxrss / 2**20, others


def base_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHDYNAMO_DISABLE", "PYTHONPATH")}
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    return env


def prepare(a) -> tuple[Path, Path]:
    """Corpus for both, nanochat's tokenizer; returns (our data dir, nanochat base dir)."""
    sys.path.insert(0, str(REPO))
    from trainer.corpus import build_stdlib_corpus

    work = Path(a.work)
    data = work / "data"
    shards = build_stdlib_corpus(data, n_shards=a.shards)
    base = work / "nanochat-base"
    nc_data = base / "base_data_climbmix"  # nanochat.dataset.DATA_DIR; the last parquet file is its val split
    nc_data.mkdir(parents=True, exist_ok=True)
    for s in shards:
        dst = nc_data / s.name
        if not dst.exists() or dst.stat().st_size != s.stat().st_size:
            shutil.copyfile(s, dst)
    tok = base / "tokenizer"
    want = a.vocab_size
    stamp = tok / "sbs_vocab.txt"
    if not (stamp.exists() and stamp.read_text().strip() == str(want)):
        print(f"nanochat tokenizer: training {want:,} tokens with scripts.tok_train …", flush=True)
        env = base_env(a.threads) | {"NANOCHAT_BASE_DIR": str(base)}
        code, out, wall, _, _ = run([a.nanochat_python, "-m", "scripts.tok_train", f"--vocab-size={want}"],
                                 cwd=Path(a.nanochat), env=env, timeout=3600, log=work / "nanochat-tok_train.log")
        if code != 0:
            raise SystemExit(f"nanochat tok_train failed ({code}); see {work / 'nanochat-tok_train.log'}")
        probe = (f"import torch; t = torch.load({str(tok / 'token_bytes.pt')!r}); print(t.numel())")
        got = int(subprocess.run([a.nanochat_python, "-c", probe], capture_output=True, text=True,
                                 check=True).stdout.strip())
        print(f"nanochat tokenizer: {got:,} tokens ({wall:.0f}s)", flush=True)
        if got != want:
            raise SystemExit(f"nanochat's tokenizer reached only {got:,} tokens on this corpus, not {want:,}: "
                             f"rerun both with --vocab-size {got} (or a smaller power of two)")
        stamp.write_text(str(want))
    return data, base


def nanochat_cmd(a, compiled: bool, steps: int) -> tuple[list[str], dict]:
    cmd = [a.nanochat_python, "-m", "scripts.base_train", "--run=dummy", "--device-type=cpu",
           f"--depth={DEPTH}", f"--head-dim={HEAD_DIM}", "--window-pattern=L", f"--max-seq-len={SEQ}",
           f"--device-batch-size={DEVICE_BATCH}", f"--total-batch-size={TOTAL_BATCH}",
           f"--num-iterations={steps}", "--eval-every=-1", "--core-metric-every=-1", "--sample-every=-1",
           "--model-tag=side_by_side"]
    env = base_env(a.threads) | {"NANOCHAT_BASE_DIR": str(Path(a.work) / "nanochat-base")}
    if a.dtype != "auto":  # auto: nanochat's own choice (float32 on a CPU)
        env["NANOCHAT_DTYPE"] = {"fp32": "float32", "bf16": "bfloat16"}[a.dtype]
    if not compiled:
        env["TORCHDYNAMO_DISABLE"] = "1"
    return cmd, env


def ours_cmd(a, compiled: bool, steps: int, data: Path) -> tuple[list[str], dict]:
    cmd = [str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable,
           "-m", "trainer.train", "--depth", str(DEPTH), "--head-dim", str(HEAD_DIM), "--seq-len", str(SEQ),
           "--device-batch", str(DEVICE_BATCH), "--total-batch", str(TOTAL_BATCH), "--vocab-size", str(a.vocab_size),
           "--device", "cpu", "--dtype", a.dtype, "--threads", str(a.threads),
           "--compile" if compiled else "--no-compile", "--probe", str(steps), "--probe-data", "real",
           "--data", "stdlib", "--data-dir", str(data), "--run-dir", str(Path(a.work) / "ours-run")]
    if a.ours_flags:
        cmd += a.ours_flags.split()
    return cmd, base_env(a.threads) | {"PYTHONPATH": str(REPO)}


def parse_nanochat(out: str) -> tuple[list[float], dict]:
    steps = [(int(m[1]), float(m[3])) for m in map(NANOCHAT_STEP.match, out.splitlines()) if m]
    info = {}
    m = re.search(r"^total\s*: ([\d,]+)", out, re.M)
    if m:
        info["params"] = int(m[1].replace(",", ""))
    m = re.search(r"^Vocab size: ([\d,]+)", out, re.M)
    if m:
        info["vocab"] = int(m[1].replace(",", ""))
    m = re.search(r"^COMPUTE_DTYPE: torch\.(\w+)", out, re.M)
    if m:
        info["dtype"] = m[1]
    return [dt for _, dt in sorted(steps)], info  # ms, step 0 first


def parse_ours(out: str) -> tuple[list[float], dict]:
    events = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    steps = [(e["step"], e["step_ms"]) for e in events if e.get("event") == "step"]
    info = {}
    for e in events:
        if e.get("event") == "start":
            info["params"] = e["shape"].get("params")
            info["vocab"] = e["shape"].get("vocab_size")
            info["dtype"] = e["config"].get("dtype_resolved")
    return [dt for _, dt in sorted(steps)], info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanochat", required=True, help="nanochat work tree (holds scripts/base_train.py)")
    p.add_argument("--nanochat-python", required=True, help="interpreter that runs nanochat")
    p.add_argument("--work", default="/tmp/nanochat-sbs", help="corpus, tokenizers, logs, results.json")
    p.add_argument("--vocab-size", type=int, default=65536)
    p.add_argument("--shards", type=int, default=4, help="stdlib corpus shards (the last is validation)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    p.add_argument("--skip", type=int, default=3, help="first steps left out of the median (compile, warm-up)")
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--trainers", nargs="+", default=["nanochat", "ours"], choices=["nanochat", "ours"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="both trainers' compute dtype; auto: each trainer's own choice on this machine")
    p.add_argument("--max-load", type=float, default=1.3, help="wait for a 1-minute load average below this")
    p.add_argument("--wait-minutes", type=float, default=30)
    p.add_argument("--max-other-cpu", type=float, default=0.10,
                   help="a run during which other processes used more than this share of the CPU is run again")
    p.add_argument("--retries", type=int, default=2, help="extra attempts for a contended run")
    p.add_argument("--ours-flags", default="", help="extra flags for our trainer, e.g. '--no-fused-loss'")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    a = p.parse_args()
    if a.skip >= a.steps:
        raise SystemExit("--skip must be below --steps")

    work = Path(a.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    import torch

    print(time.strftime("%Y-%m-%d %H:%M:%S"), f"| {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}",
          flush=True)
    data, _ = prepare(a)
    warm_cmd, warm_env = ours_cmd(a, False, 1, data)  # builds/loads our tokenizer outside the timed runs
    code, out, wall, _, _ = run(warm_cmd, cwd=REPO, env=warm_env, timeout=3600, log=work / "ours-warm.log")
    if code != 0:
        raise SystemExit(f"our trainer failed ({code}); see {work / 'ours-warm.log'}")

    results = []
    for r in range(a.rounds):
        order = [t for t in (["nanochat", "ours"] if r % 2 == 0 else ["ours", "nanochat"]) if t in a.trainers]
        for mode in a.modes:
            for who in order:
                compiled = mode == "compile"
                cmd, env = nanochat_cmd(a, compiled, a.steps) if who == "nanochat" else ours_cmd(a, compiled, a.steps, data)
                for attempt in range(1, a.retries + 2):
                    load_before = wait_quiet(a.max_load, a.wait_minutes * 60)
                    log = work / "logs" / f"r{r + 1}-{who}-{mode}-a{attempt}.log"
                    code, out, wall, rss, others = run(cmd, cwd=Path(a.nanochat) if who == "nanochat" else REPO,
                                                       env=env, timeout=a.timeout, log=log)
                    load_after = load1()
                    dts, info = parse_nanochat(out) if who == "nanochat" else parse_ours(out)
                    row = dict(round=r + 1, attempt=attempt, trainer=who, mode=mode, exit_code=code, wall_s=round(wall, 1),
                               peak_rss_gib=round(rss, 2), other_cpu=round(others, 3), load_before=load_before,
                               load_after=load_after, step_ms=dts, log=str(log), **info)
                    contended = others > a.max_other_cpu
                    row["counted"] = not contended or attempt == a.retries + 1
                    note = (f"other processes used {others:.0%} of the CPU: " +
                            ("not counted, again" if not row["counted"] else "counted anyway (out of retries)")
                            if contended else f"others {others:.0%} of the CPU")
                    if code != 0 or len(dts) < a.steps:
                        tail = " | ".join(out.strip().splitlines()[-3:])
                        row["error"] = tail[-400:]
                        print(f"  round {r + 1} {who:<8} {mode:<7}: FAILED (exit {code}, {len(dts)} steps): {tail[-300:]}",
                              flush=True)
                    else:
                        med = statistics.median(dts[a.skip:])
                        row |= dict(median_step_ms=round(med, 1), tokens_per_second=round(TOTAL_BATCH / med * 1000, 1),
                                    first_step_ms=round(dts[0], 1))
                        print(f"  round {r + 1} {who:<8} {mode:<7}: {row['tokens_per_second']:>7,.0f} tok/s "
                              f"(median step {med:.0f} ms of steps {a.skip + 1}..{a.steps}, first step {dts[0] / 1000:.1f}s, "
                              f"wall {wall:.0f}s, peak RSS {rss:.2f} GiB, params {info.get('params', 0):,}, {info.get('dtype')}, "
                              f"load {load_before:.2f} → {load_after:.2f}, {note})", flush=True)
                    results.append(row)
                    (work / "results.json").write_text(json.dumps(dict(config=vars(a), cpu=cpu_model(),
                                                                        torch=torch.__version__, runs=results), indent=1))
                    if row["counted"] or "error" in row:
                        break

    print(f"\ndepth {DEPTH}, seq {SEQ}, device batch {DEVICE_BATCH}, total batch {TOTAL_BATCH:,}, vocab {a.vocab_size:,}, "
          f"{a.dtype}, {a.threads} threads; tokens/s = {TOTAL_BATCH:,} / median step of steps {a.skip + 1}..{a.steps}; "
          f"median of {a.rounds} runs")
    print(f"{'trainer':<9} {'mode':<8} {'median':>8}   runs")
    for mode in a.modes:
        for who in a.trainers:
            rows = [x for x in results if x["trainer"] == who and x["mode"] == mode and x["counted"]]
            tps = [x["tokens_per_second"] for x in rows if "tokens_per_second" in x]
            med = f"{statistics.median(tps):>8,.0f}" if tps else f"{'failed':>8}"
            runs = " ".join(f"{x['tokens_per_second']:,.0f}" if "tokens_per_second" in x else "fail" for x in rows)
            print(f"{who:<9} {mode:<8} {med}   {runs}")
    print(f"\nper-run details: {work / 'results.json'}")


if __name__ == "__main__":
    main()
