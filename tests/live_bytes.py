"""Bytes of the tensors that torch ops create, live and at their peak, counted as they are made and freed
(a dispatch mode: every op's new outputs, each storage once, released when its last tensor is collected;
in-place results and views of tensors made before are not new)."""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.holders: dict[int, int] = {}  # storage address -> tensors made by ops that still hold it
        self.sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if not key or not storage.nbytes() or (key in inputs and key not in self.holders):
                    continue  # an in-place op or a view of a tensor made before: nothing new
                if key not in self.holders:
                    self.sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    self.holders[key] = 0
                self.holders[key] += 1
                weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key]
            self.live -= self.sizes.pop(key)
