"""Data shards to token batches: listing, the train/val split, per-rank reading and the TokenLoader.

The unit of reading is a parquet row group (or one .txt file). Each epoch shuffles the shards with the seed
and deals them to the nodes; each shard's row groups are shuffled and dealt to the node's ranks, so ranks
never read the same text and a node reads its shards one after another (trainer/stream.py fetches them in
that order while training). A rank's row groups are tokenized (BOS before each document) and concatenated
into one token stream, which is cut into (B, T) batches; consecutive batches share one boundary token so
every token is a target once.
"""
from __future__ import annotations

import itertools
import random
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from .corpus import build_stdlib_corpus
from .hub import DataError, verify_parquet

__all__ = ["DataError", "Shards", "TokenLoader", "build_stdlib_corpus", "iter_documents", "list_shards", "read_unit",
           "row_groups", "shard_order", "split_shards"]

STATE_VERSION = 2  # 2: shard-major order (a node's shards, then their row groups)


def list_shards(data_dir) -> list[Path]:
    """Sorted parquet shards in data_dir, or else its *.txt files (one document each)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    paths = sorted(data_dir.glob("*.parquet")) or sorted(data_dir.glob("*.txt"))
    if not paths:
        raise DataError(f"no *.parquet shards or *.txt files in {data_dir}")
    return paths


def split_shards(paths) -> tuple[list[Path], list[Path]]:
    """(train, val): the last shard is held out for validation."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise DataError(f"need at least 2 shards (training + validation), got {len(paths)}")
    return paths[:-1], paths[-1:]


def row_groups(paths, column: str = "text") -> list[tuple[int, int]]:
    """Every reading unit as (index into paths, row group); a .txt file is one unit."""
    import pyarrow.parquet as pq

    units = []
    for i, path in enumerate(paths):
        if Path(path).suffix == ".parquet":
            try:
                n = pq.ParquetFile(path).num_row_groups
            except Exception:
                verify_parquet(path, column, full=False)  # raises the one-line DataError naming the file
                raise
            units.extend((i, g) for g in range(n))
        else:
            units.append((i, 0))
    return units


def read_unit(paths, unit: tuple[int, int], column: str = "text") -> list[str]:
    import pyarrow.parquet as pq

    path = Path(paths[unit[0]])
    if path.suffix != ".parquet":
        return [path.read_text(encoding="utf-8", errors="replace")]
    table = pq.ParquetFile(path).read_row_group(unit[1], columns=[column])
    return [t for t in table.column(column).to_pylist() if t]


def iter_documents(paths, *, rank: int = 0, world_size: int = 1, start: int | None = None,
                   column: str = "text") -> Iterator[str]:
    """Document texts of rank's row groups (rank, rank+world_size, … in file order), from its
    `start`-th row group on. For tokenizer training and inspection; TokenLoader shuffles instead."""
    paths = [Path(p) for p in paths]
    for unit in row_groups(paths, column)[rank::world_size][start or 0:]:
        yield from read_unit(paths, unit, column)


