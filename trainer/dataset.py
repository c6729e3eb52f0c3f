"""What a run trains and evaluates on: shards built, found or streamed, the tokenizer, and the loaders.

Rank 0 of each node builds the shards, or fetches a Hub dataset's validation file and streams its training
files while training (trainer/stream.py). The tokenizer is kept in the store per dataset commit, vocabulary
and character budget: rank 0 trains it only when the store has none, and sends its files to every rank
(nodes need not share a disk). Synthetic data needs neither.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer import fineweb
from trainer.common import DistEnv, SyntheticLoader, barrier, log
from trainer.settings import SettingError, TrainConfig, data_kind, tokenizer_name


@dataclass
class Dataset:
    synthetic: bool
    train: object = None  # trainer.data.Shards (all on disk) or trainer.stream.Stream (fetched while training)
    val_paths: list[Path] = field(default_factory=list)
    tokenizer: object = None  # trainer.tokenizer.Tokenizer; None for synthetic data
    chars_per_token: float | None = None  # measured on the validation text
    column: str = "text"  # the text column of parquet shards
    described: str = ""  # the data as the ledger records it: a Hub dataset with its commit, a folder, stdlib
    train_chars: float | None = None  # characters in the training shards, where known before reading them

    def loader(self, cfg: TrainConfig, env: DistEnv, *, grad_accum: int, threads: int, state: dict | None = None):
        """The endless training stream of this rank, from `state` when resuming."""
        if self.synthetic:
            return SyntheticLoader(cfg.vocab_size, cfg.device_batch, cfg.seq_len, rank=env.rank,
                                   world_size=env.world_size, grad_accum=grad_accum, seed=cfg.seed, state=state)
        from trainer.data import TokenLoader
        return TokenLoader(self.train, self.tokenizer, cfg.device_batch, cfg.seq_len, rank=env.rank,
                           world_size=env.world_size, local_world_size=env.local_world_size, seed=cfg.seed,
                           state=state, threads=threads, column=self.column)

    def val_loader(self, cfg: TrainConfig, env: DistEnv, *, threads: int):
        """One pass over the validation shard, the same batches for every evaluation; all ranks share it."""
        if self.synthetic:
            return SyntheticLoader(cfg.vocab_size, cfg.device_batch, cfg.seq_len, rank=env.rank,
                                   world_size=env.world_size, seed=cfg.seed, split="val")
        from trainer.data import TokenLoader
        return TokenLoader(self.val_paths, self.tokenizer, cfg.device_batch, cfg.seq_len, rank=env.rank,
                           world_size=env.world_size, seed=0, loop=False, threads=threads, column=self.column)

    def token_bytes(self, vocab_size: int) -> list[int]:
        """UTF-8 bytes of every token, for val_bpb (synthetic tokens count one byte each)."""
        return [1] * vocab_size if self.synthetic else self.tokenizer.token_bytes()

    def close(self) -> None:
        if self.train is not None:
            self.train.close()

    def failed(self) -> str | None:
        """A fetch that failed on this node (the loop stops every rank with a checkpoint)."""
        return None if self.train is None else self.train.failed()


def prepare(cfg: TrainConfig, env: DistEnv, tokens: int) -> Dataset:
    """The shards and tokenizer this run needs: built, found, or (a Hub dataset) fetched while training."""
    kind = data_kind(cfg.data)
    if kind == "synthetic" or (cfg.probe and cfg.probe_data == "synthetic"):
        log("data: synthetic (arithmetic progressions mod vocab; 1 byte per token)")
        return Dataset(synthetic=True)
    from trainer.data import Shards, build_stdlib_corpus, list_shards, split_shards

    data_dir = Path(cfg.data_dir).expanduser()
    store_dir = Path(cfg.store_dir).expanduser() if cfg.store_dir else data_dir
    if kind == "hub":
        data, first_files = _from_hub(cfg, env, tokens, data_dir, store_dir)
        tok_name = tokenizer_name(cfg, data.described.rsplit("@", 1)[-1])
    else:
        if kind == "stdlib":
            if env.local_rank == 0:
                t0 = time.time()
                build_stdlib_corpus(data_dir)
                log(f"data: standard-library corpus in {data_dir} ({time.time() - t0:.1f}s)")
            barrier()
        train_paths, val_paths = split_shards(list_shards(data_dir if kind == "stdlib" else cfg.data))
        data = Dataset(False, Shards(train_paths), val_paths, described=cfg.data)
        first_files = lambda: iter(train_paths)  # noqa: E731
        tok_name = tokenizer_name(cfg)
        log(f"data: {data.described}: {len(train_paths)} training shards, validation: {val_paths[0].name}")
    tok_dir = Path(cfg.tokenizer_dir).expanduser() if cfg.tokenizer_dir else store_dir / tok_name
    data.tokenizer = _tokenizer(cfg, env, data, tok_dir, first_files)
    _report_size(data, tokens)
    return data


def _from_hub(cfg: TrainConfig, env: DistEnv, tokens: int, data_dir: Path, store_dir: Path):
    """(the dataset, its training files in the listing's order fetched one by one: for the tokenizer). Rank 0
    of each node lists the source (kept in the store) and fetches the validation file; the training files come
    while training (trainer/stream.py)."""
    from trainer import hub
    from trainer.stream import Stream

    source = hub.Source.of(cfg)
    if env.local_rank == 0:
        listing = hub.facts(source, store_dir, val_index=cfg.val_shard, data_dir=data_dir)
    barrier()
    if env.local_rank != 0:
        listing = hub.facts(source, store_dir, val_index=cfg.val_shard)  # kept by rank 0: no Hub call
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
    files = listing.train[:n - 1]
    node, nodes = env.rank // env.local_world_size, env.world_size // env.local_world_size
    keep = cfg.keep_data or plan["epochs"] > 1
    if env.local_rank == 0:
        Stream.reset(data_dir, node)
        t0 = time.time()
        hub.fetch(listing, [listing.val], data_dir)
        log(f"data: {listing.describe}: validation {listing.val} ({listing.val_from}) in {time.time() - t0:.1f}s; "
            f"{len(files)} training files streamed into {data_dir}, {cfg.fetch_ahead} ahead of the one read, "
            f"{'kept' if keep else 'deleted once read'}")
    barrier()
    stream = Stream(listing, files, data_dir, seed=cfg.seed, node=node, nodes=nodes, local_rank=env.local_rank,
                    local_world_size=env.local_world_size, ahead=cfg.fetch_ahead, keep=keep)

    def first_files():
        """The training files in the listing's order, each fetched when the tokenizer reaches it; unless the
        data is kept, each is deleted once read (the stream fetches it again when its turn comes)."""
        for path in listing.train:
            yield from hub.fetch(listing, [path], data_dir, workers=1)
            if not keep:
                hub.shard_path(listing, path, data_dir).unlink(missing_ok=True)
                (data_dir / path).unlink(missing_ok=True)

    column = hub.text_column(listing)
    data = Dataset(False, stream, [hub.shard_path(listing, listing.val, data_dir)], column=column,
                   described=listing.describe, train_chars=listing.chars_per_shard * len(files))
    return data, first_files


def _tokenizer(cfg: TrainConfig, env: DistEnv, data: Dataset, tok_dir: Path, first_files):
    """The run's tokenizer: from the store when one was trained for this data, vocabulary and character budget,
    else trained by rank 0 on the first training files (in the listing's order) and kept there for later runs."""
    import torch.distributed as dist

    from trainer.data import iter_documents
    from trainer.tokenizer import META_FILE, RANKS_FILE, Tokenizer, chars_per_token, train_tokenizer

    if env.master:
        if (tok_dir / META_FILE).is_file():
            log(f"tokenizer: {tok_dir} (trained by an earlier run on this data)")
        else:
            t0 = time.time()
            docs = (d for path in first_files() for d in iter_documents([path], column=data.column))
            tok = train_tokenizer(docs, cfg.vocab_size, max_chars=cfg.tokenizer_chars)
            tok.save(tok_dir)
            log(f"tokenizer: trained {tok.vocab_size:,} tokens on ≤{cfg.tokenizer_chars:,} chars in "
                f"{time.time() - t0:.1f}s → {tok_dir} (later runs on this data reuse it)")
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
    """Characters in the training shards (the listing's size, or parquet metadata: ≈ bytes), so a second
    epoch shows."""
    from trainer.hub import shard_chars

    chars = data.train_chars
    if chars is None:
        try:
            chars = sum(shard_chars(p, data.column) if p.suffix == ".parquet" else p.stat().st_size
                        for p in data.train.paths)
        except Exception:
            return
    have = chars / data.chars_per_token
    epochs = tokens / have if have else float("inf")
    log(f"data size: ≈{chars:,.0f} chars ≈ {have:,.0f} tokens in training shards; the run needs {tokens:,} "
        f"({epochs:.2f} epochs{'' if epochs <= 1 else ': the data repeats'})")
