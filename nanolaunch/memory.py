"""Analytic peak memory of the trainer on one device, as explicit terms (docs/memory.md).

    forward = activations + retained + logits        (the end of the forward pass)
    total   = weights + grads + optimizer + overhead + data + max(forward, optimizer_step)
              + overlap · min(forward, optimizer_step)

The first three are counts of fp32 tensors. The two moments that can hold the peak are the end of the
forward pass (saved activations, the heap they leave behind on CPU, the logits) and Muon's optimizer step
(its per-shape-group temporaries); on CPU part of the other moment's memory is still resident (overlap).
The per-element constants are fitted, per backend:
- CUDA (bf16 autocast, compiled): ACTIVATION_BYTES and OVERHEAD_GIB from the seed record of docs/DESIGN.md §3
  (d10 on an A100-40GB: 11.6 GiB at batch 16, 21.2 GiB at batch 32); there is no retained or step term.
- CPU (fp32, eager, fused loss; what nanolaunch runs there): least squares against the trainer's own
  peak-RSS reports (8-step probes on synthetic data) over 37 configurations, depth 2–8, device batch
  1–32, seq 128–1024, vocab 4,096 and 65,536 (bench/memory_sweep.py, 2026-11-21, 2-core x86_64 24 GiB,
  torch 2.13.0 CPU; raw figures in nanolaunch/data/memory_cpu.csv): max error 6.8%, median 1.4%.
  tests/test_memory_calibration.py re-measures 14 of them and holds each within ±15%. The data term
  (real text instead of synthetic batches) is measured separately.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from trainer.arithmetic import MUON_CHUNK, ModelShape, muon_deal, muon_groups

GIB = 2**30
HEADROOM = 0.10  # fraction of device memory kept free: allocator fragmentation, NCCL buffers, spikes

# bytes of saved activations per (layer · token · model_dim channel). CPU: ~19 fp32 tensors of width d
# per block (norm inputs/outputs, q/k before and after their norm, v, attention output and its copy, the
# 4d MLP activation twice), plus the backward's first gradients, fitted.
ACTIVATION_BYTES = {"cuda": 28.0, "cpu": 93.0}
# CPU only: glibc serves allocations under its mmap threshold (raised dynamically, to at most 32 MiB) from
# the heap and keeps the freed chunks, so while one (tokens × d) fp32 activation is under 32 MiB the RSS
# peak carries this many more bytes per (layer · token · channel); over it, tensors are mmap'd and returned.
RETAINED_BYTES = {"cuda": 0.0, "cpu": 36.0}
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
# Eager bf16 autocast (CUDA without --compile): what autograd saves, counted with saved-tensor hooks on CPU
# (tests/test_memory_model.py), least squares over 8 shapes, max error 0.5%: 48 B per layer·token·channel
# (24 bf16 tensors of width d per block), 11.5 B per token·channel outside the blocks, per logit 2 B with
# the fused loss and 8 B without (bf16 logits, their fp32 soft-capped copy), and autocast's bf16 copies of the
# block matrices and the head (24·L·d² + 2·V·d B), which live until the backward pass has used them.
EAGER_BF16 = {"per_layer_channel": 48.0, "per_channel": 11.5, "per_logit_fused": 2.0, "per_logit": 8.0}
# bytes per logit element kept for the loss backward: bf16 logits on CUDA; on CPU the fused loss keeps
# one (tokens × vocab) fp32 buffer (logits, overwritten by their gradient), its chunks are negligible
LOGIT_BYTES = {"cuda": 2.0, "cpu": 4.0}
# fraction of the smaller of the two moments still resident at the larger one's peak: on CPU the heap
# one leaves behind is fragmented for the other's tensor sizes and is only partly reused (fitted)
OVERLAP = {"cuda": 0.0, "cpu": 0.2}
# CUDA context and compile workspace; on CPU the Python + torch process itself (fitted)
OVERHEAD_GIB = {"cuda": 0.25, "cpu": 0.323}
# CPU only (host memory is not device memory on CUDA): training on real text instead of synthetic batches
# adds pyarrow, the tokenizer and the TokenLoader's background tokenizing thread (its own malloc arena);
# measured +0.07 to +0.10 GiB on the stdlib corpus with a saved tokenizer
DATA_GIB = {"cuda": 0.0, "cpu": 0.085}


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
    retained_gib: float = 0.0  # CPU: freed heap chunks glibc keeps (activations under its mmap threshold)
    optimizer_step_gib: float = 0.0  # Muon's step at its largest chunk: the stacked updates, Newton–Schulz's
    comm_gib: float = 0.0  # at the same moment: reduce-scattered gradients of the owned matrices, scratch
    world_size: int = 1
    backend: str = "cuda"
    compiled: bool = True
    overlap: float = 0.0  # CPU: share of the smaller moment still resident at the larger one's peak
    data_gib: float = 0.0  # CPU: the real-data pipeline (parquet reader, tokenizer, loader thread)
    ns_bytes: int = 2  # Newton–Schulz's element: bf16, or fp32 where bf16 is emulated

    @property
    def forward_gib(self) -> float:
        """What the end of the forward pass adds on top of the fixed terms."""
        return self.activations_gib + self.retained_gib + self.logits_gib

    @property
    def step_gib(self) -> float:
        """What the optimizer step adds on top of the fixed terms, at its peak."""
        return self.comm_gib + self.optimizer_step_gib

    @property
    def total_gib(self) -> float:
        fwd, step = self.forward_gib, self.step_gib
        return (self.weights_gib + self.grads_gib + self.optimizer_gib + self.overhead_gib + self.data_gib
                + max(fwd, step) + self.overlap * min(fwd, step))

    @property
    def usable_gib(self) -> float:
        return self.device_memory_gib * (1 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.usable_gib

    def breakdown(self) -> str:
        """One line: the terms and how they add up."""
        fwd = f"activations {self.activations_gib:.2f}"
        if self.retained_gib:
            fwd += f" + retained {self.retained_gib:.2f}"
        fwd += f" + logits {self.logits_gib:.2f}"
        if self.step_gib:
            step = f"optimizer step {self.optimizer_step_gib:.2f}" + (f" + comm {self.comm_gib:.2f}" if self.comm_gib else "")
            fwd = f"max({fwd}, {step})" + (f" + {self.overlap:g}·min(…)" if self.overlap else "")
        data = f" + data {self.data_gib:.2f}" if self.data_gib else ""
        return (f"weights {self.weights_gib:.2f} + grads {self.grads_gib:.2f} + optimizer {self.optimizer_gib:.2f} + "
                f"{fwd} + overhead {self.overhead_gib:.2f}{data}")

    def terms(self) -> list[dict]:
        """Each term per rank: its GiB, whether it is exact arithmetic or an assumed constant, and its source."""
        cuda, w = self.backend == "cuda", self.world_size
        eager = "eager bf16: counted with saved-tensor hooks (tests/test_memory_model.py)"
        fitted_cuda = "fitted to the d10 A100-40GB record (docs/DESIGN.md §3); unmeasured on this trainer's GPU runs"
        fitted_cpu = "fitted to peak RSS of 37 CPU probes (docs/memory.md)"
        rows = [
            ("weights", self.weights_gib, "exact", "4·P: fp32 master weights"),
            ("gradients", self.grads_gib, "exact", "4·P: fp32, held through the micro-steps"),
            ("optimizer shard", self.optimizer_gib, "exact",
             f"Muon momentum of this rank's matrices + AdamW moments of its 1/{w} slice" if w > 1
             else "Muon momentum + AdamW's two moments (one rank: all of it)"),
            ("optimizer step", self.optimizer_step_gib, "exact", "≤ 8 stacked fp32 updates + Newton–Schulz's "
             f"{'bf16' if self.ns_bytes == 2 else 'fp32'} buffers (eager; compiled assumed no larger)"),
            ("communication", self.comm_gib, "exact", "reduce-scattered gradients of the owned matrices + one "
             "scratch" if w > 1 else "none on one rank"),
            ("activations", self.activations_gib, "exact" if cuda and not self.compiled else "assumed",
             eager if cuda and not self.compiled else fitted_cuda if cuda else fitted_cpu),
            ("logits", self.logits_gib, "exact" if not (cuda and self.compiled) else "assumed",
             eager if cuda and not self.compiled else "bf16 logits, fitted with the activations" if cuda
             else "one fp32 (tokens × vocab) buffer of the fused loss"),
            ("CUDA context + workspace" if cuda else "process", self.overhead_gib, "assumed",
             fitted_cuda if cuda else fitted_cpu),
        ]
        if not cuda:
            rows += [("retained heap", self.retained_gib, "assumed", fitted_cpu),
                     ("data pipeline", self.data_gib, "assumed", "measured on the stdlib corpus (docs/memory.md)")]
        return [{"term": t, "gib": g, "kind": k, "source": src} for t, g, k, src in rows]

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(total_gib=self.total_gib, usable_gib=self.usable_gib, fits=self.fits, forward_gib=self.forward_gib,
                 step_gib=self.step_gib, breakdown=self.breakdown(), terms=self.terms())
        return d


def eager_bf16_saved_bytes(shape: ModelShape, device_batch: int, fused_loss: bool = False) -> tuple[float, float]:
    """(activations incl. autocast's weight copies, logits) that one eager bf16 forward pass saves for backward."""
    n, d, c = device_batch * shape.seq_len, shape.model_dim, EAGER_BF16
    activations = (c["per_layer_channel"] * n * shape.depth * d + c["per_channel"] * n * d
                   + 24 * shape.depth * d * d + 2 * shape.vocab_size * d)
    logits = (c["per_logit_fused"] if fused_loss else c["per_logit"]) * n * shape.vocab_size
    return activations, logits


def optimizer_shard_bytes(shape: ModelShape, world_size: int, rank: int) -> int:
    """This rank's optimizer state: the fp32 momentum of the Muon matrices it owns, AdamW's two fp32 moments
    of its slice of the embedding and the head, and their two step counters (fp32 scalars). Exact."""
    muon = sum(4 * rows * cols * owned for (rows, cols), owned in _owned(shape, world_size, rank))
    adam = sum(8 * _slice(n, world_size, rank) + 4 for n in (shape.head_params, shape.embedding_params))
    return muon + adam


def muon_step_bytes(shape: ModelShape, world_size: int, rank: int, ns_bytes: int = 2) -> tuple[int, int]:
    """(step temporaries, communication buffers) at the peak of this rank's Muon step (trainer/optim.py),
    eager; exact. Per shape group, while a chunk of c owned matrices of r × c elements s = r·c, m = min(r, c):
    the stacked fp32 updates 4·c·s and Newton–Schulz's buffers ns_bytes·c·max(4s + m², 3s + 3m²) (2: bf16,
    4: fp32, where bf16 products are emulated: trainer/precision.py); with several
    ranks also the reduce-scattered gradients of every owned matrix and one scratch matrix, 4·s·(owned + 1)
    (or, where larger, AdamW's reduce-scattered gradient slices)."""
    best = (0, 0)
    for (rows, cols), owned in _owned(shape, world_size, rank):
        if not owned:
            continue
        s, m, c = rows * cols, min(rows, cols), min(MUON_CHUNK, owned)
        temps = 4 * c * s + ns_bytes * c * max(4 * s + m * m, 3 * s + 3 * m * m)
        comm = 4 * s * (owned + 1) if world_size > 1 else 0
        best = max(best, (temps, comm), key=sum)
    if world_size > 1:  # AdamW's step before it: the reduce-scattered gradient slices of the embedding and head
        adam = sum(4 * -(-n // world_size) for n in (shape.head_params, shape.embedding_params))
        best = max(best, (0, adam), key=sum)
    return best


def _owned(shape: ModelShape, world_size: int, rank: int) -> list[tuple[tuple[int, int], int]]:
    """Per Muon shape group: (rows, cols) and how many of its matrices this rank owns, as the trainer deals them."""
    groups = muon_groups(shape)
    deals = muon_deal([n for _, n in groups], world_size)
    return [(rc, sum(1 for slots in rounds if slots[rank] is not None)) for (rc, _), rounds in zip(groups, deals)]


def _slice(n: int, world_size: int, rank: int) -> int:
    per = -(-n // world_size)
    return max(0, min(n, (rank + 1) * per) - rank * per)


def estimate(shape: ModelShape, device_batch: int, device_memory_gib: float, backend: str = "cuda", *,
             real_data: bool = True, world_size: int = 1, compiled: bool = True, ns_bytes: int = 2) -> MemoryEstimate:
    """Peak memory per device (rank 0, whose shares are the largest) for one micro-batch of `device_batch`
    sequences; `real_data` False for synthetic batches (probes with --probe-data synthetic, the calibration);
    `ns_bytes` 4 where Newton–Schulz runs in fp32 (a CPU without native bf16)."""
    tokens = device_batch * shape.seq_len
    p = shape.params
    layer_channels = tokens * shape.depth * shape.model_dim
    on_heap = 4 * tokens * shape.model_dim < MMAP_THRESHOLD_MAX  # one fp32 (tokens × d) activation
    step = muon_step_bytes(shape, world_size, 0, ns_bytes)
    if backend == "cuda" and not compiled:
        activations, logits = eager_bf16_saved_bytes(shape, device_batch)
    else:
        activations = ACTIVATION_BYTES[backend] * layer_channels
        logits = LOGIT_BYTES[backend] * tokens * shape.vocab_size
    return MemoryEstimate(
        weights_gib=4 * p / GIB,
        grads_gib=4 * p / GIB,
        optimizer_gib=optimizer_shard_bytes(shape, world_size, 0) / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        overhead_gib=OVERHEAD_GIB[backend],
        device_memory_gib=device_memory_gib,
        retained_gib=RETAINED_BYTES[backend] * layer_channels / GIB if on_heap else 0.0,
        optimizer_step_gib=step[0] / GIB,
        comm_gib=step[1] / GIB,
        world_size=world_size,
        backend=backend,
        compiled=compiled,
        overlap=OVERLAP[backend],
        data_gib=DATA_GIB[backend] if real_data else 0.0,
        ns_bytes=ns_bytes,
    )
