"""Byte-level BPE tokenizer: trained with rustbpe, run with tiktoken (docs/DESIGN.md §3).

On disk a tokenizer is a directory with `ranks.tiktoken` (base64 token, rank per line, tiktoken's own
format) and `tokenizer.json` (pattern, special tokens, checksum of the ranks). tokenizer.json is
written last and is the complete-marker: a directory without it was never finished.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import tiktoken

# GPT-4's split, except numbers group 1-2 digits (not 1-3): fewer number tokens in a small vocab.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
BOS = "<|bos|>"
SPECIAL_TOKENS = [BOS]
RANKS_FILE = "ranks.tiktoken"
META_FILE = "tokenizer.json"  # written last: the complete-marker
FORMAT_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or loaded; the message is one line and says why."""


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Tokenizer:
    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN):
        specials = {name: len(mergeable_ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding(name="nanolaunch", pat_str=pattern,
                                     mergeable_ranks=mergeable_ranks, special_tokens=specials)
        self.pattern = pattern
        self._ranks = dict(mergeable_ranks)  # kept for save(); tiktoken has no public getter
        self.vocab_size: int = self.enc.n_vocab
        self.bos_id: int = specials[BOS]

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: "<|bos|>" inside a document is text, never the special token
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.enc.decode_bytes(ids)

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length per id, 0 for special tokens, so val_bpb counts only real text."""
        n_regular = self.bos_id  # special tokens come right after the mergeable ranks
        return ([len(self.enc.decode_single_token_bytes(i)) for i in range(n_regular)]
                + [0] * (self.vocab_size - n_regular))

    def _ranks_text(self) -> bytes:
        lines = (base64.b64encode(tok) + b" " + str(rank).encode() for tok, rank in
                 sorted(self._ranks.items(), key=lambda kv: kv[1]))
        return b"\n".join(lines) + b"\n"

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / META_FILE).unlink(missing_ok=True)  # incomplete until the marker is back
        ranks = self._ranks_text()
        _write_atomic(directory / RANKS_FILE, ranks)
        meta = {"format": FORMAT_VERSION, "pattern": self.pattern, "special_tokens": SPECIAL_TOKENS,
                "vocab_size": self.vocab_size, "ranks_sha256": hashlib.sha256(ranks).hexdigest()}
        _write_atomic(directory / META_FILE, json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"no tokenizer at {directory}: train one first")
        meta_path, ranks_path = directory / META_FILE, directory / RANKS_FILE
        if not meta_path.is_file() or not ranks_path.is_file():
            raise TokenizerError(f"tokenizer at {directory} is incomplete (no {META_FILE} or "
                                 f"{RANKS_FILE}); delete it and train again")
        try:
            meta = json.loads(meta_path.read_text())
            ranks = ranks_path.read_bytes()
        except (OSError, ValueError) as e:
            raise TokenizerError(f"tokenizer at {directory} is unreadable ({e}); delete it and train again") from None
        if meta.get("format") != FORMAT_VERSION or meta.get("special_tokens") != SPECIAL_TOKENS:
            raise TokenizerError(f"tokenizer at {directory} has format {meta.get('format')!r} with "
                                 f"specials {meta.get('special_tokens')!r}; expected {FORMAT_VERSION}, {SPECIAL_TOKENS}")
        if hashlib.sha256(ranks).hexdigest() != meta.get("ranks_sha256"):
            raise TokenizerError(f"tokenizer at {directory} is corrupt ({RANKS_FILE} does not match its "
                                 f"checksum); delete it and train again")
        mergeable = {}
        for line in ranks.splitlines():
            tok, rank = line.split()
            mergeable[base64.b64decode(tok)] = int(rank)
        tok = cls(mergeable, meta["pattern"])
        if tok.vocab_size != meta.get("vocab_size"):
            raise TokenizerError(f"tokenizer at {directory} has {tok.vocab_size} tokens, "
                                 f"its {META_FILE} says {meta.get('vocab_size')}")
        return tok


def _capped(texts: Iterable[str], max_chars: int, doc_cap: int):
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        text = text[:min(doc_cap, left)]
        left -= len(text)
        yield text


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, max_chars: int = 2_000_000_000,
                    doc_cap: int = 10_000) -> Tokenizer:
    """Train on at most max_chars characters, each document cut to doc_cap (long documents would
    otherwise dominate the pair counts). vocab_size includes the special tokens."""
    import rustbpe  # only needed to train

    n_base = 256 + len(SPECIAL_TOKENS)
    if vocab_size < n_base:
        raise TokenizerError(f"vocab_size must be at least {n_base} (256 bytes + special tokens), got {vocab_size}")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(_capped(texts, max_chars, doc_cap), vocab_size - len(SPECIAL_TOKENS),
                            pattern=SPLIT_PATTERN)
    ranks = {bytes(tok): rank for tok, rank in bpe.get_mergeable_ranks()}
    tok = Tokenizer(ranks, bpe.get_pattern())
    if tok.vocab_size != vocab_size:
        # rustbpe stops quietly when no pair is left to merge; the model would be sized wrongly
        raise TokenizerError(f"the training text only supports {tok.vocab_size} tokens, not {vocab_size}; "
                             f"give more text or a smaller vocab_size")
    return tok


def chars_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """Characters per token (no BOS) over the given texts; how many tokens a shard holds."""
    texts = list(texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    if n_tokens == 0:
        raise TokenizerError("chars_per_token needs some non-empty text")
    return sum(len(t) for t in texts) / n_tokens
