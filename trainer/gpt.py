"""The GPT (docs/DESIGN.md §3), built from a ModelShape so its size is exactly trainer.arithmetic's.

- token embedding, then parameter-free RMSNorm; no positional embedding: rotary on q and k
- QK-norm (RMSNorm of q and k after rotary), causal F.scaled_dot_product_attention, n_kv_head = n_head
- MLP of width 4d with ReLU², no biases anywhere
- untied output head; logits soft-capped at 15 (15·tanh(z/15)), loss in fp32
- optional (value_embeddings): nanochat's value residual, on every other layer (the last included) a token's
  row of its own (vocab × d) table is added to v, per head gated by 3·σ(W · the block input's first 12 channels)
- weights are fp32 (master copy); bf16 only inside autocast
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.arithmetic import VE_GATE_CHANNELS, ModelShape

SOFTCAP = 15.0
ROPE_BASE = 10_000


def norm(x):
    return F.rms_norm(x, (x.size(-1),))  # no learnable weight


def rotary(seq_len: int, head_dim: int, base: int = ROPE_BASE):
    """cos, sin of shape (1, T, 1, head_dim/2), fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def _compute_dtype(x):
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class SoftcapCrossEntropy(torch.autograd.Function):
    """Output head + logit soft-cap + cross-entropy in one op, for eager (CPU) training.

    Same math as `lm_head → 15·tanh(z/15) → cross_entropy(sum)`, but the (N, V) logits are made once by
    one matmul and then, a few rows at a time while they sit in cache, turned into their gradient in
    place: one (N, V) buffer instead of autograd's four, and ~3x less time outside the matmuls.
    Returns the summed loss over targets != -1; backward scales by the incoming gradient."""

    @staticmethod
    def forward(ctx, x, weight, targets, rows: int):
        dtype = _compute_dtype(x)
        x, w = x.to(dtype), (weight * (1 / SOFTCAP)).to(dtype)  # the matmul then gives z/c: no pass to scale
        buf = torch.mm(x, w.T, out=_logit_buffers.take((x.size(0), w.size(0)), dtype, x.device))  # z/c, then dL/dz
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for i in range(0, buf.size(0), rows):
            tgt, chunk = targets[i:i + rows], buf[i:i + rows]
            t = chunk.float().tanh_()  # tanh(z/c)
            capped = t * SOFTCAP
            keep = (tgt >= 0).to(t.dtype)
            safe = tgt.clamp(min=0)[:, None]
            picked = capped.gather(1, safe).squeeze(1)
            # |capped| ≤ 15, so exp cannot overflow: no row max is subtracted, and the exponentials are taken
            # once (logsumexp and then a softmax would take them twice, after a pass for the max)
            p = capped.exp_()
            sums = p.sum(dim=1)
            total += ((sums.log() - picked) * keep).sum()
            p.mul_((keep / sums)[:, None])  # softmax, and 0 for a row whose target is ignored
            p.scatter_add_(1, safe, -keep[:, None])  # softmax − one-hot
            torch.addcmul(p, p, t.square_(), value=-1, out=chunk)  # × (1 − tanh²), d(c·tanh(z/c))/dz, stored
        ctx.save_for_backward(buf, x, w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        buf, x, w = ctx.saved_tensors
        g = grad.to(buf.dtype)
        dx = (buf @ w).mul_(g * SOFTCAP)  # w is weight / c
        dw = (buf.T @ x).mul_(g).to(ctx.weight_dtype)
        _logit_buffers.give(buf)
        return dx, dw, None, None


class LogitBuffers:
    """The fused loss's (N, V) buffer, kept from one backward for the next forward. A fresh one costs its
    first-touch page faults every step (the allocator hands blocks that large back to the OS): at N 4,096 ×
    V 65,536 that was ~150 ms of a ~1.5 s compiled bf16 CPU step (docs/benchmarks.md). The buffer is in use only
    from a forward to its backward; a forward that finds none free (two losses before one backward) makes one."""

    def __init__(self):
        self.free: dict[tuple, torch.Tensor] = {}

    def take(self, size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self.free.pop((size, dtype, device), None)
        return buf if buf is not None else torch.empty(size, dtype=dtype, device=device)

    def give(self, buf: torch.Tensor) -> None:
        self.free = {(tuple(buf.shape), buf.dtype, buf.device): buf}  # one kept: a new shape replaces the old


_logit_buffers = LogitBuffers()


# Logits per chunk of the fused loss: 4 MiB of fp32, about an L2 cache. A fixed row count instead (16 rows,
# sized for vocab 65,536) makes ~10 small ops per 16 rows at vocab 4,096: the loss then took half the step.
CHUNK_LOGITS = 1 << 20


@torch.compiler.disable
def softcap_loss(x, weight, targets, reduction: str):
    """Per-token nats (reduction='none', no gradient) or mean/sum, without keeping (N, V) fp32 copies."""
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    rows = max(1, CHUNK_LOGITS // weight.size(0))
    if reduction == "none":
        with torch.no_grad():
            dtype = _compute_dtype(x)
            out = torch.empty(x.size(0), dtype=torch.float32, device=x.device)
            for i in range(0, x.size(0), rows):
                z = SOFTCAP * torch.tanh((x[i:i + rows].to(dtype) @ weight.to(dtype).T).float() / SOFTCAP)
                out[i:i + rows] = F.cross_entropy(z, targets[i:i + rows], ignore_index=-1, reduction="none")
            return out
    total = SoftcapCrossEntropy.apply(x, weight, targets, rows)
    return total if reduction == "sum" else total / (targets >= 0).sum()


class Attention(nn.Module):
    def __init__(self, shape: ModelShape, value_embedding: bool = False):
        super().__init__()
        d, self.n_head, self.head_dim = shape.model_dim, shape.n_head, shape.actual_head_dim
        self.c_q = nn.Linear(d, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(d, shape.kv_dim, bias=False)
        self.c_v = nn.Linear(d, shape.kv_dim, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, shape.n_kv_head, bias=False) if value_embedding else None

    def forward(self, x, cos, sin, ve=None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, -1, self.head_dim)
        v = self.c_v(x).view(B, T, -1, self.head_dim)
        if ve is not None:  # value residual: per head, a gate in (0, 3) on the token's value embedding
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view_as(v).to(v.dtype)
        cos, sin = cos[:, :T].to(q.dtype), sin[:, :T].to(q.dtype)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        d = shape.model_dim
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, shape: ModelShape, value_embedding: bool = False):
        super().__init__()
        self.attn = Attention(shape, value_embedding)
        self.mlp = MLP(shape)

    def forward(self, x, cos, sin, ve=None):
        x = x + self.attn(norm(x), cos, sin, ve)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, shape: ModelShape, fused_loss: bool = False):
        super().__init__()
        self.shape = shape
        self.fused_loss = fused_loss  # SoftcapCrossEntropy for the loss: eager CPU training
        self.wte = nn.Embedding(shape.vocab_size, shape.model_dim)
        ve_layers = shape.value_embed_layers
        self.blocks = nn.ModuleList(Block(shape, i in ve_layers) for i in range(shape.depth))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(shape.vocab_size, shape.kv_dim) for i in ve_layers})
        self.lm_head = nn.Linear(shape.model_dim, shape.vocab_size, bias=False)
        cos, sin = rotary(shape.seq_len, shape.actual_head_dim)
        self.register_buffer("cos", cos, persistent=False)  # derived, not checkpointed
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """nanochat's init: embedding N(0,1); linears N(0, 1/√fan_in · min(1, √(fan_out/fan_in)));
        output head and the residual projections (attn.c_proj, mlp.c_proj) zero."""
        nn.init.normal_(self.wte.weight, std=1.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                nn.init.normal_(m.weight, std=min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in))
        nn.init.zeros_(self.lm_head.weight)
        for block in self.blocks:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:  # nanochat's: gates start a little above neutral (1.5)
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
        bound = math.sqrt(3 / self.shape.model_dim)  # nanochat's: uniform, the std of its c_v
        for table in self.value_embeds.values():
            nn.init.uniform_(table.weight, -bound, bound)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Muon for the block matrices (value-embedding gates included), AdamW for the embedding, the value
        embeddings and the head."""
        groups = {"matrix": list(self.blocks.parameters()), "embedding": [self.wte.weight],
                  "value_embed": list(self.value_embeds.parameters()), "head": [self.lm_head.weight]}
        assert sum(len(g) for g in groups.values()) == len(list(self.parameters()))
        return groups

    def forward(self, idx, targets=None, reduction: str = "mean"):
        """Logits (fp32, soft-capped) without targets; with targets the cross-entropy in nats
        (mean, sum, or per token with reduction='none'); targets of -1 are ignored."""
        x = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, self.cos, self.sin, ve)
        x = norm(x)
        if targets is not None and self.fused_loss:
            return softcap_loss(x, self.lm_head.weight, targets, reduction)
        logits = self.lm_head(x).float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                               reduction=reduction)
