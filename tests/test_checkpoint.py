"""Checkpoints: complete or invisible, rotated, and a SIGKILLed run resumes bit for bit."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import checkpoint

REPO = Path(__file__).resolve().parent.parent


def save(run_dir, step, keep=2):
    return checkpoint.save(run_dir, step, model_state={"w": torch.full((4,), float(step))},
                           optim_state=[{"state": {}}], rank_states=[{"loader": {"n": step}, "rng": {}}],
                           state={"step": step}, keep=keep)


def test_save_load_and_rotate(tmp_path):
    for step in (10, 20, 30):
        path = save(tmp_path, step)
    assert path.name == "step_000030" and checkpoint.latest(tmp_path) == path
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_000020", "step_000030"]
    ck = checkpoint.load(path, rank=0)
    assert ck["state"]["step"] == 30 and ck["rank"]["loader"] == {"n": 30} and ck["world_size"] == 1
    assert torch.equal(ck["model"]["w"], torch.full((4,), 30.0))
    with pytest.raises(checkpoint.CheckpointError, match="sharded over 1 ranks and this run has 2"):
        checkpoint.load(path, rank=1, world_size=2)
    save(tmp_path, 40, keep=0)
    assert len(checkpoint.complete_checkpoints(tmp_path)) == 3  # keep=0 keeps all
    assert not list(checkpoint.root(tmp_path).glob(".tmp-*"))


def test_incomplete_checkpoints_are_invisible(tmp_path):
    good = save(tmp_path, 10)
    base = checkpoint.root(tmp_path)
    # a killed write: the temp dir, even with every file and a marker, never counts
    tmp = base / ".tmp-step_000050-999"
    tmp.mkdir()
    for f in good.iterdir():
        (tmp / f.name).write_bytes(f.read_bytes())
    # a step dir without its marker, and one whose marker lists a file that is short
    (base / "step_000060").mkdir()
    (base / "step_000060" / "model.pt").write_bytes(b"half")
    torn = base / "step_000070"
    torn.mkdir()
    for f in good.iterdir():
        (torn / f.name).write_bytes(f.read_bytes())
    (torn / "model.pt").write_bytes((torn / "model.pt").read_bytes()[:-10])
    (base / "step_000080").mkdir()
    (base / "step_000080" / "COMPLETE").write_text("not json")
    assert checkpoint.latest(tmp_path) == good
    removed = {p.name for p in checkpoint.sweep(tmp_path)}
    assert removed == {".tmp-step_000050-999", "step_000060", "step_000070", "step_000080"}
    assert [p.name for p in base.iterdir()] == ["step_000010"]


def test_where_directories_cannot_be_renamed_files_move_marker_last(tmp_path, monkeypatch):
    """Bucket mounts (FUSE) may refuse to rename a directory; the checkpoint is still complete or invisible."""
    real_rename, moved = os.rename, []

    def rename(src, dst):
        if os.path.isdir(src):
            raise OSError(38, "Function not implemented")  # what such a mount answers
        if os.path.basename(dst) != checkpoint.MARKER:  # every file is there before the marker arrives
            assert not (Path(dst).parent / checkpoint.MARKER).exists()
        moved.append(os.path.basename(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    path = save(tmp_path, 10)
    assert moved[-1] == checkpoint.MARKER and set(moved) == {*checkpoint.FILES, "optim-00000.pt", checkpoint.MARKER}
    assert checkpoint.latest(tmp_path) == path and checkpoint.load(path, rank=0)["state"]["step"] == 10
    assert not list(checkpoint.root(tmp_path).glob(".tmp-*"))


def test_write_that_dies_midway_leaves_no_complete_checkpoint(tmp_path, monkeypatch):
    good = save(tmp_path, 10)
    real = torch.save
    calls = []

    def dying_save(obj, f):
        calls.append(f.name)
        if Path(f.name).name == "ranks.pt":
            raise KeyboardInterrupt  # the process dies in the middle of the write
        return real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 20)
    assert checkpoint.latest(tmp_path) == good
    assert not (checkpoint.root(tmp_path) / "step_000020").exists()
    leftovers = list(checkpoint.root(tmp_path).glob(".tmp-step_000020-*"))
    assert leftovers and not (leftovers[0] / "COMPLETE").exists()


# -- exact resume ------------------------------------------------------------------------------------
ARGS = ["--depth", "2", "--vocab-size", "1024", "--seq-len", "64", "--head-dim", "32", "--device-batch", "4",
        "--total-batch", "512", "--iterations", "24", "--eval-every", "8", "--eval-tokens", "4096",
        "--checkpoint-every", "8", "--threads", "1"]


def cmd(*args):
    return [sys.executable, "-m", "trainer.train", *map(str, args)]


def events(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sigkilled_run_resumes_bit_for_bit(data_args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full = subprocess.run(cmd(*ARGS, *data_args, "--run-dir", tmp_path / "full"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    want = events(full.stdout)

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(cmd(*ARGS, *data_args, "--run-dir", run_dir), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "checkpoint":
            proc.send_signal(signal.SIGKILL)  # no handler, no cleanup
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    done = [c for c in checkpoint.complete_checkpoints(run_dir)]
    assert done and checkpoint.step_of(done[-1]) < 24

    resumed = subprocess.run(cmd(*ARGS, *data_args, "--run-dir", run_dir, "--resume"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    got = events(resumed.stdout)
    start = got[0]
    assert start["event"] == "start" and start["resumed_from_step"] == checkpoint.step_of(done[-1])
    # every step and eval after the resume point is identical, bit for bit
    strip = lambda evs, kinds: [{k: v for k, v in e.items() if k in ("event", "step", "loss", "val_bpb")}
                                for e in evs if e["event"] in kinds and e["step"] > start["resumed_from_step"]]
    assert strip(got, ("step", "eval")) == strip(want, ("step", "eval"))
    a, b = want[-1], got[-1]
    assert a["event"] == b["event"] == "result" and b["status"] == "ok"
    assert (a["steps"], a["loss"], a["val_bpb"]) == (b["steps"], b["loss"], b["val_bpb"])
    assert b["total_wall_seconds"] > b["wall_seconds"]  # the killed segment's time counts too

    again = subprocess.run(cmd(*ARGS, *data_args, "--run-dir", run_dir, "--resume"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    last = events(again.stdout)
    assert again.returncode == 0 and not [e for e in last if e["event"] == "step"]
    assert last[-1]["val_bpb"] == a["val_bpb"] and last[-1]["steps"] == 24  # a finished run stays finished


def test_resume_refuses_another_shape(data_args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [a if a != "24" else "8" for a in ARGS]
    first = subprocess.run(cmd(*args, *data_args, "--run-dir", tmp_path), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    other = [("3" if a == "2" and args[i - 1] == "--depth" else a) for i, a in enumerate(args)]
    out = subprocess.run(cmd(*other, *data_args, "--run-dir", tmp_path, "--resume"), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "does not fit" in out.stderr
