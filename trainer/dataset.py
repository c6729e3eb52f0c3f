"""What a run trains and evaluates on: shards fetched or built, the tokenizer, and the loaders.

Rank 0 of each node fetches or builds the shards; rank 0 trains the tokenizer when it is missing and
sends its files to every rank (nodes need not share a disk). Synthetic data needs neither.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer import fineweb
from trainer.common import DistEnv, SyntheticLoader, barrier, log
from trainer.settings import SettingError, TrainConfig


@dataclass
class Dataset:
    synthetic: bool
    train_paths: list[Path] = field(default_factory=list)
    val_paths: list[Path] = field(default_factory=list)
    tokenizer: object = None  # trainer.tokenizer.Tokenizer; None for synthetic data
    chars_per_token: float | None = None  # measured on the validation text

    def loader(self, cfg: TrainConfig, env: DistEnv, *, grad_accum: int, threads: int, state: dict | None = None):
        """The endless training stream of this rank, from `state` when resuming."""
        if self.synthetic:
            return SyntheticLoader(cfg.vocab_size, cfg.device_batch, cfg.seq_len, rank=env.rank,
                                   world_size=env.world_size, grad_accum=grad_accum, seed=cfg.seed, state=state)
        from trainer.data import TokenLoader
        return TokenLoader(self.train_paths, self.tokenizer, cfg.device_batch, cfg.seq_len, rank=env.rank,
                           world_size=env.world_size, seed=cfg.seed, state=state, threads=threads)

    def val_loader(self, cfg: TrainConfig, env: DistEnv, *, threads: int):
        """One pass over the validation shard, the same batches for every evaluation."""
        if self.synthetic:
            return SyntheticLoader(cfg.vocab_size, cfg.device_batch, cfg.seq_len, rank=env.rank,
                                   world_size=env.world_size, seed=cfg.seed, split="val")
        from trainer.data import TokenLoader
        return TokenLoader(self.val_paths, self.tokenizer, cfg.device_batch, cfg.seq_len, rank=env.rank,
                           world_size=env.world_size, seed=0, loop=False, threads=threads)

    def token_bytes(self, vocab_size: int) -> list[int]:
        """UTF-8 bytes of every token, for val_bpb (synthetic tokens count one byte each)."""
        return [1] * vocab_size if self.synthetic else self.tokenizer.token_bytes()


def prepare(cfg: TrainConfig, env: DistEnv, tokens: int) -> Dataset:
    """The shards and tokenizer this run needs, fetched, built or trained where missing."""
    if cfg.data_source == "synthetic" or (cfg.probe and cfg.probe_data == "synthetic"):
        log("data: synthetic (arithmetic progressions mod vocab; 1 byte per token)")
        return Dataset(synthetic=True)
    from trainer.data import build_stdlib_corpus, download_shards, list_shards, split_shards

    data_dir = Path(cfg.data_dir)
    if cfg.data_source == "hf":
        n = cfg.shards or min(fineweb.SHARDS_TOTAL, fineweb.shards_needed(tokens))
        if not cfg.shards:
            log(f"shards: {n} = ⌈{tokens:,} tokens × {fineweb.CHARS_PER_TOKEN_RANGE[1]:g} chars/token / "
                f"{fineweb.CHARS_PER_SHARD:,} chars per shard⌉ + 1 validation")
        val_shard = fineweb.VAL_SHARD if cfg.val_shard is None else cfg.val_shard
        indices = list(range(n - 1)) + [val_shard]
        if env.local_rank == 0:
            log(f"data: downloading {n} shards into {data_dir} (train 0..{n - 2}, validation {val_shard})")
            t0 = time.time()
            download_shards(cfg.data_url or fineweb.URL, indices, data_dir)
            log(f"data: ready in {time.time() - t0:.1f}s")
        barrier()
        paths = [data_dir / f"shard_{i:05d}.parquet" for i in indices]
    elif cfg.data_source == "stdlib":
        if env.local_rank == 0:
            t0 = time.time()
            build_stdlib_corpus(data_dir)
            log(f"data: standard-library corpus in {data_dir} ({time.time() - t0:.1f}s)")
        barrier()
        paths = list_shards(data_dir)
    else:
        paths = list_shards(data_dir)
    train_paths, val_paths = split_shards(paths)
    log(f"data: {len(train_paths)} training shards, validation: {val_paths[0].name}")
    data = Dataset(False, train_paths, val_paths)
    data.tokenizer = _tokenizer(cfg, env, data, data_dir)
    _report_size(data, tokens)
    return data


def _tokenizer(cfg: TrainConfig, env: DistEnv, data: Dataset, data_dir: Path):
    import torch.distributed as dist

    from trainer.data import iter_documents
    from trainer.tokenizer import META_FILE, RANKS_FILE, Tokenizer, chars_per_token, train_tokenizer

    tok_dir = Path(cfg.tokenizer_dir or data_dir / f"tokenizer_{cfg.vocab_size}")
    if env.master and not (tok_dir / META_FILE).is_file():
        t0 = time.time()
        tok = train_tokenizer(iter_documents(data.train_paths), cfg.vocab_size, max_chars=cfg.tokenizer_chars)
        tok.save(tok_dir)
        log(f"tokenizer: trained {tok.vocab_size:,} tokens on ≤{cfg.tokenizer_chars:,} chars in "
            f"{time.time() - t0:.1f}s → {tok_dir}")
    if env.distributed:  # nodes without a shared disk get rank 0's files
        files = [None]
        if env.master:
            files = [{n: (tok_dir / n).read_bytes() for n in (RANKS_FILE, META_FILE)}]
        dist.broadcast_object_list(files, src=0)
        if env.local_rank == 0 and not (tok_dir / META_FILE).is_file():
            tok_dir.mkdir(parents=True, exist_ok=True)
            for n in (RANKS_FILE, META_FILE):  # META last: it marks the directory complete
                tmp = tok_dir / f".{n}.{os.getpid()}.tmp"
                tmp.write_bytes(files[0][n])
                os.replace(tmp, tok_dir / n)
        barrier()
    tok = Tokenizer.load(tok_dir)
    if tok.vocab_size != cfg.vocab_size:
        raise SettingError(f"tokenizer at {tok_dir} has {tok.vocab_size:,} tokens but vocab_size is "
                           f"{cfg.vocab_size:,}; give another tokenizer_dir or the matching vocab_size")
    docs = []
    for doc in iter_documents(data.val_paths):
        docs.append(doc)
        if sum(map(len, docs)) > 2_000_000:
            break
    data.chars_per_token = chars_per_token(tok, docs)
    log(f"tokenizer: {tok_dir}, vocab {tok.vocab_size:,}, {data.chars_per_token:.3f} chars/token on validation text")
    return tok


def _report_size(data: Dataset, tokens: int) -> None:
    """Characters in the training shards from parquet metadata (≈ bytes), so a second epoch shows."""
    import pyarrow.parquet as pq

    try:
        chars = 0
        for p in data.train_paths:
            if p.suffix == ".parquet":
                md = pq.ParquetFile(p).metadata
                chars += sum(md.row_group(i).column(0).total_uncompressed_size for i in range(md.num_row_groups))
            else:
                chars += p.stat().st_size
    except Exception:
        return
    have = chars / data.chars_per_token
    epochs = tokens / have if have else float("inf")
    log(f"data size: ≈{chars:,} chars ≈ {have:,.0f} tokens in training shards; the run needs {tokens:,} "
        f"({epochs:.2f} epochs{'' if epochs <= 1 else ': the data repeats, fetch more shards'})")
