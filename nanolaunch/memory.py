"""Analytic peak memory of the trainer on one device, as explicit terms (docs/memory.md).

    forward = activations + retained + logits + logit gradient   (the end of the forward pass)
    total   = weights + grads + optimizer + overhead + data + max(forward, optimizer_step)
              + overlap · min(forward, optimizer_step)
    high    = total + the largest unexplained excess of a published figure (CUDA; the verdict's range)

Weights, grads and optimizer are counts of fp32 tensors. The two moments that can hold the peak are the end
of the forward pass (saved activations, the heap they leave behind on CPU, the logits) and Muon's optimizer
step (its per-shape-group temporaries); on CPU part of the other moment's memory is still resident (overlap).
The per-element constants, per backend:
- CUDA (bf16 autocast): counted, not fitted. Compiled: COMPILED_BF16, from the compiled graph
  (trainer/graph_census.py); eager: EAGER_BF16, from what autograd saves. The published figures
  (data/memory_published.csv) bound the high end; the context and cuBLAS workspace are assumed.
- CPU (fp32, eager, fused loss; what nanolaunch runs there): the counted terms held exact, the activation,
  retained-heap, step-heap, overlap and overhead constants by least squares against the trainer's own peak-RSS
  reports (8-step probes on synthetic data) over 37 configurations, depth 2–8, device batch 1–32, seq
  128–1024, vocab 4,096 and 65,536 (bench/memory_sweep.py, 2026-12-06, 2-core Xeon with AMX/AVX-512 BF16,
  24 GiB, torch 2.13.0 CPU; nanolaunch/data/memory_cpu.csv, and memory_cpu_fp32ns.csv for Newton–Schulz in
  fp32): max error 6.8% (bf16 Newton–Schulz) and 11.5% (fp32). tests/test_memory_calibration.py re-measures 14
  of them and holds each within ±15%. The data term (real text instead of synthetic batches) is measured
  separately.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from trainer.arithmetic import MUON_CHUNK, ModelShape, muon_deal, muon_groups

GIB = 2**30
HEADROOM = 0.10  # fraction of device memory kept free: allocator fragmentation, NCCL buffers, spikes

# bytes of saved activations per (layer · token · model_dim channel) on CPU: ~19 fp32 tensors of width d per block
# (norm inputs/outputs, q/k before and after their norm, v, attention output and its copy, the 4d MLP
# activation twice), plus the backward's first gradients, fitted. (Compiled CUDA: COMPILED_BF16 below.)
ACTIVATION_BYTES = {"cpu": 90.0}
# Compiled bf16 on CUDA (torch.compile's default backend): what the forward pass keeps for backward, counted from
# the graph itself by trainer/graph_census.py (AOTAutograd + inductor's partitioner, CUDA's autocast op policy,
# torch 2.13) over depth 4-20 at vocab 65,536, seq 2,048 (graph_census.SHAPES; the linear form is exact to 0.2%,
# and d34 is predicted within 0.1%); tests/test_graph_census.py re-derives
# them. Per layer·token·channel: the fp32 residual stream (the fp32 embedding keeps it fp32), its norms, bf16
# q/k/v and attention outputs, the bf16 MLP hidden; per token·channel outside the blocks: the embedding output
# and final norm; per logit: the bf16 logits (inductor's decompositions let the partitioner recompute the fp32
# soft-cap and log-softmax from them and the row reductions);
# per weight: autocast's bf16 copy of every block matrix and of the head, kept for the backward matmuls.
COMPILED_BF16 = {"per_layer_channel": 40.1204, "per_channel": 5.4837, "per_layer_token": 0.0857,
                 "per_token": 408.5363, "per_logit": 2.0, "per_weight": 2.0}
# At the start of backward the loss's gradient with respect to the logits exists too, in bf16 (the input of the
# head's backward matmul): the (65,536 × 65,536) bf16 buffer of nanochat issue #443's out-of-memory at d20
# batch 32 is exactly it. Bytes per logit, on top of the saved ones.
LOGIT_GRAD_BYTES = 2.0
# CPU only: glibc serves allocations under its mmap threshold (raised dynamically, to at most 32 MiB) from
# the heap and keeps the freed chunks, so while one (tokens × d) fp32 activation is under 32 MiB the RSS
# peak carries this many more bytes per (layer · token · channel); over it, tensors are mmap'd and returned.
RETAINED_BYTES = {"cuda": 0.0, "cpu": 14.0}
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
# Eager bf16 autocast (CUDA without --compile): what autograd saves, counted with saved-tensor hooks on CPU
# (tests/test_memory_model.py), least squares over 8 shapes, max error 0.5%: 48 B per layer·token·channel
# (24 bf16 tensors of width d per block), 11.5 B per token·channel outside the blocks, per logit 2 B with
# the fused loss and 8 B without (bf16 logits, their fp32 soft-capped copy), and autocast's bf16 copies of the
# block matrices and the head (24·L·d² + 2·V·d B), which live until the backward pass has used them.
EAGER_BF16 = {"per_layer_channel": 48.0, "per_channel": 11.5, "per_logit_fused": 2.0, "per_logit": 8.0}
# bytes per logit element kept for the loss backward on CPU: the fused loss keeps one (tokens × vocab) fp32
# buffer (logits, overwritten by their gradient), its chunks are negligible
LOGIT_BYTES = {"cpu": 4.0}
# fraction of the smaller of the two moments still resident at the larger one's peak: on CPU the heap
# one leaves behind is fragmented for the other's tensor sizes and is only partly reused (fitted)
OVERLAP = {"cuda": 0.0, "cpu": 0.0}
# Value embeddings (the setting; off in every record): per value-embedding layer · token · kv channel, the looked-up
# row kept for the gate's gradient: fp32 on CPU, fp32 + its bf16 copy under autocast. Assumed from the code, not
# in the graph census or the CPU fit.
VE_SAVED_BYTES = {"cuda": 6.0, "cpu": 4.0}
# CPU only: resident bytes per counted byte of Muon's step temporaries (exact as tensors, muon_step_bytes), by
# Newton–Schulz's element size: the step's short-lived tensors of a few MiB each are heap allocations, and the
# freed chunks stay resident beside the next shape group's (fitted, like RETAINED_BYTES; fp32's with the other
# constants held, on the same machine with bf16 declared emulated)
STEP_HEAP_CPU = {2: 1.55, 4: 2.1}
# CUDA: the context outside PyTorch's allocator (driver, kernels; PyTorch's notes on CUDA memory put it at
# 300 MiB to over 1 GiB by GPU and CUDA version: 0.5 assumed) and cuBLAS's workspace, which PyTorch allocates
# through its caching allocator (32 MiB per handle on Hopper: CUBLAS_WORKSPACE_CONFIG's default :4096:8).
# On CPU the Python + torch process itself (fitted).
CUDA_CONTEXT_GIB = 0.5
OVERHEAD_GIB = {"cuda": CUDA_CONTEXT_GIB + 32 / 1024, "cpu": 0.339}
# CPU only (host memory is not device memory on CUDA): training on real text instead of synthetic batches
# adds pyarrow, the tokenizer and the TokenLoader's background tokenizing thread (its own malloc arena);
# measured +0.07 to +0.10 GiB on the stdlib corpus with a saved tokenizer
DATA_GIB = {"cuda": 0.0, "cpu": 0.085}


PUBLISHED = Path(__file__).parent / "data" / "memory_published.csv"


def published() -> list[dict]:
    """The published figures, each with this model's count for its shape (allocated: without the CUDA context,
    which max_memory_allocated does not see) and the excess of the figure over it."""
    lines = [line for line in PUBLISHED.read_text().splitlines() if not line.startswith("#")]
    rows = []
    for r in csv.DictReader(lines):
        shape = ModelShape(int(r["depth"]), vocab_size=int(r["vocab_size"]), seq_len=int(r["seq_len"]))
        counted = estimate(shape, int(r["device_batch"]), 80.0, "cuda", world_size=int(r["world_size"]),
                           excess=False)
        predicted = counted.total_gib - CUDA_CONTEXT_GIB
        figure = float(r["allocated_gib"])
        rows.append({**r, "depth": shape.depth, "device_batch": int(r["device_batch"]),
                     "world_size": int(r["world_size"]), "params": shape.params, "allocated_gib": figure,
                     "predicted_gib": predicted, "error": (predicted - figure) / figure,
                     "excess_bytes_per_param": (figure - predicted) * GIB / shape.params})
    return rows


@lru_cache(maxsize=1)
def excess_per_param() -> tuple[float, str]:
    """The largest excess of a fitted published figure over the count, per parameter, and its source: what the
    high end of a CUDA verdict adds (an unmodelled copy of weights or state scales with the parameters)."""
    worst = max((r for r in published() if r["fitted"] == "yes"), key=lambda r: r["excess_bytes_per_param"])
    return max(0.0, worst["excess_bytes_per_param"]), (f"{worst['source']}: d{worst['depth']} batch "
                                                       f"{worst['device_batch']} on {worst['gpu']}")


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
    logit_grad_gib: float = 0.0  # CUDA: the loss's bf16 gradient of the logits, at the start of backward
    value_embed_gib: float = 0.0  # value embeddings' saved rows (VE_SAVED_BYTES; assumed)
    excess_gib: float = 0.0  # CUDA: the largest unexplained excess of a published figure, at this size
    excess_source: str = ""
    step_heap: float = 1.0  # CPU: resident bytes per counted byte of the step's temporaries (optimizer_step_gib)

    @property
    def forward_gib(self) -> float:
        """What the end of the forward pass adds on top of the fixed terms."""
        return (self.activations_gib + self.retained_gib + self.logits_gib + self.logit_grad_gib
                + self.value_embed_gib)

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
        """The counted peak (the low end) fits."""
        return self.total_gib <= self.usable_gib

    @property
    def high_gib(self) -> float:
        return self.total_gib + self.excess_gib

    @property
    def verdict(self) -> str:
        """fits: even the high end does, and every term is backed; probe first: only the counted peak fits, or a
        term is assumed with nothing measured behind it (value embeddings); does not fit."""
        if not self.fits:
            return "does not fit"
        return "fits" if self.high_gib <= self.usable_gib and not self.value_embed_gib else "probe first"

    def breakdown(self) -> str:
        """One line: the terms and how they add up."""
        fwd = f"activations {self.activations_gib:.2f}"
        if self.retained_gib:
            fwd += f" + retained {self.retained_gib:.2f}"
        fwd += f" + logits {self.logits_gib:.2f}"
        if self.logit_grad_gib:
            fwd += f" + logit grad {self.logit_grad_gib:.2f}"
        if self.value_embed_gib:
            fwd += f" + value embeddings {self.value_embed_gib:.2f}"
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
        census = "counted from the compiled graph (trainer/graph_census.py), CUDA's autocast policy"
        fitted_cpu = "fitted to peak RSS of 37 CPU probes per Newton–Schulz precision (docs/memory.md)"
        rows = [
            ("weights", self.weights_gib, "exact", "4·P: fp32 master weights"),
            ("gradients", self.grads_gib, "exact", "4·P: fp32, held through the micro-steps"),
            ("optimizer shard", self.optimizer_gib, "exact",
             f"Muon momentum of this rank's matrices + AdamW moments of its 1/{w} slice" if w > 1
             else "Muon momentum + AdamW's two moments (one rank: all of it)"),
            ("optimizer step", self.optimizer_step_gib, "exact" if cuda else "assumed", "≤ 8 stacked fp32 updates "
             f"+ Newton–Schulz's {'bf16' if self.ns_bytes == 2 else 'fp32'} buffers (eager; compiled assumed no "
             "larger)" + ("" if cuda else f", × {self.step_heap:g} resident per counted byte ({fitted_cpu})")),
            ("communication", self.comm_gib, "exact", ("reduce-scattered gradients of the owned matrices + one "
             "scratch" + (" + NCCL's flat list buffers (world × matrix per round in flight)" if cuda else ""))
             if w > 1 else "none on one rank"),
            ("activations", self.activations_gib, "exact" if cuda else "assumed",
             (census if self.compiled else eager) + "; incl. bf16 weight copies" if cuda else fitted_cpu),
            ("logits", self.logits_gib, "exact",
             (census + ": bf16 (tokens × vocab)" if self.compiled else eager) if cuda
             else "one fp32 (tokens × vocab) buffer of the fused loss"),
        ]
        if cuda:
            rows.append(("logit gradient", self.logit_grad_gib, "exact", "bf16 (tokens × vocab) at the start of "
                         "backward (the buffer of nanochat issue #443's OOM)"))
        if self.value_embed_gib:
            rows.append(("value embeddings", self.value_embed_gib, "assumed", "the looked-up rows kept for the gates' "
                         "gradient (not in the graph census or the CPU fit)"))
        rows.append(("CUDA context + workspace" if cuda else "process", self.overhead_gib, "assumed",
                     "context ~0.5 GiB (outside the allocator) + cuBLAS workspace 32 MiB" if cuda else fitted_cpu))
        if not cuda:
            rows += [("retained heap", self.retained_gib, "assumed", fitted_cpu),
                     ("data pipeline", self.data_gib, "assumed", "measured on the stdlib corpus (docs/memory.md)")]
        return [{"term": t, "gib": g, "kind": k, "source": src} for t, g, k, src in rows]

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(total_gib=self.total_gib, usable_gib=self.usable_gib, fits=self.fits, forward_gib=self.forward_gib,
                 high_gib=self.high_gib, verdict=self.verdict,
                 step_gib=self.step_gib, breakdown=self.breakdown(), terms=self.terms())
        return d


def eager_bf16_saved_bytes(shape: ModelShape, device_batch: int, fused_loss: bool = False) -> tuple[float, float]:
    """(activations incl. autocast's weight copies, logits) that one eager bf16 forward pass saves for backward."""
    n, d, c = device_batch * shape.seq_len, shape.model_dim, EAGER_BF16
    activations = (c["per_layer_channel"] * n * shape.depth * d + c["per_channel"] * n * d
                   + 24 * shape.depth * d * d + 2 * shape.vocab_size * d)
    logits = (c["per_logit_fused"] if fused_loss else c["per_logit"]) * n * shape.vocab_size
    return activations, logits


def compiled_bf16_saved_bytes(shape: ModelShape, device_batch: int) -> tuple[float, float]:
    """(activations incl. the bf16 weight copies, logits) that the compiled bf16 forward pass keeps for backward."""
    n, d, L, c = device_batch * shape.seq_len, shape.model_dim, shape.depth, COMPILED_BF16
    activations = (c["per_layer_channel"] * L * n * d + c["per_channel"] * n * d + c["per_layer_token"] * L * n
                   + c["per_token"] * n + c["per_weight"] * (shape.matrix_params + shape.head_params))
    return activations, c["per_logit"] * n * shape.vocab_size


def nccl_list_bytes(shape: ModelShape, world_size: int, rank: int) -> int:
    """NCCL (ProcessGroupNCCL) reduce-scatters from and all-gathers into a list of tensors through one flat
    buffer of world × matrix per call, held by the call until it completes; Muon issues a shape group's rounds
    together and then waits: 4 · world · size · rounds for the largest group (the gloo path has no such copy)."""
    best = 0
    for ((rows, cols), _), rounds in zip(muon_groups(shape), muon_deal([n for _, n in muon_groups(shape)],
                                                                       world_size)):
        best = max(best, 4 * rows * cols * world_size * len(rounds))
    return best


def optimizer_shard_bytes(shape: ModelShape, world_size: int, rank: int) -> int:
    """This rank's optimizer state: the fp32 momentum of the Muon matrices it owns, AdamW's two fp32 moments
    of its slice of the embedding, the value embeddings and the head, and their step counters (fp32 scalars).
    Exact."""
    muon = sum(4 * rows * cols * owned for (rows, cols), owned in _owned(shape, world_size, rank))
    adam = sum(8 * _slice(n, world_size, rank) + 4 for n in _adamw_tables(shape))
    return muon + adam


def _adamw_tables(shape: ModelShape) -> list[int]:
    """Elements of each parameter AdamW trains: the head, the embedding, each value-embedding table."""
    tables = [shape.vocab_size * shape.kv_dim] * len(shape.value_embed_layers)
    return [shape.head_params, shape.embedding_params, *tables]


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
        adam = sum(4 * -(-n // world_size) for n in _adamw_tables(shape))
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
             real_data: bool = True, world_size: int = 1, compiled: bool = True, ns_bytes: int = 2,
             excess: bool = True) -> MemoryEstimate:
    """Peak memory per device (the rank with the largest shares) for one micro-batch of `device_batch`
    sequences; `real_data` False for synthetic batches (probes with --probe-data synthetic, the calibration);
    `ns_bytes` 4 where Newton–Schulz runs in fp32 (a CPU without native bf16)."""
    tokens = device_batch * shape.seq_len
    p = shape.params
    layer_channels = tokens * shape.depth * shape.model_dim
    on_heap = 4 * tokens * shape.model_dim < MMAP_THRESHOLD_MAX  # one fp32 (tokens × d) activation
    ranks = range(world_size)  # the largest share: rank 0's without gates, not always with them
    step = max((muon_step_bytes(shape, world_size, r, ns_bytes) for r in ranks), key=sum)
    heap_factor = STEP_HEAP_CPU[ns_bytes] if backend == "cpu" else 1.0
    transient = 0.0
    if backend == "cuda":
        saved = compiled_bf16_saved_bytes if compiled else eager_bf16_saved_bytes
        activations, logits = saved(shape, device_batch)
        transient = LOGIT_GRAD_BYTES * tokens * shape.vocab_size
        if world_size > 1:  # NCCL flattens the optimizer's tensor lists into buffers held until the round ends
            step = (step[0], step[1] + nccl_list_bytes(shape, world_size, 0))
    else:
        activations = ACTIVATION_BYTES[backend] * layer_channels
        logits = LOGIT_BYTES[backend] * tokens * shape.vocab_size
    return MemoryEstimate(
        weights_gib=4 * p / GIB,
        grads_gib=4 * p / GIB,
        optimizer_gib=max(optimizer_shard_bytes(shape, world_size, r) for r in ranks) / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        logit_grad_gib=transient / GIB,
        value_embed_gib=VE_SAVED_BYTES[backend] * tokens * len(shape.value_embed_layers) * shape.kv_dim / GIB,
        overhead_gib=OVERHEAD_GIB[backend],
        device_memory_gib=device_memory_gib,
        retained_gib=RETAINED_BYTES[backend] * layer_channels / GIB if on_heap else 0.0,
        optimizer_step_gib=heap_factor * step[0] / GIB,
        step_heap=heap_factor,
        comm_gib=step[1] / GIB,
        world_size=world_size,
        backend=backend,
        compiled=compiled,
        overlap=OVERLAP[backend],
        data_gib=DATA_GIB[backend] if real_data else 0.0,
        ns_bytes=ns_bytes,
        **_excess(shape, backend == "cuda" and excess),
    )


def _excess(shape: ModelShape, applies: bool) -> dict:
    if not applies:
        return {}
    per_param, source = excess_per_param()
    return {"excess_gib": per_param * shape.params / GIB,
            "excess_source": f"{per_param:.1f} B per parameter, the largest excess of a published figure over "
                             f"the count ({source}; docs/memory.md)"}
