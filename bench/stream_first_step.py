"""Time to the first training step on a Hub dataset behind a bandwidth limit: streamed (the trainer fetches
while training) against the old way (every file fetched first, then training). docs/benchmarks.md.

    python bench/stream_first_step.py --mode stream      # prints seconds to the first step, then exits
    python bench/stream_first_step.py --mode fetch-all   # the same, after fetching every file first

The loopback Hub (tests/hub_server.py) serves 24 files of the standard-library corpus (the last one held out)
at --rate bytes/s over all downloads together; the tokenizer is trained once beforehand, so both modes time
data and start-up only. The dataset and the tokenizer are kept under --cache between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("stream", "fetch-all"), required=True)
    ap.add_argument("--rate", type=float, default=2_000_000, help="bytes/s over all downloads")
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "nl-bench-stream"))
    args = ap.parse_args()

    cache = Path(args.cache)
    from hub_server import Hub
    hub = Hub()
    os.environ["HF_ENDPOINT"] = hub.url
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HOME"] = str(cache / "hf-home")
    from trainer import hub as hub_data
    from trainer.corpus import build_stdlib_corpus
    from trainer.data import iter_documents
    from trainer.tokenizer import META_FILE, train_tokenizer

    shards = build_stdlib_corpus(cache / "corpus", n_shards=args.files, docs_per_row_group=64,
                                 max_chars=32_000_000)
    files = {f"data/train-{i:02d}.parquet": p.read_bytes() for i, p in enumerate(shards)}
    hub.add("bench/stream", files)
    tok = cache / "tokenizer"
    if not (tok / META_FILE).is_file():
        train_tokenizer(iter_documents(shards[:2]), 4096).save(tok)
    work = Path(tempfile.mkdtemp(prefix="nl-bench-stream-"))
    hub.rate = args.rate
    t0 = time.time()
    fetch_s = None
    if args.mode == "fetch-all":  # the old _from_hub: list, fetch every file the run needs, then train
        listing = hub_data.facts(hub_data.Source("bench/stream"), work / "data")
        hub_data.fetch(listing, [*listing.train, listing.val], work / "data")
        fetch_s = time.time() - t0
    trainer = [sys.executable, "-m", "trainer.train", "--depth", "4", "--vocab-size", "4096", "--seq-len", "256",
               "--device-batch", "4", "--total-batch", "1024", "--iterations", "1000", "--eval-every", "0",
               "--dtype", "fp32", "--data", "bench/stream", "--shards", str(args.files), "--data-dir",
               str(work / "data"), "--tokenizer-dir", str(tok), "--run-dir", str(work / "run"), "--keep-data"]
    proc = subprocess.Popen(trainer, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = None
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "step":
            first = time.time() - t0
            break
    proc.kill()
    proc.wait()
    sent = [t for p, t in hub.sent.items() if p != "data/train-23.parquet"]
    print(json.dumps({"mode": args.mode, "first_step_s": round(first, 2) if first else None,
                      "fetch_all_s": None if fetch_s is None else round(fetch_s, 2),
                      "bytes": sum(map(len, files.values())), "rate": args.rate,
                      "files_sent_before_first_step": sum(1 for t in sent if t - t0 <= first) if first else None}))


if __name__ == "__main__":
    main()
