import itertools
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer.corpus import MARKER
from trainer.data import DataError, TokenLoader, build_stdlib_corpus, iter_documents, list_shards, read_unit, \
    row_groups, shard_order, split_shards
from trainer.hub import verify_parquet


def make_shard(path, seed, n_docs=300):
    docs = [f"document {seed}-{i}: " + "lorem ipsum dolor sit amet " * (1 + (i * 7 + seed) % 13)
            for i in range(n_docs)]
    pq.write_table(pa.table({"text": docs}), path, row_group_size=100)
    return path.read_bytes()


def name(i):
    return f"shard_{i:05d}.parquet"


def test_verify_parquet(tmp_path):
    make_shard(tmp_path / "a.parquet", 0)
    assert verify_parquet(tmp_path / "a.parquet") == 300
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="b.parquet has no string column 'text'"):
        verify_parquet(tmp_path / "b.parquet")
    assert verify_parquet(tmp_path / "b.parquet", "body") == 1
    (tmp_path / "c.parquet").write_bytes((tmp_path / "a.parquet").read_bytes()[:-100])
    with pytest.raises(DataError, match="c.parquet is not a readable parquet file"):
        verify_parquet(tmp_path / "c.parquet")


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


def test_corpus_refuses_foreign_shards(tmp_path):
    data = {i: make_shard(tmp_path / name(i), i) for i in range(6)}
    with pytest.raises(ValueError, match="already holds 6 parquet shards"):
        build_stdlib_corpus(tmp_path, max_chars=100_000)
    assert (tmp_path / name(0)).read_bytes() == data[0]


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


def read_order(loader, epoch):
    """(shard, row group) as the loader reads them in `epoch`."""
    return [(s, g) for spos, s in enumerate(loader.order(epoch)) for g in loader.units(epoch, spos)]


def expected_stream(loader, epochs):
    return torch.tensor([t for e in range(epochs) for u in read_order(loader, e)
                         for t in unit_tokens(loader.tokenizer, loader.shards.paths, u)])


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
    assert read_order(a, 0) != read_order(a, 1) and sorted(read_order(a, 0)) == sorted(read_order(a, 1))


def test_ranks_are_disjoint(corpus, tokenizer):
    train, _ = split_shards(corpus)
    one = TokenLoader(train, tokenizer, 2, 64, seed=5)
    r0, r1 = (TokenLoader(train, tokenizer, 2, 64, seed=5, rank=r, world_size=2) for r in (0, 1))
    for e in (0, 1):
        assert not set(read_order(r0, e)) & set(read_order(r1, e))
        assert sorted(read_order(r0, e) + read_order(r1, e)) == sorted(read_order(one, e))
    docs = [Counter(d for u in read_order(ld, 0) for d in read_unit(train, u)) for ld in (r0, r1)]
    assert docs[0] + docs[1] == Counter(iter_documents(train))
    x, _ = r1.next_batch()  # and a rank streams its own row groups
    assert torch.equal(x.flatten(), torch.tensor(unit_tokens(tokenizer, train, read_order(r1, 0)[0])[:128]))
    with pytest.raises(DataError, match="rank 2 is outside world_size 2"):
        TokenLoader(train, tokenizer, 2, 64, rank=2, world_size=2)


def test_nodes_read_whole_shards_in_a_seeded_order(corpus, tokenizer):
    """Two nodes of two ranks: each node reads its own shards (so it fetches only those), its ranks share
    their row groups, and together the four ranks read every row group once per epoch."""
    train, _ = split_shards(corpus)
    loaders = [TokenLoader(train, tokenizer, 2, 64, seed=1, rank=r, world_size=4, local_world_size=2)
               for r in range(4)]
    for e in (0, 1):
        node_shards = [{s for s, _ in read_order(ld, e)} for ld in loaders]
        assert node_shards[0] == node_shards[1] and node_shards[2] == node_shards[3]
        assert not node_shards[0] & node_shards[2]
        assert sorted(u for ld in loaders for u in read_order(ld, e)) == sorted(row_groups(train))
    assert loaders[0].order(0) == shard_order(3, 1, 0, node=0, nodes=2)
    with pytest.raises(DataError, match="3 shards cannot feed 4 nodes"):
        TokenLoader(train, tokenizer, 2, 64, rank=0, world_size=4, local_world_size=1)
    starved = TokenLoader(train, tokenizer, 2, 64, rank=5, world_size=6)  # 3 row groups per shard, 6 ranks
    with pytest.raises(DataError, match="rank 5 gets no row group of 3 shards"):
        starved.next_batch()
    starved_once = TokenLoader(train[:1], tokenizer, 2, 64, rank=5, world_size=6, loop=False)  # validation
    with pytest.raises(DataError, match="rank 5 gets no row group of 1 shards"):
        starved_once.next_batch()


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
    T = len(unit_tokens(tokenizer, train, read_order(probe, 0)[0])) + delta  # batch 1 ends at/near the boundary
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
