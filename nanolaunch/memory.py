"""Analytic peak memory of the trainer on one device, as a sum of explicit terms.

Every term is a count of tensors times bytes per element. Two constants are not first principles:
ACTIVATION_BYTES (saved activations per layer, per token, per model_dim channel) and OVERHEAD_GIB.
For CUDA bf16 with torch.compile they are fitted to the seed record of DESIGN.md §3 (d10 on an
A100-40GB: 11.6 GiB at batch 16, 21.2 GiB at batch 32); the CPU figures are a first estimate.
docs/memory.md lists the terms; a later calibration replaces the constants with measured fits.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from trainer.arithmetic import ModelShape

GIB = 2**30
HEADROOM = 0.10  # fraction of device memory kept free: allocator fragmentation, NCCL buffers, spikes

# bytes of saved activations per (layer · token · model_dim channel)
ACTIVATION_BYTES = {"cuda": 28.0, "cpu": 80.0}
# bytes per logit element kept for the backward pass (bf16 logits on CUDA, fp32 on CPU)
LOGIT_BYTES = {"cuda": 2.0, "cpu": 4.0}
# CUDA context and compile workspace; on CPU the Python + torch process itself
OVERHEAD_GIB = {"cuda": 0.25, "cpu": 0.35}


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float  # fp32 master weights
    grads_gib: float  # fp32 gradients
    optimizer_gib: float  # Muon momentum (block matrices) + AdamW two moments (embedding, head)
    activations_gib: float  # saved for backward, all layers
    logits_gib: float  # output logits kept for the loss backward
    overhead_gib: float
    device_memory_gib: float
    headroom: float = HEADROOM

    @property
    def total_gib(self) -> float:
        return (self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib
                + self.logits_gib + self.overhead_gib)

    @property
    def usable_gib(self) -> float:
        return self.device_memory_gib * (1 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.usable_gib

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(total_gib=self.total_gib, usable_gib=self.usable_gib, fits=self.fits)
        return d


def estimate(shape: ModelShape, device_batch: int, device_memory_gib: float, backend: str = "cuda") -> MemoryEstimate:
    """Peak memory per device for one micro-batch of `device_batch` sequences."""
    tokens = device_batch * shape.seq_len
    p = shape.params
    adam_params = shape.embedding_params + shape.head_params
    return MemoryEstimate(
        weights_gib=4 * p / GIB,
        grads_gib=4 * p / GIB,
        optimizer_gib=(4 * shape.matrix_params + 8 * adam_params) / GIB,
        activations_gib=ACTIVATION_BYTES[backend] * tokens * shape.depth * shape.model_dim / GIB,
        logits_gib=LOGIT_BYTES[backend] * tokens * shape.vocab_size / GIB,
        overhead_gib=OVERHEAD_GIB[backend],
        device_memory_gib=device_memory_gib,
    )
