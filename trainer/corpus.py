"""A small real-text corpus from what every Python install has, for offline runs and tests.

Documents are pydoc's topic texts and the standard library's .py sources, cut at blank lines into
pieces of at most `doc_chars` (web documents are a few thousand characters too), shuffled with a
fixed seed, and written in the Hugging Face dataset's format: parquet shards with one string column
`text`. The same Python install always gives the same corpus; the last shard is for validation.
"""
from __future__ import annotations

import json
import os
import random
import sys
import sysconfig
import tempfile
from pathlib import Path

MARKER = ".stdlib_corpus"  # says this directory's shards are ours to rewrite


def _pieces(text: str, limit: int):
    while len(text) > limit:
        cut = text.rfind("\n\n", limit // 2, limit)  # prefer a blank line, then any line end
        cut = cut if cut >= 0 else text.rfind("\n", limit // 2, limit)
        cut = cut + 1 if cut >= 0 else limit
        yield text[:cut]
        text = text[cut:]
    yield text


def stdlib_documents(max_chars: int = 16_000_000, doc_chars: int = 8_000) -> list[str]:
    """Deterministic list of documents, about max_chars characters in all."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "__pycache__" not in p.parts)
    random.Random(0).shuffle(files)  # so a size cap samples the whole library, not Lib/a*

    def sources():
        yield from (topics[k] for k in sorted(topics))
        for rel in files:
            try:
                yield (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few test files are deliberately not UTF-8

    texts, total = [], 0
    for text in sources():
        if total >= max_chars:
            break
        texts.append(text[:max_chars - total])
        total += len(texts[-1])
    docs = [d for t in texts for d in _pieces(t, doc_chars) if d.strip()]
    random.Random(1).shuffle(docs)  # every shard, the validation one included, is alike
    return docs


def write_parquet_atomic(path: Path, docs: list[str], docs_per_row_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), tmp,
                       row_group_size=docs_per_row_group)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_stdlib_corpus(out_dir, *, n_shards: int = 4, docs_per_row_group: int = 128,
                        max_chars: int = 16_000_000, doc_chars: int = 8_000) -> list[Path]:
    """Write shard_00000.parquet … shard_{n-1}.parquet into out_dir; returns their paths. Row groups
    hold 128 documents (the HF data has 1,024) so even this small corpus has several per shard to
    spread over ranks. Rebuilding with the same settings is a no-op."""
    if n_shards < 2:
        raise ValueError(f"n_shards must be at least 2 (training + validation), got {n_shards}")
    if docs_per_row_group < 1:
        raise ValueError(f"docs_per_row_group must be positive, got {docs_per_row_group}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / MARKER
    params = json.dumps({"n_shards": n_shards, "docs_per_row_group": docs_per_row_group,
                         "max_chars": max_chars, "doc_chars": doc_chars, "python": sys.version})
    paths = [out_dir / f"shard_{i:05d}.parquet" for i in range(n_shards)]
    existing = sorted(out_dir.glob("shard_*.parquet"))
    if existing and not marker.exists():  # never overwrite somebody's downloaded shards
        raise ValueError(f"{out_dir} already holds {len(existing)} parquet shards not built from the "
                         f"standard library; give an empty directory")
    if existing == paths and marker.read_text() == params:
        return paths  # already built with these settings
    docs = stdlib_documents(max_chars, doc_chars)
    if len(docs) < n_shards:
        raise ValueError(f"{len(docs)} documents cannot fill {n_shards} shards; raise max_chars")
    marker.write_text("building")  # an interrupted build never matches `params`
    for stale in existing:  # ours (the marker says so), from a build with other settings
        stale.unlink()
    for i, path in enumerate(paths):
        write_parquet_atomic(path, docs[i * len(docs) // n_shards:(i + 1) * len(docs) // n_shards],
                             docs_per_row_group)
    marker.write_text(params)
    return paths
