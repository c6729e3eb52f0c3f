"""val_bpb: cross-entropy in bits per UTF-8 byte of the targets, on a fixed validation budget (docs/trainer.md).

The validation tokens are read once and reused by every evaluation; each rank evaluates its share and
the sums are all-reduced. Targets that are special tokens (0 bytes, `<|bos|>`) count in neither sum.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Callable

import torch
import torch.distributed as dist

from trainer.common import log


class Evaluator:
    def __init__(self, make_loader: Callable, steps: int, token_bytes: list[int], device: torch.device,
                 autocast: Callable[[], AbstractContextManager]):
        self.make_loader, self.steps, self.device, self.autocast = make_loader, steps, device, autocast
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
        if dist.is_initialized():
            both = torch.stack([nats, nbytes])
            dist.all_reduce(both)
            nats, nbytes = both[0], both[1]
        return (nats / (math.log(2) * nbytes)).item() if nbytes.item() > 0 else float("nan")
