"""Optimizers and schedules (docs/DESIGN.md §3): Muon for block matrices, AdamW for embedding and head.

Gradients are averaged across ranks before step() (DDP), so both optimizers run replicated: every
rank holds the same optimizer state and takes the same step.
"""
from __future__ import annotations

import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton–Schulz, maximal slope at zero (Keller Jordan)
ADAM_BETAS = (0.8, 0.95)
ADAM_EPS = 1e-10
MUON_MOMENTUM = (0.85, 0.95)  # warmed from the first to the second over MUON_MOMENTUM_STEPS
MUON_MOMENTUM_STEPS = 300


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise G (…, m, n): ~U·S'·Vᵀ with S' in about [0.5, 1.5]. Runs in bf16."""
    a, b, c = NS_COEFFS
    X = G.bfloat16()
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm ≤ 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


_ns = newton_schulz


def compile_newton_schulz() -> None:
    """Use a torch.compile'd Newton–Schulz (the trainer calls this when --compile is on)."""
    global _ns
    _ns = torch.compile(newton_schulz)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz: SGD-Nesterov momentum, then each 2-D update is
    replaced by its approximate orthogonalisation and scaled by √max(1, rows/cols).
    Parameters of one shape are orthogonalised together in one batched call."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5):
        params = list(params)
        assert all(p.ndim == 2 for p in params), "Muon takes 2-D parameters only"
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [dict(params=[p for p in params if tuple(p.shape) == s]) for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mom = group["momentum"]
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                updates.append(p.grad.lerp(buf, mom) if group["nesterov"] else buf)
            ortho = _ns(torch.stack(updates), group["ns_steps"])
            scale = max(1.0, params[0].size(-2) / params[0].size(-1)) ** 0.5
            for p, u in zip(params, ortho.unbind(0)):
                p.add_(u.to(p.dtype), alpha=-group["lr"] * scale)


def adamw(groups: list[dict], device_type: str) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0,
                             fused=device_type in ("cuda", "cpu"))


def dmodel_lr_scale(model_dim: int) -> float:
    """AdamW learning rates were tuned at d=768; they scale as (d/768)^-0.5."""
    return (model_dim / 768) ** -0.5


def build_optimizers(model, *, matrix_lr: float, embedding_lr: float, unembedding_lr: float,
                     device_type: str) -> list[torch.optim.Optimizer]:
    """[AdamW(head, embedding), Muon(block matrices)]; every group records its base lr in 'initial_lr'."""
    groups = model.param_groups()
    scale = dmodel_lr_scale(model.shape.model_dim)
    adam = adamw([dict(params=groups["head"], lr=unembedding_lr * scale),
                  dict(params=groups["embedding"], lr=embedding_lr * scale)], device_type)
    muon = Muon(groups["matrix"], lr=matrix_lr, momentum=MUON_MOMENTUM[1])
    for opt in (adam, muon):
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return [adam, muon]


def lr_multiplier(step: int, iterations: int, warmup_ratio: float, warmdown_ratio: float,
                  final_lr_frac: float) -> float:
    """LR multiplier for the step that takes step+1 (0-based `step`): linear warmup, constant, then a
    linear warmdown over the last warmdown_ratio of the steps to final_lr_frac."""
    warmup = round(warmup_ratio * iterations)
    warmdown = round(warmdown_ratio * iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= iterations - warmdown:
        return 1.0
    progress = (iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int) -> float:
    frac = min(step / MUON_MOMENTUM_STEPS, 1.0)
    return (1 - frac) * MUON_MOMENTUM[0] + frac * MUON_MOMENTUM[1]


def apply_schedule(optimizers, step: int, lr_mult: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_mult
            if isinstance(opt, Muon):
                g["momentum"] = muon_momentum(step)
