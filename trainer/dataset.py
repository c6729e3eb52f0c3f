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
from trainer.settings import SettingError, TrainConfig, data_kind


@dataclass
class Dataset:
    synthetic: bool
    train_paths: list[Path] = field(default_factory=list)
    val_paths: list[Path] = field(default_factory=list)
    tokenizer: object = None  # trainer.tokenizer.Tokenizer; None for synthetic data
    chars_per_token: float | None = None  # measured on the validation text
    column: str = "text"  # the text column of parquet shards
    described: str = ""  # the data as the ledger records it: a Hub dataset with its commit, a folder, stdlib

    def loader(self, cfg: TrainConfig, env: DistEnv, *, grad_accum: int, threads: int, state: dict | None = None):
        """The endless training stream of this rank, from `state` when resuming."""
        if self.synthetic:
            return SyntheticLoader(cfg.vocab_size, cfg.device_batch, cfg.seq_len, rank=env.rank,
                                   world_size=env.world_size, grad_accum=grad_accum, seed=cfg.seed, state=state)
        from trainer.data import TokenLoader
        return TokenLoader(self.train_paths, self.tokenizer, cfg.device_batch, cfg.seq_len, rank=env.rank,
                           world_size=env.world_size, seed=cfg.seed, state=state, threads=threads,
                           column=self.column)

    def val_loader(self, cfg: TrainConfig, env: DistEnv, *, threads: int):
        """One pass over the validation shard, the same batches for every evaluation."""
        if self.synthetic:
            return SyntheticLoader(cfg.vocab_size, cfg.device_batch, cfg.seq_len, rank=env.rank,
                                   world_size=env.world_size, seed=cfg.seed, split="val")
        from trainer.data import TokenLoader
        return TokenLoader(self.val_paths, self.tokenizer, cfg.device_batch, cfg.seq_len, rank=env.rank,
                           world_size=env.world_size, seed=0, loop=False, threads=threads, column=self.column)

    def token_bytes(self, vocab_size: int) -> list[int]:
        """UTF-8 bytes of every token, for val_bpb (synthetic tokens count one byte each)."""
        return [1] * vocab_size if self.synthetic else self.tokenizer.token_bytes()


def prepare(cfg: TrainConfig, env: DistEnv, tokens: int) -> Dataset:
    """The shards and tokenizer this run needs, fetched, built or trained where missing."""
    kind = data_kind(cfg.data)
    if kind == "synthetic" or (cfg.probe and cfg.probe_data == "synthetic"):
        log("data: synthetic (arithmetic progressions mod vocab; 1 byte per token)")
        return Dataset(synthetic=True)
    from trainer.data import build_stdlib_corpus, list_shards, split_shards

    data_dir = Path(cfg.data_dir)
    column, described = "text", cfg.data
    if kind == "hub":
        train_paths, val_paths, column, described = _from_hub(cfg, env, tokens, data_dir)
    else:
        if kind == "stdlib":
            if env.local_rank == 0:
                t0 = time.time()
                build_stdlib_corpus(data_dir)
                log(f"data: standard-library corpus in {data_dir} ({time.time() - t0:.1f}s)")
            barrier()
        train_paths, val_paths = split_shards(list_shards(data_dir if kind == "stdlib" else cfg.data))
    log(f"data: {described}: {len(train_paths)} training shards, validation: {val_paths[0].name}")
    data = Dataset(False, train_paths, val_paths, column=column, described=described)
    data.tokenizer = _tokenizer(cfg, env, data, data_dir)
    _report_size(data, tokens)
    return data


def _from_hub(cfg: TrainConfig, env: DistEnv, tokens: int, data_dir: Path):
    """(train paths, val paths, text column, description with the commit) of a Hub dataset; rank 0 of each
    node lists and fetches, the other ranks read its listing after the barrier."""
    from trainer import hub

    source = hub.Source.of(cfg)
    if env.local_rank == 0:
        listing = hub.facts(source, data_dir, val_index=cfg.val_shard)
    barrier()
    if env.local_rank != 0:
        listing = hub.facts(source, data_dir, val_index=cfg.val_shard)  # kept by rank 0: no Hub call
    plan = fineweb.plan_shards(tokens, files=len(listing.train) + 1, chars_per_shard=listing.chars_per_shard,
                               shards=cfg.shards)
    n = plan["shards"]
    if cfg.shards is None:
        log(f"shards: {n} = min({plan['dataset_files']} files, ⌈{tokens:,} tokens × "
            f"{fineweb.CHARS_PER_TOKEN_RANGE[1]:g} chars/token / {listing.chars_per_shard:,.0f} chars per shard "
            f"({listing.chars_from})⌉ + 1 validation)")
    if plan["epochs"] > 1:
        log(f"data: {listing.describe} has too little text for one epoch: {plan['epochs']:.2f} epochs at "
            f"{fineweb.CHARS_PER_TOKEN_RANGE[1]:g} chars/token")
    wanted = listing.train[:n - 1] + [listing.val]
    if env.local_rank == 0:
        log(f"data: fetching {n} files of {listing.describe} into {data_dir} (validation: {listing.val}, "
            f"{listing.val_from})")
        t0 = time.time()
        hub.fetch(listing, wanted, data_dir)
        log(f"data: ready in {time.time() - t0:.1f}s")
    barrier()
    paths = [hub.shard_path(listing, p, data_dir) for p in wanted]
    return paths[:-1], paths[-1:], hub.text_column(listing), listing.describe


def _tokenizer(cfg: TrainConfig, env: DistEnv, data: Dataset, data_dir: Path):
    import torch.distributed as dist

    from trainer.data import iter_documents
    from trainer.tokenizer import META_FILE, RANKS_FILE, Tokenizer, chars_per_token, train_tokenizer

    tok_dir = Path(cfg.tokenizer_dir or data_dir / f"tokenizer_{cfg.vocab_size}")
    if env.master and not (tok_dir / META_FILE).is_file():
        t0 = time.time()
        tok = train_tokenizer(iter_documents(data.train_paths, column=data.column), cfg.vocab_size,
                              max_chars=cfg.tokenizer_chars)
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
    for doc in iter_documents(data.val_paths, column=data.column):
        docs.append(doc)
        if sum(map(len, docs)) > 2_000_000:
            break
    data.chars_per_token = chars_per_token(tok, docs)
    log(f"tokenizer: {tok_dir}, vocab {tok.vocab_size:,}, {data.chars_per_token:.3f} chars/token on validation text")
    return tok


def _report_size(data: Dataset, tokens: int) -> None:
    """Characters in the training shards from parquet metadata (≈ bytes), so a second epoch shows."""
    from trainer.hub import shard_chars

    try:
        chars = sum(shard_chars(p, data.column) if p.suffix == ".parquet" else p.stat().st_size
                    for p in data.train_paths)
    except Exception:
        return
    have = chars / data.chars_per_token
    epochs = tokens / have if have else float("inf")
    log(f"data size: ≈{chars:,} chars ≈ {have:,.0f} tokens in training shards; the run needs {tokens:,} "
        f"({epochs:.2f} epochs{'' if epochs <= 1 else ': the data repeats'})")
