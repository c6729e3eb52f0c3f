"""val_bpb: cross-entropy in bits per UTF-8 byte of the targets, on a fixed validation budget (docs/trainer.md).

The validation tokens are read once and reused by every evaluation; each rank evaluates its share and
the sums are all-reduced. Targets that are special tokens (0 bytes, `<|bos|>`) count in neither sum.

Beside it, gzip_bpb: the bits per byte `gzip -9` takes for the very same target text (each rank's share
compressed whole), a general-purpose compressor as the bar: a model that learned beats it.
"""
from __future__ import annotations

import gzip
import math
from contextlib import AbstractContextManager
from typing import Callable

import torch
import torch.distributed as dist

from trainer.common import log


class Evaluator:
    def __init__(self, make_loader: Callable, steps: int, token_bytes: list[int], device: torch.device,
                 autocast: Callable[[], AbstractContextManager], decode_bytes: Callable[[list[int]], bytes] | None = None):
        self.make_loader, self.steps, self.device, self.autocast = make_loader, steps, device, autocast
        self.decode_bytes = decode_bytes  # None for synthetic data: no text to compress
        self.token_bytes = torch.tensor(token_bytes, dtype=torch.int64, device=device)
        self.batches: list | None = None

    def _batches(self) -> list:
        if self.batches is None:
            loader = self.make_loader()
            self.batches = []
            try:
                for _ in range(self.steps):
                    x, y = loader.next_batch()
                    self.batches.append((x.int(), y.int()))
            except StopIteration:
                log(f"eval: the validation shard holds only {len(self.batches)} of {self.steps} batches per rank")
            finally:
                loader.close()
        return self.batches

    @torch.no_grad()
    def bpb(self, model) -> float:
        nats = torch.zeros((), dtype=torch.float64, device=self.device)
        nbytes = torch.zeros((), dtype=torch.float64, device=self.device)
        for x, y in self._batches():
            x, y = x.long().to(self.device), y.long().to(self.device)
            with self.autocast():
                loss = model(x, y, reduction="none").view(-1)
            b = self.token_bytes[y.view(-1)]
            nats += (loss.double() * (b > 0)).sum()
            nbytes += b.sum()
        nats, nbytes = _sum_ranks(nats, nbytes)
        return (nats / (math.log(2) * nbytes)).item() if nbytes.item() > 0 else float("nan")

    def gzip_bpb(self) -> float | None:
        """Bits per byte of `gzip -9` on the target text val_bpb is measured on; None without a tokenizer."""
        if self.decode_bytes is None:
            return None
        targets = torch.cat([y.view(-1) for _, y in self._batches()]).long()
        text = self.decode_bytes(targets[self.token_bytes.cpu()[targets] > 0].tolist())  # as val_bpb: no <|bos|>
        bits, nbytes = _sum_ranks(*(torch.tensor(v, dtype=torch.float64, device=self.device)
                                    for v in (8 * len(gzip.compress(text, 9)), len(text))))
        return (bits / nbytes).item() if nbytes.item() > 0 else None


def _sum_ranks(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not dist.is_initialized():
        return values
    both = torch.stack(values)
    dist.all_reduce(both)
    return tuple(both)
