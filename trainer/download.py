"""Parallel, resumable, verified download of parquet data shards (urllib only, no extra dependency).

A shard is fetched into `NAME.part` (resumed with an HTTP Range request when the server allows it),
checked with pyarrow, and only then renamed to NAME, so a file named shard_*.parquet is always whole.
"""
from __future__ import annotations

import http.client
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


class ShardError(ValueError):
    """A shard file that cannot be used; the message is one line and names the file."""


class DownloadError(RuntimeError):
    """A shard that could not be downloaded; the message is one line and names the shard."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def verify_shard(path, *, full: bool = False) -> int:
    """Raise ShardError unless `path` is parquet with a string column `text`; return its row count.
    full=True also decodes every page, which catches corruption inside the file, not just truncation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        field = pf.schema_arrow.field("text") if "text" in pf.schema_arrow.names else None
        if field is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise ShardError(f"{path.name} has no string column 'text' (columns: {pf.schema_arrow.names})")
        if full:
            for i in range(pf.num_row_groups):
                pf.read_row_group(i, columns=["text"])
        return pf.metadata.num_rows
    except ShardError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ShardError(f"{path.name} is not a readable parquet shard: {_one_line(e)}") from None


class _Retry(Exception):
    """A failure worth another attempt."""


def _fetch(url: str, part: Path, timeout: float) -> None:
    """One attempt: continue `part` from its current size if the server honours Range, else restart."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "nanolaunch-trainer"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            resumed = have and resp.status == 206 and \
                resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
            start = have if resumed else 0
            length = resp.headers.get("Content-Length")
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if length is not None and part.stat().st_size != start + int(length):
                raise _Retry(f"connection closed after {part.stat().st_size - start} of {length} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our .part is not a prefix of what the server has: start over
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 resuming at byte {have}") from None
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise DownloadError(f"HTTP {e.code} {e.reason}") from None  # permanent: no retry
        raise _Retry(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise _Retry(_one_line(e)) from None


def download_shard(url: str, dest: Path, *, retries: int = 5, backoff: float = 1.0,
                   timeout: float = 60.0, stop: threading.Event | None = None) -> Path:
    """Download one shard to `dest` unless a verified copy is there; retries+1 attempts in all,
    waiting backoff·2^k between them."""
    dest = Path(dest)
    if dest.exists():
        try:
            verify_shard(dest)
            return dest
        except ShardError:
            dest.unlink()  # damaged copy from some other tool: fetch it again
    part = dest.with_name(dest.name + ".part")
    stop = stop or threading.Event()
    last = "not attempted"
    for attempt in range(retries + 1):
        if attempt and stop.wait(backoff * 2 ** (attempt - 1)):
            break  # another shard failed; give up quietly, the .part stays for a later resume
        try:
            _fetch(url, part, timeout)
            try:
                verify_shard(part, full=True)
            except ShardError as e:
                part.unlink(missing_ok=True)  # do not resume onto bad bytes
                raise _Retry(_one_line(e).replace(part.name, "download")) from None
            os.replace(part, dest)
            return dest
        except _Retry as e:
            last = str(e)
        except DownloadError as e:
            raise DownloadError(f"{dest.name}: download from {url} failed: {e}") from None
    raise DownloadError(f"{dest.name}: download from {url} failed after {attempt + 1} attempts: {last}")


def download_shards(url_template: str, indices: list[int], out_dir, *, workers: int = 4,
                    retries: int = 5, backoff: float = 1.0,
                    progress: Callable[[int, int], None] | None = None,
                    timeout: float = 60.0) -> list[Path]:
    """Fetch shards url_template.format(index=i) into out_dir as shard_{i:05d}.parquet, in parallel.
    Returns their paths in the order of `indices`; the first failure stops the rest and is raised."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = list(dict.fromkeys(indices))  # a shard twice would race on its own .part
    dests = [out_dir / f"shard_{i:05d}.parquet" for i in indices]
    stop, lock, done = threading.Event(), threading.Lock(), [0]

    def job(i: int, dest: Path) -> Path:
        path = download_shard(url_template.format(index=i), dest, retries=retries, backoff=backoff,
                              timeout=timeout, stop=stop)
        with lock:
            done[0] += 1
            if progress:
                progress(done[0], len(dests))
        return path

    if progress:
        progress(0, len(dests))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="shard-dl") as pool:
        futures = [pool.submit(job, i, d) for i, d in zip(indices, dests)]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            stop.set()
            for f in futures:
                f.cancel()
            raise failed[0].exception()
    return [f.result() for f in futures]
