"""Gloo processes under torchrun train like one process with the same total batch, each holding its shard of
the optimizer state (trainer/optim.py), and a run killed at 4 ranks resumes bit for bit."""
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
    args = [*COMMON, "--data", "synthetic", "--iterations", 12, "--eval-every", 6, "--eval-tokens", 2048,
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
    args = [*COMMON, "--vocab-size", 1024, "--data", corpus[0].parent, "--tokenizer-dir", tok_dir,
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


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in process_tree(int(child)))]


def optimizer_state_bytes(checkpoint_dir: Path, rank: int) -> int:
    """Bytes of every tensor in one rank's optimizer state, as it saved it."""
    states = torch.load(checkpoint_dir / f"optim-{rank:05d}.pt", weights_only=False)
    return sum(t.numel() * t.element_size() for sd in states for per_param in sd["state"].values()
               for t in per_param.values() if torch.is_tensor(t))


def test_four_ranks_hold_a_quarter_of_the_optimizer_state_and_train_like_one(tmp_path):
    args = [*COMMON, "--data", "synthetic", "--iterations", 6, "--eval-every", 0, "--eval-tokens", 2048,
            "--checkpoint-every", 0]
    args += ["--device-batch", 2]  # the same sequences in the same micro-batches: 1 rank × 4, 4 ranks × 1
    rc1, one, err1 = launch(1, *args, "--run-dir", tmp_path / "one")
    rc4, four, err4 = launch(4, *args, "--run-dir", tmp_path / "four")
    assert rc1 == 0, err1
    assert rc4 == 0, err4
    assert [e["grad_accum"] for e in four if e["event"] == "start"] == [1]
    l1 = [e["loss"] for e in one if e["event"] == "step"]
    l4 = [e["loss"] for e in four if e["event"] == "step"]
    assert len(l4) == 6 and l4 == pytest.approx(l1, rel=1e-4, abs=1e-5)
    whole = optimizer_state_bytes(tmp_path / "one" / "checkpoints" / "step_000006", 0)
    shares = [optimizer_state_bytes(tmp_path / "four" / "checkpoints" / "step_000006", r) for r in range(4)]
    largest_matrix = 4 * 512 * 128  # bytes: the fp32 momentum of one (4d × d) matrix at d = 128
    assert all(abs(share - whole / 4) <= largest_matrix for share in shares), (whole, shares)
    assert sum(shares) == pytest.approx(whole, abs=64)  # every state once (AdamW's step counters aside)


def test_four_ranks_killed_resume_bit_for_bit_and_refuse_another_world_size(tmp_path):
    args = [*COMMON, "--data", "synthetic", "--device-batch", 2, "--iterations", 24, "--eval-every", 8,
            "--eval-tokens", 2048, "--checkpoint-every", 4]
    rc, want, err = launch(4, *args, "--run-dir", tmp_path / "full")
    assert rc == 0, err
    run_dir = tmp_path / "killed"
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port",
            str(free_port()), "-m", "trainer.train"]
    proc = subprocess.Popen([*head, *map(str, args), "--run-dir", str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.lstrip().startswith("{") and json.loads(line[line.index("{"):])["event"] == "checkpoint":
            for pid in process_tree(proc.pid):  # torchrun and every rank (each in a session of its own)
                os.kill(pid, 9)  # no handler, no cleanup
            break
    proc.wait(60)
    rc, got, err = launch(4, *args, "--run-dir", run_dir, "--resume")
    assert rc == 0, err
    resumed = [e for e in got if e["event"] == "start"][0]["resumed_from_step"]
    assert resumed is not None and 4 <= resumed < 24
    after = lambda evs: [(e["event"], e["step"], e.get("loss"), e.get("val_bpb")) for e in evs
                         if e["event"] in ("step", "eval") and e["step"] > resumed]
    assert after(got) == after(want)  # bit for bit
    rc, _, err = launch(2, *[a if a != 2 else 4 for a in args], "--run-dir", run_dir, "--resume")
    assert rc != 0 and "sharded over 4 ranks and this run has 2; resume it on 4 ranks" in err  # torchrun says 1
