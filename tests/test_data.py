import itertools
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer.corpus import MARKER
from trainer.data import DataError, DownloadError, ShardError, TokenLoader, build_stdlib_corpus, \
    download_shards, iter_documents, list_shards, read_unit, split_shards, verify_shard


# -- a real HTTP server on loopback --------------------------------------------------------------------
class ShardServer:
    """Serves files from `root`; counts requests and can fail (503), cut responses short or ignore Range."""

    def __init__(self, root):
        self.root, self.lock = root, threading.Lock()
        self.requests, self.ranges = Counter(), []
        self.fail, self.short = Counter(), Counter()  # name -> how many requests to spoil
        self.range_ok = True
        self.barrier, self.barrier_left, self.barrier_broken = None, 0, False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                with server.lock:
                    server.requests[name] += 1
                    server.ranges.append((name, self.headers.get("Range")))
                    spoil, short = server.fail[name] > 0, server.short[name] > 0
                    server.fail[name] -= spoil
                    server.short[name] -= short
                    wait, server.barrier_left = server.barrier_left > 0, server.barrier_left - 1
                if wait:  # first requests meet here: only parallel downloads get through
                    try:
                        server.barrier.wait()
                    except threading.BrokenBarrierError:
                        server.barrier_broken = True
                if spoil:
                    return self.send_error(503)
                path = server.root / name
                if not path.is_file():
                    return self.send_error(404)
                data, start = path.read_bytes(), 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and server.range_ok:
                    start = int(m[1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        return self.end_headers()
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if short else body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/shard_{{index:05d}}.parquet"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def get(self, name):
        return self.requests[name]


def make_shard(path, seed, n_docs=300):
    docs = [f"document {seed}-{i}: " + "lorem ipsum dolor sit amet " * (1 + (i * 7 + seed) % 13)
            for i in range(n_docs)]
    pq.write_table(pa.table({"text": docs}), path, row_group_size=100)
    return path.read_bytes()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    srv = ShardServer(root)
    srv.data = {i: make_shard(root / f"shard_{i:05d}.parquet", i) for i in range(6)}
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def name(i):
    return f"shard_{i:05d}.parquet"


def test_download_parallel(server, tmp_path):
    server.barrier, server.barrier_left = threading.Barrier(4, timeout=5), 4
    seen = []
    out = tmp_path / "data"
    paths = download_shards(server.url, [0, 1, 2, 3, 4, 5], out, workers=4,
                            progress=lambda d, t: seen.append((d, t)))
    assert not server.barrier_broken  # 4 requests were in flight at once
    assert paths == [out / name(i) for i in range(6)]
    assert all(p.read_bytes() == server.data[i] for i, p in enumerate(paths))
    assert seen == [(d, 6) for d in range(7)]
    assert sorted(p.name for p in out.iterdir()) == [name(i) for i in range(6)]  # no .part left


def test_retries_with_backoff(server, tmp_path):
    server.fail[name(1)] = 3
    paths = download_shards(server.url, [0, 1], tmp_path, retries=3, backoff=0.001)
    assert server.get(name(1)) == 4 and paths[1].read_bytes() == server.data[1]
    server.fail[name(2)] = 3
    with pytest.raises(DownloadError) as e:
        download_shards(server.url, [2], tmp_path, retries=2, backoff=0.001)
    msg = str(e.value)
    assert "\n" not in msg and name(2) in msg and "503" in msg and "3 attempts" in msg
    assert server.get(name(2)) == 3 and not (tmp_path / name(2)).exists()


def test_missing_shard_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match=f"{name(9)}.*404"):
        download_shards(server.url, [9], tmp_path, retries=5, backoff=0.001)
    assert server.get(name(9)) == 1


def test_corrupt_shard_fails_verification(server, tmp_path):
    tmp_path = tmp_path / "data"
    (server.root / name(3)).write_bytes(server.data[3][:len(server.data[3]) // 2])  # truncated upstream
    with pytest.raises(DownloadError) as e:
        download_shards(server.url, [3], tmp_path, retries=1, backoff=0.001)
    msg = str(e.value)
    assert "\n" not in msg and name(3) in msg and "parquet" in msg
    assert server.get(name(3)) == 2 and list(tmp_path.iterdir()) == []  # no bad shard, no .part
    (server.root / name(4)).write_bytes(b"PAR1" + b"x" * 100 + b"PAR1")  # garbage, right magic
    with pytest.raises(DownloadError, match=name(4)):
        download_shards(server.url, [4], tmp_path, retries=0)


def test_present_shard_is_not_downloaded_again(server, tmp_path):
    download_shards(server.url, [0, 1], tmp_path)
    assert server.get(name(0)) == server.get(name(1)) == 1
    (tmp_path / name(1)).write_bytes(b"not parquet")  # a damaged copy is replaced
    paths = download_shards(server.url, [0, 1], tmp_path)
    assert server.get(name(0)) == 1 and server.get(name(1)) == 2
    assert paths[1].read_bytes() == server.data[1]


@pytest.mark.parametrize("range_ok", [True, False])
def test_partial_download_resumes(server, tmp_path, range_ok):
    server.range_ok = range_ok
    data = server.data[2]
    (tmp_path / (name(2) + ".part")).write_bytes(data[:1000])
    [path] = download_shards(server.url, [2], tmp_path)
    assert path.read_bytes() == data and server.get(name(2)) == 1
    assert server.ranges == [(name(2), "bytes=1000-")]
    assert not (tmp_path / (name(2) + ".part")).exists()


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.short[name(5)] = 1  # first response stops half way
    [path] = download_shards(server.url, [5], tmp_path, backoff=0.001)
    half = len(server.data[5]) // 2
    assert server.ranges == [(name(5), None), (name(5), f"bytes={half}-")]
    assert path.read_bytes() == server.data[5]


def test_bad_partial_is_replaced(server, tmp_path):
    (tmp_path / (name(0) + ".part")).write_bytes(b"junk" * 300)  # not a prefix of the shard
    [path] = download_shards(server.url, [0], tmp_path, backoff=0.001)
    assert path.read_bytes() == server.data[0] and server.get(name(0)) == 2


def test_verify_shard(tmp_path):
    make_shard(tmp_path / "a.parquet", 0)
    assert verify_shard(tmp_path / "a.parquet", full=True) == 300
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(ShardError, match="b.parquet has no string column 'text'"):
        verify_shard(tmp_path / "b.parquet")


# -- the stdlib corpus and shard listing ---------------------------------------------------------------
def test_build_stdlib_corpus(tmp_path):
    a = build_stdlib_corpus(tmp_path / "a", n_shards=3, docs_per_row_group=16, max_chars=300_000)
    b = build_stdlib_corpus(tmp_path / "b", n_shards=3, docs_per_row_group=16, max_chars=300_000)
    assert [p.name for p in a] == [name(i) for i in range(3)]
    docs = [pq.read_table(p).column("text").to_pylist() for p in a]
    assert docs == [pq.read_table(p).column("text").to_pylist() for p in b]  # deterministic
    assert 280_000 < sum(len(d) for shard in docs for d in shard) <= 300_000
    assert all(pq.ParquetFile(p).metadata.row_group(0).num_rows == 16 for p in a)
    assert sorted(x.name for x in (tmp_path / "a").iterdir()) == sorted([MARKER] + [p.name for p in a])
    mtime = a[0].stat().st_mtime_ns
    assert build_stdlib_corpus(tmp_path / "a", n_shards=3, docs_per_row_group=16, max_chars=300_000) == a
    assert a[0].stat().st_mtime_ns == mtime  # same settings: nothing rewritten
    assert len(build_stdlib_corpus(tmp_path / "a", n_shards=2, max_chars=300_000)) == 2
    assert len(list_shards(tmp_path / "a")) == 2  # the third shard of the older build is gone


def test_corpus_refuses_foreign_shards(server):
    with pytest.raises(ValueError, match="already holds 6 parquet shards"):
        build_stdlib_corpus(server.root, max_chars=100_000)
    assert (server.root / name(0)).read_bytes() == server.data[0]


def test_list_and_split_shards(tmp_path, corpus):
    assert list_shards(corpus[0].parent) == corpus
    train, val = split_shards(corpus)
    assert train == corpus[:-1] and val == corpus[-1:]
    with pytest.raises(DataError, match="at least 2 shards"):
        split_shards(corpus[:1])
    with pytest.raises(DataError, match="does not exist"):
        list_shards(tmp_path / "nope")
    (tmp_path / "shard_00001.parquet.part").write_bytes(b"x")
    with pytest.raises(DataError, match="no \\*.parquet shards or \\*.txt files"):
        list_shards(tmp_path)
    for n in ["b.txt", "a.txt"]:
        (tmp_path / n).write_text(f"text of {n}")
    assert [p.name for p in list_shards(tmp_path)] == ["a.txt", "b.txt"]
    assert list(iter_documents(list_shards(tmp_path))) == ["text of a.txt", "text of b.txt"]


def test_iter_documents_ranks(corpus):
    train, _ = split_shards(corpus)
    everything = list(iter_documents(train))
    r0, r1 = list(iter_documents(train, world_size=2)), list(iter_documents(train, rank=1, world_size=2))
    assert Counter(r0) + Counter(r1) == Counter(everything)
    assert list(iter_documents(train, start=1)) == everything[32:]  # row groups of 32 documents


# -- the token loader ----------------------------------------------------------------------------------
def unit_tokens(tok, paths, unit):
    return [t for doc in read_unit(paths, unit) for t in [tok.bos_id] + tok.encode(doc)]


def expected_stream(loader, epochs):
    return torch.tensor([t for e in range(epochs) for u in loader.order(e)
                         for t in unit_tokens(loader.tokenizer, loader.paths, u)])


def test_batches_are_the_document_stream(corpus, tokenizer):
    train, _ = split_shards(corpus)
    B, T = 8, 128
    loader = TokenLoader(train, tokenizer, B, T, seed=3)
    stream = expected_stream(loader, 2)
    assert stream[0] == tokenizer.bos_id
    for k in range(len(stream) // (B * T) - 1):  # into the second epoch
        x, y = loader.next_batch()
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
        assert torch.equal(x.flatten(), stream[k * B * T:(k + 1) * B * T])
        assert torch.equal(y.flatten(), stream[k * B * T + 1:(k + 1) * B * T + 1])
    assert loader.epoch == 1


def test_seed_order(corpus, tokenizer):
    train, _ = split_shards(corpus)
    a, b, c = (TokenLoader(train, tokenizer, 2, 64, seed=s) for s in (0, 0, 1))
    first = [a.next_batch()[0] for _ in range(20)]
    assert all(torch.equal(x, b.next_batch()[0]) for x in first)
    assert not all(torch.equal(x, c.next_batch()[0]) for x in first)
    assert a.order(0) != a.order(1) and sorted(a.order(0)) == sorted(a.order(1))


def test_ranks_are_disjoint(corpus, tokenizer):
    train, _ = split_shards(corpus)
    one = TokenLoader(train, tokenizer, 2, 64, seed=5)
    r0, r1 = (TokenLoader(train, tokenizer, 2, 64, seed=5, rank=r, world_size=2) for r in (0, 1))
    for e in (0, 1):
        assert not set(r0.order(e)) & set(r1.order(e))
        assert sorted(r0.order(e) + r1.order(e)) == sorted(one.order(e))
    docs = [Counter(d for u in ld.order(0) for d in read_unit(train, u)) for ld in (r0, r1)]
    assert docs[0] + docs[1] == Counter(iter_documents(train))
    x, _ = r1.next_batch()  # and a rank streams its own row groups
    assert torch.equal(x.flatten(), torch.tensor(unit_tokens(tokenizer, train, r1.order(0)[0])[:128]))
    with pytest.raises(DataError, match="9 row groups in 3 shards cannot feed 10 ranks"):
        TokenLoader(train, tokenizer, 2, 64, rank=0, world_size=10)
    with pytest.raises(DataError, match="rank 2 is outside world_size 2"):
        TokenLoader(train, tokenizer, 2, 64, rank=2, world_size=2)


def test_one_pass_and_epochs(corpus, tokenizer):
    train = split_shards(corpus)[0][:1]  # one shard: 3 row groups
    B, T = 4, 64
    once = TokenLoader(train, tokenizer, B, T, loop=False)
    n_tokens = len(expected_stream(once, 1))
    batches = list(itertools.islice(once, 10_000))  # bounded: a broken loop=False must fail, not hang
    assert len(batches) == (n_tokens - 1) // (B * T)
    with pytest.raises(StopIteration):
        once.next_batch()
    assert once.epoch == 1
    looping = TokenLoader(train, tokenizer, B, T)
    for k in range(1, len(batches) + 3):
        looping.next_batch()
        assert looping.epoch == int(k * B * T >= n_tokens), k


def test_resume_is_exact(corpus, tokenizer):
    train = split_shards(corpus)[0][:1]
    loader = TokenLoader(train, tokenizer, 4, 64, seed=7)
    states, batches, epochs = [], [], []
    for _ in range(1600):  # past two epoch boundaries
        states.append(json.loads(json.dumps(loader.state_dict())))
        epochs.append(loader.epoch)
        batches.append(loader.next_batch())
    crossing = epochs.index(1)
    for k in [0, 1, 2, 17, 350, crossing - 1, crossing, crossing + 1, 1595]:
        resumed = TokenLoader(train, tokenizer, 4, 64, seed=7, state=states[k])
        assert resumed.epoch == epochs[k]
        for x, y in batches[k:k + 5]:
            rx, ry = resumed.next_batch()
            assert torch.equal(rx, x) and torch.equal(ry, y), k
    with pytest.raises(DataError, match="loader state does not fit"):
        TokenLoader(train, tokenizer, 4, 64, seed=8, state=states[3])


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_resume_at_row_group_boundary(corpus, tokenizer, delta):
    train = split_shards(corpus)[0][:1]
    probe = TokenLoader(train, tokenizer, 1, 1, seed=2)
    T = len(unit_tokens(tokenizer, train, probe.order(0)[0])) + delta  # batch 1 ends at/near the boundary
    loader = TokenLoader(train, tokenizer, 1, T, seed=2)
    loader.next_batch()
    state = loader.state_dict()
    assert (state["unit"], state["offset"]) == ((1, 0) if delta == 0 else (0, T) if delta < 0 else (1, 1))
    resumed = TokenLoader(train, tokenizer, 1, T, seed=2, state=state)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(loader.next_batch(), resumed.next_batch()))


def test_one_pass_state_stays_exhausted(corpus, tokenizer):
    _, val = split_shards(corpus)
    loader = TokenLoader(val, tokenizer, 4, 256, loop=False)
    for _ in loader:
        pass
    with pytest.raises(StopIteration):
        TokenLoader(val, tokenizer, 4, 256, loop=False, state=loader.state_dict()).next_batch()