class Shards:
    """Shard files that are all on disk (a folder, the standard-library corpus): the loader's file source.
    trainer/stream.py's Stream has the same methods for shards that are fetched while training."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        """The readable file of shard i (a stream waits until it is fetched)."""
        return self.paths[i]

    def reading(self, position: int) -> None:
        """The loader's earliest needed shard is `position` in its node's order (a stream fetches from there)."""

    def failed(self) -> str | None:
        """Why shards can no longer come (a stream's failed fetch); files on disk never fail here."""
        return None

    def close(self) -> None:
        """Stop fetching (a stream); nothing to stop for files on disk."""


def shard_order(n_shards: int, seed: int, epoch: int, node: int = 0, nodes: int = 1) -> list[int]:
    """The shards node `node` reads in epoch `epoch`, in order: a seeded shuffle, every nodes-th shard. A node
    reads whole shards, so it fetches only its own; a stream fetches them in this order."""
    order = list(range(n_shards))
    random.Random(f"{seed}:{epoch}").shuffle(order)  # str seed: no seed/epoch collisions
    return order[node::nodes]


class TokenLoader:
    """Endless (loop=True) or one-pass (loop=False) stream of (x, y) int64 batches of shape (B, T).

    Order: each epoch, the node's shards in `shard_order`; within a shard, its row groups shuffled and dealt to
    the node's ranks (every local_world_size-th). Nodes read different shards and ranks different row groups,
    so no two ranks read the same text. local_world_size=world_size (the default) makes one node of all ranks.

    state_dict() is the position of the next token as (epoch, shard in the node's order, row group in this
    rank's share of it, tokens of it already used); a loader built with that state re-reads and re-tokenizes
    that row group and yields exactly the batches the original would have. The state is per rank.
    """

    def __init__(self, shards, tokenizer, batch_size: int, seq_len: int, *, rank: int = 0,
                 world_size: int = 1, local_world_size: int | None = None, seed: int = 0,
                 state: dict | None = None, loop: bool = True, threads: int = 2, column: str = "text"):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        local = local_world_size or world_size
        if world_size % local:
            raise DataError(f"world_size {world_size} is not a multiple of {local} ranks per node")
        self.shards = shards if hasattr(shards, "reading") else Shards(shards)
        self.tokenizer, self.B, self.T = tokenizer, batch_size, seq_len
        self.rank, self.world_size, self.seed, self.loop, self.threads = rank, world_size, seed, loop, threads
        self.local_world_size, self.local_rank = local, rank % local
        self.node, self.nodes = rank // local, world_size // local
        self.column = column
        if len(self.shards) < self.nodes:
            raise DataError(f"{len(self.shards)} shards cannot feed {self.nodes} nodes: each node reads whole shards; "
                            "use more shards")
        self._orders: dict[int, list[int]] = {}
        self._units: dict[tuple[int, int], list[int]] = {}  # (epoch, shard): this rank's row groups, in order
        self._lock = threading.Lock()  # the tokenizing thread looks up order and units too
        self._buf = np.empty(0, dtype=np.int32)
        self._segs: deque[list[int]] = deque()  # [epoch, shard pos, unit pos, n_tokens] of each unit in _buf
        self._head_used = 0  # tokens of _segs[0] already consumed (not in _buf)
        self._read = (0, 0, 0)  # (epoch, shard pos, unit pos) of the next unit to read (maybe past a shard's end)
        self._skip = 0  # tokens to drop from the next unit read (resuming mid-unit)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self._pending = None  # (position, future) reading and tokenizing the next unit in the background
        if state is not None:
            self._restore(state)
        self._cursor = None
        self._tell()

    # -- order and reading -------------------------------------------------------------------------
    def order(self, epoch: int) -> list[int]:
        """This node's shards (indices) in the order epoch `epoch` reads them."""
        with self._lock:
            if epoch not in self._orders:
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = shard_order(len(self.shards), self.seed, epoch, self.node, self.nodes)
            return self._orders[epoch]

    def units(self, epoch: int, spos: int) -> list[int]:
        """This rank's row groups of the spos-th shard of epoch `epoch`: the shard's row groups shuffled, dealt
        to the node's ranks. Opens the shard (a stream waits for it)."""
        key = (epoch, spos)
        if key not in self._units:
            shard = self.order(epoch)[spos]
            groups = list(range(_row_group_count(self.shards.path(shard), self.column)))
            random.Random(f"{self.seed}:{epoch}:{shard}").shuffle(groups)
            with self._lock:
                self._units = {k: v for k, v in self._units.items() if k >= (epoch - 1, 0)}
                self._units[key] = groups[self.local_rank::self.local_world_size]
        return self._units[key]

    def _settle(self, at: tuple[int, int, int]) -> tuple[int, int, int]:
        """`at` moved past the shards in which this rank has nothing (left) to read."""
        epoch, spos, upos = at
        empty_shards = 0
        while not (self._exhausted(epoch) or upos < len(self.units(epoch, spos))):
            empty_shards = empty_shards + 1 if upos == 0 else 0
            if empty_shards > len(self.order(epoch)):
                raise DataError(f"rank {self.rank} gets no row group of {len(self.shards)} shards: "
                                f"{self.local_world_size} ranks per node need at least that many row groups "
                                "per shard; use smaller row groups or fewer ranks")
            upos, spos = 0, spos + 1
            if spos == len(self.order(epoch)):
                epoch, spos = epoch + 1, 0
        return epoch, spos, upos

    def _exhausted(self, epoch: int) -> bool:
        return not self.loop and epoch > 0

    def _read_unit(self, at: tuple[int, int, int]):
        """(settled position, its tokens), or (position, None) when a one-pass loader is done."""
        at = self._settle(at)
        if self._exhausted(at[0]):
            return at, None
        epoch, spos, upos = at
        path = self.shards.path(self.order(epoch)[spos])
        docs = read_unit([path], (0, self.units(epoch, spos)[upos]), self.column)
        ids = self.tokenizer.encode_batch(docs, num_threads=self.threads)
        bos = [self.tokenizer.bos_id]
        stream = itertools.chain.from_iterable(itertools.chain(bos, d) for d in ids)
        return at, np.fromiter(stream, dtype=np.int32, count=sum(map(len, ids)) + len(ids))

    def _load_next(self) -> bool:
        """Append the next unit's tokens to the buffer; False when a one-pass loader is done."""
        pending, self._pending = self._pending, None
        at, tokens = pending[1].result() if pending and pending[0] == self._read else self._read_unit(self._read)
        if tokens is None:
            if self._read == (0, 0, 0) and not self._segs:
                raise DataError(f"rank {self.rank} gets no row group of {len(self.shards)} shards: {self.world_size} "
                                "ranks need at least that many row groups; use smaller row groups or fewer ranks")
            self._read = at
            return False
        self._read = (at[0], at[1], at[2] + 1)
        self._pending = (self._read, self._pool.submit(self._read_unit, self._read))  # overlaps the step
        if len(tokens) > self._skip:
            if not self._segs:
                self._head_used = self._skip
            self._segs.append([*at, len(tokens)])
            self._buf = np.concatenate([self._buf, tokens[self._skip:]])
        self._skip = 0
        return True

    def _tell(self) -> None:
        """Tell the shard source the earliest shard this rank still needs, when it changes."""
        epoch, spos = (self._segs[0][0], self._segs[0][1]) if self._segs else self._read[:2]
        cursor = epoch * len(self.order(0)) + spos
        if cursor != self._cursor:
            self._cursor = cursor
            self.shards.reading(cursor)

    # -- batches -------------------------------------------------------------------------------------
    def next_batch(self):
        import torch

        need = self.B * self.T + 1
        while len(self._buf) < need:
            if not self._load_next():
                self._buf, self._segs, self._head_used = self._buf[:0], deque(), 0  # drop the tail
                raise StopIteration
        chunk = torch.from_numpy(self._buf[:need].astype(np.int64))
        x, y = chunk[:-1].view(self.B, self.T), chunk[1:].view(self.B, self.T)
        self._buf = self._buf[need - 1:]  # the last target is the next batch's first input
        self._head_used += need - 1
        while self._segs and self._head_used >= self._segs[0][3]:
            self._head_used -= self._segs.popleft()[3]
        self._tell()
        return x, y

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    @property
    def epoch(self) -> int:
        """Completed passes over this rank's data, counted at the next token to be used."""
        return self._segs[0][0] if self._segs else self._read[0]

    # -- resume --------------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "local_world_size": self.local_world_size, "n_shards": len(self.shards),
                "vocab_size": self.tokenizer.vocab_size}  # offsets count tokens of this tokenizer

    def state_dict(self) -> dict:
        at, used = (self._segs[0][:3], self._head_used) if self._segs else (self._read, 0)
        return {**self._identity(), "epoch": at[0], "shard": at[1], "unit": at[2], "offset": used}

    def _restore(self, state: dict) -> None:
        mine = self._identity()
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise DataError(f"loader state does not fit this loader: saved with {theirs}, this one has {mine}")
        epoch, spos, upos, offset = (int(state[k]) for k in ("epoch", "shard", "unit", "offset"))
        if not (epoch >= 0 and offset >= 0 and upos >= 0 and 0 <= spos < len(self.order(epoch))):
            raise DataError(f"loader state points at epoch {epoch} shard {spos}, outside the data")
        self._read, self._skip = (epoch, spos, upos), offset

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _row_group_count(path: Path, column: str) -> int:
    import pyarrow.parquet as pq

    if path.suffix != ".parquet":
        return 1
    try:
        return pq.ParquetFile(path).num_row_groups
    except Exception:
        verify_parquet(path, column, full=False)  # raises the one-line DataError naming the file
        raise
