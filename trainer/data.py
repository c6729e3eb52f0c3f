"""Data shards to token batches: listing, the train/val split, per-rank reading and the TokenLoader.

The unit of reading is a parquet row group (or one .txt file). Each epoch shuffles the row groups
with the seed; rank r takes every world_size-th of them, so ranks never read the same text. A rank's
row groups are tokenized (BOS before each document) and concatenated into one token stream, which is
cut into (B, T) batches; consecutive batches share one boundary token so every token is a target once.
"""
from __future__ import annotations

import itertools
import random
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from .corpus import build_stdlib_corpus
from .hub import DataError, verify_parquet

__all__ = ["DataError", "TokenLoader", "build_stdlib_corpus", "iter_documents", "list_shards", "read_unit",
           "row_groups", "split_shards"]

STATE_VERSION = 1


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


class TokenLoader:
    """Endless (loop=True) or one-pass (loop=False) stream of (x, y) int64 batches of shape (B, T).

    state_dict() is the position of the next token as (epoch, row group in this rank's order, tokens
    of it already used); a loader built with that state re-reads and re-tokenizes that row group and
    yields exactly the batches the original would have. The state is per rank.
    """

    def __init__(self, paths, tokenizer, batch_size: int, seq_len: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, state: dict | None = None, loop: bool = True,
                 threads: int = 2, column: str = "text"):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.paths = [Path(p) for p in paths]
        self.tokenizer, self.B, self.T = tokenizer, batch_size, seq_len
        self.rank, self.world_size, self.seed, self.loop, self.threads = rank, world_size, seed, loop, threads
        self.column = column
        self.units = row_groups(self.paths, column)
        if len(self.units) < world_size:
            raise DataError(f"{len(self.units)} row groups in {len(self.paths)} shards cannot feed "
                            f"{world_size} ranks; use more shards or smaller row groups")
        self._orders: dict[int, list[tuple[int, int]]] = {}
        self._buf = np.empty(0, dtype=np.int32)
        self._segs: deque[list[int]] = deque()  # [epoch, pos, n_tokens] of each unit in _buf
        self._head_used = 0  # tokens of _segs[0] already consumed (not in _buf)
        self._read = (0, 0)  # (epoch, pos) of the next unit to read
        self._skip = 0  # tokens to drop from the next unit read (resuming mid-unit)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self._pending = None  # ((epoch, pos), future) tokenizing the next unit in the background
        if state is not None:
            self._restore(state)

    # -- order and reading -------------------------------------------------------------------------
    def order(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's row groups, as (shard index, row group), in the order epoch `epoch` reads them."""
        if epoch not in self._orders:
            units = list(self.units)
            random.Random(f"{self.seed}:{epoch}").shuffle(units)  # str seed: no seed/epoch collisions
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = units[self.rank::self.world_size]
        return self._orders[epoch]

    def _exhausted(self, at: tuple[int, int]) -> bool:
        return not self.loop and at[0] > 0

    def _next_pos(self, at: tuple[int, int]) -> tuple[int, int]:
        epoch, pos = at
        return (epoch, pos + 1) if pos + 1 < len(self.order(epoch)) else (epoch + 1, 0)

    def _tokenize(self, unit: tuple[int, int]) -> np.ndarray:
        docs = read_unit(self.paths, unit, self.column)
        ids = self.tokenizer.encode_batch(docs, num_threads=self.threads)
        bos = [self.tokenizer.bos_id]
        stream = itertools.chain.from_iterable(itertools.chain(bos, d) for d in ids)
        return np.fromiter(stream, dtype=np.int32, count=sum(map(len, ids)) + len(ids))

    def _prefetch(self, at: tuple[int, int]) -> None:
        if not self._exhausted(at):  # looked up here: order() is not thread-safe
            self._pending = (at, self._pool.submit(self._tokenize, self.order(at[0])[at[1]]))

    def _load_next(self) -> bool:
        """Append the next unit's tokens to the buffer; False when a one-pass loader is done."""
        at = self._read
        if self._exhausted(at):
            return False
        pending, self._pending = self._pending, None
        tokens = pending[1].result() if pending and pending[0] == at else \
            self._tokenize(self.order(at[0])[at[1]])
        self._read = self._next_pos(at)
        self._prefetch(self._read)  # tokenizing overlaps with the training step
        if len(tokens) > self._skip:
            if not self._segs:
                self._head_used = self._skip
            self._segs.append([at[0], at[1], len(tokens)])
            self._buf = np.concatenate([self._buf, tokens[self._skip:]])
        self._skip = 0
        return True

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
        while self._segs and self._head_used >= self._segs[0][2]:
            self._head_used -= self._segs.popleft()[2]
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
    def state_dict(self) -> dict:
        epoch, pos, used = (*self._segs[0][:2], self._head_used) if self._segs else (*self._read, 0)
        return {"version": STATE_VERSION, "epoch": epoch, "unit": pos, "offset": used, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "n_units": len(self.units),
                "vocab_size": self.tokenizer.vocab_size}

    def _restore(self, state: dict) -> None:
        mine = {"version": STATE_VERSION, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "n_units": len(self.units),
                "vocab_size": self.tokenizer.vocab_size}  # offsets count tokens of this tokenizer
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise DataError(f"loader state does not fit this loader: saved with {theirs}, this one has {mine}")
        epoch, pos, offset = int(state["epoch"]), int(state["unit"]), int(state["offset"])
        if not (epoch >= 0 and offset >= 0 and 0 <= pos < len(self.order(epoch))):
            raise DataError(f"loader state points at epoch {epoch} row group {pos}, outside the data")
        self._read, self._skip = (epoch, pos), offset

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
