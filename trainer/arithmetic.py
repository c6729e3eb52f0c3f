"""Model arithmetic: shape, parameter count and FLOPs/token of the GPT, without torch.

This is the one home of these numbers. The trainer builds its model from a `ModelShape` and the
launcher's planner prints the same object, so the two can never disagree (docs/DESIGN.md §2, §3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ASPECT_RATIO = 64  # model_dim = 64 · depth
DEFAULT_HEAD_DIM = 128
DEFAULT_VOCAB = 65_536
DEFAULT_SEQ_LEN = 2048
DEFAULT_TOTAL_BATCH = 524_288  # tokens per optimizer step


VE_GATE_CHANNELS = 12  # value embeddings: the gate reads the first 12 channels of the block's input (nanochat)


class ShapeError(ValueError):
    """A model shape that cannot be built; the message is one line and says why."""


@dataclass(frozen=True)
class ModelShape:
    depth: int
    vocab_size: int = DEFAULT_VOCAB
    seq_len: int = DEFAULT_SEQ_LEN
    head_dim: int = DEFAULT_HEAD_DIM
    value_embeddings: bool = False  # nanochat's value residual (trainer/gpt.py); off: the shape of the records

    def __post_init__(self) -> None:
        for name in ("depth", "vocab_size", "seq_len", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ShapeError(f"{name} must be a positive whole number, got {value!r}")
        if not isinstance(self.value_embeddings, bool):
            raise ShapeError(f"value_embeddings must be true or false, got {self.value_embeddings!r}")
        if self.model_dim % self.n_head:
            raise ShapeError(
                f"depth {self.depth} gives model_dim {self.model_dim}, which does not split into "
                f"{self.n_head} heads of head_dim ≤ {self.head_dim}; use an even depth or another head_dim"
            )

    @property
    def model_dim(self) -> int:
        return ASPECT_RATIO * self.depth

    @property
    def n_head(self) -> int:
        return math.ceil(self.model_dim / self.head_dim)

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def actual_head_dim(self) -> int:
        return self.model_dim // self.n_head

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.model_dim

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.model_dim

    @property
    def kv_dim(self) -> int:
        """Width of k and v (all kv heads): a value embedding's row."""
        return self.n_kv_head * self.actual_head_dim

    @property
    def value_embed_layers(self) -> tuple[int, ...]:
        """Layers with a value embedding: every other one, the last included (nanochat's has_ve)."""
        if not self.value_embeddings:
            return ()
        return tuple(i for i in range(self.depth) if i % 2 == (self.depth - 1) % 2)

    @property
    def value_embed_params(self) -> int:
        """One (vocab × kv_dim) table per value-embedding layer: looked up, no FLOPs, trained by AdamW."""
        return len(self.value_embed_layers) * self.vocab_size * self.kv_dim

    @property
    def matrix_params(self) -> int:
        """Block matrices (attention q, k, v, o, the 4d MLP, value-embedding gates), the ones Muon trains."""
        gates = len(self.value_embed_layers) * self.n_kv_head * VE_GATE_CHANNELS
        return 12 * self.depth * self.model_dim**2 + gates

    @property
    def params(self) -> int:
        return self.embedding_params + self.value_embed_params + self.head_params + self.matrix_params

    @property
    def flops_per_token(self) -> int:
        """6·(params − embeddings) for the matmuls plus 12·L·heads·head_dim·T for attention."""
        attention = 12 * self.depth * self.n_head * self.actual_head_dim * self.seq_len
        return 6 * (self.params - self.embedding_params - self.value_embed_params) + attention

    def as_dict(self) -> dict:
        return {
            "depth": self.depth,
            "model_dim": self.model_dim,
            "n_heads": self.n_head,
            "n_kv_heads": self.n_kv_head,
            "head_dim": self.actual_head_dim,
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "params": self.params,
            "matrix_params": self.matrix_params,
            "embedding_params": self.embedding_params,
            "flops_per_token": self.flops_per_token,
        } | ({"value_embeddings": True, "value_embed_params": self.value_embed_params} if self.value_embeddings else {})


MUON_CHUNK = 8  # matrices Muon orthogonalises at once: bounds its step's temporaries whatever the depth


def muon_groups(shape: ModelShape) -> list[tuple[tuple[int, int], int]]:
    """Muon's shape groups in the order it deals them to ranks: ((rows, cols), matrices), sorted by shape.
    Per block: q, k, v, o (d × d), the MLP's c_fc (4d × d) and c_proj (d × 4d); with value embeddings each such
    layer's gate (kv heads × 12)."""
    d, L = shape.model_dim, shape.depth
    gates = [((shape.n_kv_head, VE_GATE_CHANNELS), len(shape.value_embed_layers))] if shape.value_embeddings else []
    return sorted([((d, d), 4 * L), ((4 * d, d), L), ((d, 4 * d), L)] + gates)


def deal(count: int, start: int, world_size: int) -> list[list[int | None]]:
    """Rounds of one slot per rank (slot r: the index of rank r's matrix, or None), dealing `count` matrices
    in order from slot `start`: the ownership of Muon's sharded state (trainer/optim.py)."""
    rounds: list[list[int | None]] = [[None] * world_size for _ in range(-(-(start + count) // world_size))]
    for i in range(count):
        rounds[(start + i) // world_size][(start + i) % world_size] = i
    return rounds


def muon_deal(group_sizes: list[int], world_size: int) -> list[list[list[int | None]]]:
    """Every group's rounds; each group starts dealing where the last stopped, so shares differ by ≤ 1."""
    out, dealt = [], 0
    for n in group_sizes:
        out.append(deal(n, dealt % world_size, world_size))
        dealt += n
    return out


def grad_accum_steps(total_batch: int, device_batch: int, seq_len: int, world_size: int) -> int:
    """Micro-steps per optimizer step; refuses a split that is not whole, showing the arithmetic."""
    per_step = device_batch * seq_len * world_size
    if per_step <= 0:
        raise ShapeError("device batch, sequence length and world size must be positive")
    if total_batch % per_step:
        raise ShapeError(
            f"total batch {total_batch:,} tokens does not split evenly: {total_batch:,}/"
            f"({device_batch}·{seq_len}·{world_size}) = {total_batch / per_step:.2f}, not a whole number"
        )
    return total_batch // per_step


def iterations_for(params: int, total_batch: int, *, ratio: float | None = None,
                   iterations: int | None = None, target_flops: float | None = None,
                   flops_per_token: int | None = None) -> int:
    """Training horizon in optimizer steps from exactly one of ratio, iterations or target FLOPs."""
    given = [x is not None for x in (ratio, iterations, target_flops)]
    if sum(given) != 1:
        raise ShapeError("give exactly one of ratio, iterations or target FLOPs")
    if iterations is not None:
        steps = iterations
    elif ratio is not None:
        if not ratio > 0:
            raise ShapeError(f"ratio must be positive, got {ratio}")
        steps = int(ratio * params // total_batch)  # nanochat: target tokens // total batch
    else:
        if not target_flops > 0 or not flops_per_token:
            raise ShapeError(f"target FLOPs must be positive, got {target_flops}")
        steps = int(target_flops // (flops_per_token * total_batch))
    if steps < 1:
        raise ShapeError(f"that horizon gives {steps} optimizer steps; it needs at least 1")
    return steps
