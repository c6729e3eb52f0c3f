"""Hub shards streamed while training (trainer/stream.py), against the loopback Hub and the real trainer."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import checkpoint
from trainer.corpus import build_stdlib_corpus
from trainer.data import shard_order

REPO = Path(__file__).resolve().parent.parent
AHEAD = 2
FILES = 12  # 11 training files and the held-out last one
VAL = "data/train-11.parquet"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """12 parquet files of ~100,000 characters: about 30 steps of 1,024 tokens each."""
    paths = build_stdlib_corpus(tmp_path_factory.mktemp("many"), n_shards=FILES, docs_per_row_group=4,
                                max_chars=1_200_000)
    return {f"data/train-{i:02d}.parquet": p.read_bytes() for i, p in enumerate(paths)}


@pytest.fixture
def tok_dir(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok")
    return tmp_path / "tok"


def trainer(repo_id, tmp_path, tok_dir, *extra):
    args = ["--depth", "2", "--head-dim", "32", "--vocab-size", "1024", "--seq-len", "64", "--device-batch", "16",
            "--total-batch", "1024", "--eval-every", "0", "--eval-tokens", "1024", "--dtype", "fp32", "--threads", "1",
            "--data", repo_id, "--shards", str(FILES), "--fetch-ahead", str(AHEAD), "--data-dir", tmp_path / "data",
            "--tokenizer-dir", tok_dir, "--run-dir", tmp_path / "run", "--resume", *extra]
    return subprocess.Popen([sys.executable, "-m", "trainer.train", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def events(proc):
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def on_disk(tmp_path) -> set[str]:
    """The training files in the data folder."""
    return {f"data/{p.name}" for p in (tmp_path / "data" / "data").glob("train-*.parquet")} - {VAL}


def read_order(n_train: int, positions: int) -> list[str]:
    """The training files in the order a one-node run reads them (seed 0), over as many positions."""
    return [f"data/train-{shard_order(n_train, 0, p // n_train)[p % n_train]:02d}.parquet" for p in range(positions)]


def test_training_starts_before_the_fetch_ends_and_read_shards_are_deleted(hub, tmp_path, tok_dir, shards):
    repo = "tests/stream-many"
    hub.add(repo, shards)
    hub.rate = 2_000_000  # bytes/s: the whole dataset takes seconds, one file a fraction of one
    try:
        proc = trainer(repo, tmp_path, tok_dir, "--iterations", "100")
        held_at_first_step = None
        for event in events(proc):
            if event["event"] == "step" and held_at_first_step is None:
                held_at_first_step = on_disk(tmp_path)
        assert proc.wait() == 0, proc.stderr.read()[-3000:]
    finally:
        hub.rate = None
    val = VAL
    order = read_order(FILES - 1, FILES - 1)
    # the first step came with at most the window on disk (the first file, read for the listing's size, and
    # the files AHEAD of the one read): the rest was still to come
    assert held_at_first_step <= {"data/train-00.parquet", *order[:AHEAD + 1]}
    assert len(held_at_first_step) < FILES - 1
    fetched = {p for p in shards if hub.gets(repo, p)}
    assert val in fetched and (tmp_path / "data" / val).is_file()  # the validation file stays
    # 100 steps of 1,024 tokens read about 4 files: what was read and left behind is gone, the window remains
    assert not on_disk(tmp_path) - {"data/train-00.parquet", *order}
    assert len(on_disk(tmp_path) - {"data/train-00.parquet"}) <= AHEAD + 1
    assert len(fetched - {val}) < FILES - 1  # nothing past the window was fetched


def test_a_killed_run_resumes_fetching_only_what_its_loader_still_needs(hub, tmp_path, tok_dir, shards):
    repo = "tests/stream-resume"
    hub.add(repo, shards)
    proc = trainer(repo, tmp_path, tok_dir, "--iterations", "200", "--checkpoint-every", "70")
    for event in events(proc):
        if event["event"] == "checkpoint" and event["step"] == 70:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    saved = checkpoint.load(checkpoint.latest(tmp_path / "run"), 0, 1)
    position = saved["rank"]["loader"]["shard"]
    assert position >= 1  # 70 steps of 1,024 tokens are past the first file
    passed = set(read_order(FILES - 1, position))
    assert not passed & on_disk(tmp_path)  # read and deleted before the kill
    seen = len(hub.log)
    resumed = trainer(repo, tmp_path, tok_dir, "--iterations", "200")
    results = [e for e in events(resumed) if e["event"] == "result"]
    assert resumed.wait() == 0 and results[-1]["status"] == "ok", resumed.stderr.read()[-3000:]
    refetched = {p for m, p, _ in hub.log[seen:] if m == "GET" for f in passed if p.endswith(f)}
    assert not refetched  # the files before the checkpoint's position were not fetched again


def test_a_download_that_fails_mid_run_stops_with_a_checkpoint_and_one_line(hub, tmp_path, tok_dir, shards):
    repo = "tests/stream-broken"
    hub.add(repo, shards)
    order = read_order(FILES - 1, FILES - 1)
    missing = next(f for f in order[AHEAD + 1:] if f != "data/train-00.parquet")  # beyond the first window
    proc = trainer(repo, tmp_path, tok_dir, "--iterations", "300", "--checkpoint-every", "1000")
    result = None
    for event in events(proc):
        if event["event"] == "start":  # listed: now the Hub loses a file the run will need
            del hub.repos[repo].files[missing]
        if event["event"] == "result":
            result = event
    assert proc.wait() == 1
    stderr = proc.stderr.read()
    assert result["status"] == "crashed" and missing in result["error"] and "\n" not in result["error"]
    assert result["error"].startswith("data fetch failed:")
    assert 0 < result["steps"] < 300
    latest = checkpoint.latest(tmp_path / "run")
    assert latest is not None and checkpoint.load(latest, 0, 1)["state"]["step"] == result["steps"], stderr[-2000:]


def test_two_nodes_each_fetch_only_the_shards_their_ranks_read(hub, tmp_path, tok_dir, shards):
    """Two nodes of two ranks (four processes, each node with its own data folder): every node's folder holds
    only shards of its own order, and the two sets are disjoint."""
    from nanolaunch.backends.local import free_port

    repo = "tests/stream-nodes"
    hub.add(repo, shards)
    port = free_port()
    procs = []
    for node in (0, 1):
        args = ["--depth", "2", "--head-dim", "32", "--vocab-size", "1024", "--seq-len", "64", "--device-batch",
                "4", "--total-batch", "1024", "--eval-every", "0", "--eval-tokens", "1024", "--dtype", "fp32",
                "--threads", "1", "--data", repo, "--shards", str(FILES), "--fetch-ahead", "1", "--keep-data",
                "--data-dir", tmp_path / f"node{node}", "--tokenizer-dir", tok_dir, "--run-dir", tmp_path / "run",
                "--iterations", "40"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
             "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
             "-m", "trainer.train", *map(str, args)], cwd=REPO, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    held = [{f"data/{p.name}" for p in (tmp_path / f"node{n}" / "data").glob("train-*.parquet")} - {VAL}
            for n in (0, 1)]
    for node in (0, 1):
        mine = {f"data/train-{s:02d}.parquet" for s in shard_order(FILES - 1, 0, 0, node=node, nodes=2)}
        assert held[node] and held[node] <= mine | {"data/train-00.parquet"}  # -00: measured for the listing
    assert not (held[0] & held[1]) - {"data/train-00.parquet"}
