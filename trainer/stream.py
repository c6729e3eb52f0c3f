"""Hub shards fetched while training: in the order this node's loaders read them, a bounded number ahead,
onto the node's own disk; shards every local rank has moved past are deleted unless the data is kept.

Local rank 0 of each node runs the fetch in background threads. Every local rank's loader says which shard
it still needs first (its cursor, a small file), and waits for a shard's ready marker before opening it, so
the first step needs only the first shard. A download that still fails after hub.py's retries is written to
an error file: a loader waiting for that shard raises it, and the training loop stops every rank at the next
step with a checkpoint (train.py). The files live under DATA_DIR/.stream/node<N>, which local rank 0 clears
before the loaders start (`reset`).
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from trainer import hub
from trainer.common import log, one_line
from trainer.data import shard_order
from trainer.hub import DataError

POLL_SECONDS = 0.05  # how often a waiting loader or the fetch loop looks again: file events on a shared disk


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Stream:
    """The shards of one run's training files, as trainer.data.Shards: `path(i)` waits until shard i is here."""

    def __init__(self, listing: hub.Listing, files: list[str], data_dir, *, seed: int, node: int = 0,
                 nodes: int = 1, local_rank: int = 0, local_world_size: int = 1, ahead: int = 4, keep: bool = False,
                 workers: int = 4):
        self.listing, self.files, self.data_dir = listing, list(files), Path(data_dir)
        self.dir = self.state_dir(data_dir, node)
        self.seed, self.node, self.nodes = seed, node, nodes
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.ahead, self.keep, self.workers = ahead, keep, workers
        self.per_epoch = len(shard_order(len(self.files), seed, 0, node, nodes))
        self.waited = 0.0  # seconds this rank's loader waited for the fetch
        self._stop = threading.Event()
        if local_rank == 0:
            threading.Thread(target=self._fetch_loop, name="stream", daemon=True).start()

    @staticmethod
    def state_dir(data_dir, node: int) -> Path:
        return Path(data_dir) / ".stream" / f"node{node}"

    @classmethod
    def reset(cls, data_dir, node: int) -> None:
        """Forget the last process's cursors, markers and error (local rank 0, before any loader starts)."""
        d = cls.state_dir(data_dir, node)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)

    # -- what a loader calls ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        ready, t0 = self.dir / f"ready-{i}", time.time()
        while not ready.exists():
            error = self.failed()
            if error:
                raise DataError(error)
            time.sleep(POLL_SECONDS)
        dt = time.time() - t0
        if dt > 1.0:
            self.waited += dt
            log(f"data: waited {dt:.1f}s for {self.files[i]}: the fetch is behind ({self.waited:.0f}s waited in all)")
        return hub.shard_path(self.listing, self.files[i], self.data_dir)

    def reading(self, position: int) -> None:
        _write(self.dir / f"cursor-{self.local_rank}", str(position))

    def failed(self) -> str | None:
        """The one-line error of a fetch that failed on this node, if one did."""
        try:
            return (self.dir / "error").read_text().strip() or None
        except OSError:
            return None

    def close(self) -> None:
        self._stop.set()

    # -- the fetch (local rank 0) ----------------------------------------------------------------------------
    def shard_at(self, position: int) -> int:
        epoch, pos = divmod(position, self.per_epoch)
        return shard_order(len(self.files), self.seed, epoch, self.node, self.nodes)[pos]

    def _cursors(self) -> list[int] | None:
        try:
            return [int((self.dir / f"cursor-{r}").read_text()) for r in range(self.local_world_size)]
        except (OSError, ValueError):
            return None  # a loader not started yet

    def _fetch_one(self, i: int, done: dict) -> None:
        try:
            hub.fetch(self.listing, [self.files[i]], self.data_dir, workers=1)
            _write(self.dir / f"ready-{i}", "")
            done[i] = None
        except BaseException as e:  # noqa: BLE001 -- reported through the error file
            done[i] = e if isinstance(e, DataError) else DataError(f"{self.files[i]}: {one_line(e)}")

    def _fetch_loop(self) -> None:
        try:
            self._fetch()
        except BaseException as e:  # noqa: BLE001 -- a loader must never wait for a fetch that is gone
            _write(self.dir / "error", f"data fetch failed: {one_line(e)}")

    def _fetch(self) -> None:
        running: dict[int, threading.Thread] = {}
        done: dict[int, BaseException | None] = {}  # written by the download threads
        while not self._stop.is_set():
            cursors = self._cursors()
            if cursors is None:
                self._stop.wait(POLL_SECONDS)
                continue
            first = min(cursors)
            window = list(dict.fromkeys(self.shard_at(p) for p in range(first, first + self.ahead + 1)))
            failed = next((e for e in list(done.values()) if e is not None), None)
            if failed is not None:
                _write(self.dir / "error", f"data fetch failed: {failed}")
                return
            for i in list(running):
                if i in done:
                    del running[i]
            # while the loaders wait, one download at a time gets the whole bandwidth; then up to `workers`
            ready_ahead = sum(1 for i in window if i in done)
            for i in window:
                if len(running) >= min(self.workers, 1 + ready_ahead):
                    break
                if i not in done and i not in running:
                    running[i] = threading.Thread(target=self._fetch_one, args=(i, done), daemon=True,
                                                  name=f"fetch-{i}")
                    running[i].start()
            if not self.keep:
                for i in [i for i in list(done) if i not in window and i not in running]:
                    (self.dir / f"ready-{i}").unlink(missing_ok=True)
                    hub.shard_path(self.listing, self.files[i], self.data_dir).unlink(missing_ok=True)
                    (self.data_dir / self.files[i]).unlink(missing_ok=True)  # the download, when converted
                    del done[i]
            self._stop.wait(POLL_SECONDS)
