"""The default dataset's facts and the shards a run needs: one home for both planner and trainer (torch-free).

karpathy/fineweb-edu-100b-shuffle on Hugging Face: 1,823 parquet shards `shard_{i:05d}.parquet` of about
250M characters each; the last one is held out for validation. Characters per token are 3.5–5.0 for this
text; shard counts use the top of that range, so a run planned here never repeats data.
"""
from __future__ import annotations

import math

URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{index:05d}.parquet"
SHARDS_TOTAL = 1823
VAL_SHARD = SHARDS_TOTAL - 1
CHARS_PER_SHARD = 250_000_000
CHARS_PER_TOKEN_RANGE = (3.5, 5.0)


def train_shards_needed(tokens: int) -> int:
    """Training shards for one epoch of `tokens` at the worst characters/token."""
    return math.ceil(tokens * CHARS_PER_TOKEN_RANGE[1] / CHARS_PER_SHARD)


def shards_needed(tokens: int) -> int:
    """Shards to fetch: the training shards plus the validation shard."""
    return train_shards_needed(tokens) + 1


def repeat_above_chars_per_token(shards: int, tokens: int) -> float:
    """With `shards` fetched (validation included), the characters/token above which the data repeats."""
    return (shards - 1) * CHARS_PER_SHARD / tokens
