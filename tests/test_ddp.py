"""Two gloo processes under torchrun train exactly like one process with the same total batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--depth", "2", "--vocab-size", "512", "--seq-len", "64", "--head-dim", "64", "--device-batch", "4",
          "--total-batch", "512", "--threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc, *args, timeout=600):
    head = [sys.executable, "-m", "trainer.train"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
         str(free_port()), "-m", "trainer.train"]
    out = subprocess.run([*head, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    events = [json.loads(line[line.index("{"):]) for line in out.stdout.splitlines() if line.lstrip().startswith("{")]
    return out.returncode, events, out.stderr


def test_two_ranks_match_one_rank(tmp_path):
    args = [*COMMON, "--data-source", "synthetic", "--iterations", 12, "--eval-every", 6, "--eval-tokens", 2048,
            "--checkpoint-every", 6]
    rc1, one, err1 = launch(1, *args, "--run-dir", tmp_path / "one")
    rc2, two, err2 = launch(2, *args, "--run-dir", tmp_path / "two")
    assert rc1 == 0, err1
    assert rc2 == 0, err2
    s1, s2 = [e for e in one if e["event"] == "start"][0], [e for e in two if e["event"] == "start"][0]
    assert (s1["world_size"], s1["grad_accum"]) == (1, 2) and (s2["world_size"], s2["grad_accum"]) == (2, 1)
    assert len([e for e in two if e["event"] == "result"]) == 1  # only rank 0 speaks
    l1 = [e["loss"] for e in one if e["event"] == "step"]
    l2 = [e["loss"] for e in two if e["event"] == "step"]
    assert len(l1) == len(l2) == 12 and l1[-1] < l1[0] - 0.5  # it learns, so the gradients matter
    assert l2 == pytest.approx(l1, rel=1e-4, abs=1e-5)
    v1 = [e["val_bpb"] for e in one if e["event"] == "eval"]
    v2 = [e["val_bpb"] for e in two if e["event"] == "eval"]
    assert len(v1) == 3 and v2 == pytest.approx(v1, rel=1e-4)  # eval sums over both ranks
    assert len(torch.load(tmp_path / "two" / "checkpoints" / "step_000012" / "ranks.pt", weights_only=False)) == 2


def test_two_ranks_on_real_data_resume(corpus, tokenizer, tmp_path):
    tok_dir = tmp_path / "tok"
    tokenizer.save(tok_dir)
    args = [*COMMON, "--vocab-size", 1024, "--data-source", "local", "--data-dir", corpus[0].parent, "--tokenizer-dir", tok_dir,
            "--eval-every", 4, "--eval-tokens", 2048, "--checkpoint-every", 4, "--run-dir", tmp_path / "run"]
    rc, first, err = launch(2, *args, "--iterations", 4)
    assert rc == 0, err
    ranks = torch.load(tmp_path / "run" / "checkpoints" / "step_000004" / "ranks.pt", weights_only=False)
    assert [r["loader"]["rank"] for r in ranks] == [0, 1]  # each rank's own data position
    rc, second, err = launch(2, *args, "--iterations", 8, "--resume")
    assert rc == 0, err
    start = [e for e in second if e["event"] == "start"][0]
    result = [e for e in second if e["event"] == "result"][0]
    assert start["resumed_from_step"] == 4 and result["status"] == "ok" and result["steps"] == 8
    assert [e["step"] for e in second if e["event"] == "step"] == [5, 6, 7, 8]
    assert result["val_bpb"] < [e for e in first if e["event"] == "eval"][0]["val_bpb"]
