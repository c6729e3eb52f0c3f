"""The default dataset's facts and the shards a run needs: one home for both planner and trainer (torch-free).

karpathy/fineweb-edu-100b-shuffle on Hugging Face: 1,823 parquet shards `shard_{i:05d}.parquet` of about
250M characters each; the last one is held out for validation. Characters per token are 3.5–5.0 for this
text (and most English text); shard counts use the top of that range, so a run planned here never repeats
data. Other datasets bring their own shard count and characters per shard (trainer/hub.py).
"""
from __future__ import annotations

import math

REPO = "karpathy/fineweb-edu-100b-shuffle"
SHARDS_TOTAL = 1823
CHARS_PER_SHARD = 250_000_000
CHARS_FROM = "nanolaunch's record (trainer/fineweb.py)"  # where CHARS_PER_SHARD comes from, as plans say
BYTES_PER_SHARD = 100_000_000  # a shard's parquet file on disk
BYTES_FROM = "nanochat's speedrun.sh: each shard is ~100MB of text (compressed)"
CHARS_PER_TOKEN_RANGE = (3.5, 5.0)


def is_default(data: str, data_config: str | None) -> bool:
    """Whether a dataset is this one, whose facts above stand in for asking the Hub."""
    return data == REPO and data_config is None


def train_shards_needed(tokens: int, chars_per_shard: float = CHARS_PER_SHARD) -> int:
    """Training shards for one epoch of `tokens` at the worst characters/token."""
    return math.ceil(tokens * CHARS_PER_TOKEN_RANGE[1] / chars_per_shard)


def repeat_above_chars_per_token(shards: int, tokens: int, chars_per_shard: float = CHARS_PER_SHARD) -> float:
    """With `shards` fetched (validation included), the characters/token above which the data repeats."""
    return (shards - 1) * chars_per_shard / tokens


def plan_shards(tokens: int, *, files: int, chars_per_shard: float, shards: int | None = None) -> dict:
    """What a run of `tokens` fetches from a dataset of `files` files (validation included): one epoch's
    training shards plus validation, capped at what the dataset has, or `shards` when given. `epochs` is
    the passes over the fetched training text at the worst characters/token (above 1: the data repeats)."""
    need = train_shards_needed(tokens, chars_per_shard)
    fetched = shards if shards is not None else min(files, need + 1)
    if fetched > files:
        raise ValueError(f"{fetched} shards asked for, but the dataset has {files} files")
    return {"train_shards": need, "shards": fetched, "dataset_files": files, "chars_per_shard": chars_per_shard,
            "repeat_above_chars_per_token": repeat_above_chars_per_token(fetched, tokens, chars_per_shard),
            "epochs": tokens * CHARS_PER_TOKEN_RANGE[1] / ((fetched - 1) * chars_per_shard)}
