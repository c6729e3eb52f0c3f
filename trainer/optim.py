"""Optimizers and schedules (docs/DESIGN.md §3): Muon for block matrices, AdamW for embedding and head.

Both shard their state across the data-parallel ranks (ZeRO-2, as nanochat): there is no DDP; each rank's
gradients stay in .grad through the micro-steps, and step() reduce-scatters them, updates this rank's part
(Muon: whole matrices it owns; AdamW: a flat slice of each parameter) and all-gathers the parameters.
"""
from __future__ import annotations

import torch

from trainer.arithmetic import MUON_CHUNK, muon_deal

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton–Schulz, maximal slope at zero (Keller Jordan)
ADAM_BETAS = (0.8, 0.95)
ADAM_EPS = 1e-10
MUON_MOMENTUM = (0.85, 0.95)  # warmed from the first to the second over MUON_MOMENTUM_STEPS
MUON_MOMENTUM_STEPS = 300


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise G (…, m, n): ~U·S'·Vᵀ with S' in about [0.5, 1.5]. Runs in `dtype`: bf16
    where its matrix products are native, fp32 where they are emulated (trainer/precision.py)."""
    a, b, c = NS_COEFFS
    X = G.to(dtype)
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




class DataParallel:
    """The data-parallel group an optimizer shards its state over (every rank of the run)."""

    def __init__(self):
        import torch.distributed as dist

        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.on else 0
        self.size = dist.get_world_size() if self.on else 1


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz: SGD-Nesterov momentum, then each 2-D update is
    replaced by its approximate orthogonalisation and scaled by √max(1, rows/cols).

    Sharded (ZeRO-2): each matrix belongs to one rank, dealt round-robin across the shape groups (the next
    group starts where the last one stopped, so the ranks' shares differ by at most one matrix). Per round of
    one matrix per rank, the gradients are reduce-scattered (each owner gets the mean gradient of its matrix),
    each owner updates its matrices (momentum lives on the owner only) and the matrices are all-gathered back.
    Owned matrices are orthogonalised MUON_CHUNK at a time, so the step's temporaries do not grow with depth."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, chunk: int = MUON_CHUNK, ns_dtype: torch.dtype = torch.bfloat16):
        params = list(params)
        assert all(p.ndim == 2 for p in params), "Muon takes 2-D parameters only"
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [dict(params=[p for p in params if tuple(p.shape) == s]) for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        self.dp, self.chunk, self.ns_dtype = DataParallel(), chunk, ns_dtype
        # per group: rounds of one slot per rank (None: that rank has none), as trainer/arithmetic.py deals them
        dealt = muon_deal([len(g["params"]) for g in self.param_groups], self.dp.size)
        self.rounds = [[[None if i is None else g["params"][i] for i in r] for r in rounds]
                       for g, rounds in zip(self.param_groups, dealt)]

    def owned(self, group_index: int) -> list[torch.Tensor]:
        return [r[self.dp.rank] for r in self.rounds[group_index] if r[self.dp.rank] is not None]

    def init_state(self) -> None:
        """The momentum the first step would create (zeros), created now: the first step then needs the memory
        of every later one, so running out of it shows before any weight has changed."""
        for gi in range(len(self.param_groups)):
            for p in self.owned(gi):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self):
        for gi, group in enumerate(self.param_groups):
            owned = self.owned(gi)
            if not self.dp.on:
                self._update(group, owned, [p.grad for p in owned])
                continue
            # Buffers beyond the state, one matrix each: the mean gradient of every owned matrix, and one
            # scratch for the slots this rank does not own (and, while reducing, one zero for empty slots)
            scratch = torch.empty_like(group["params"][0])
            self._update(group, owned, self._reduce(gi, scratch))
            self._gather(gi, scratch)

    def _reduce(self, gi: int, scratch: torch.Tensor) -> list[torch.Tensor]:
        """This rank's mean gradient of each matrix it owns (reduce-scatter per round), in the order of owned()."""
        import torch.distributed as dist

        rounds, rank = self.rounds[gi], self.dp.rank
        zero = torch.zeros_like(scratch) if any(None in r for r in rounds) else None
        grads, pending = [], []
        for slots in rounds:
            out = torch.empty_like(scratch) if slots[rank] is not None else scratch
            pending.append(dist.reduce_scatter(out, [p.grad if p is not None else zero for p in slots],
                                               async_op=True))
            if slots[rank] is not None:
                grads.append(out)
        for work in pending:
            work.wait()
        for g in grads:
            g.div_(self.dp.size)
        return grads

    def _update(self, group: dict, owned: list, grads: list) -> None:
        """Momentum, Nesterov, Newton–Schulz and the step, MUON_CHUNK matrices at a time (grads are consumed)."""
        mom, like = group["momentum"], group["params"][0]
        scale = max(1.0, like.size(-2) / like.size(-1)) ** 0.5
        for lo in range(0, len(owned), self.chunk):
            updates = []
            for p, g in zip(owned[lo:lo + self.chunk], grads[lo:lo + self.chunk]):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mom)
                updates.append(g.lerp_(buf, mom) if group["nesterov"] else buf)  # g is not needed again
            ortho = _ns(torch.stack(updates), group["ns_steps"], self.ns_dtype)
            del updates
            for p, u in zip(owned[lo:lo + self.chunk], ortho.unbind(0)):
                p.add_(u.to(p.dtype), alpha=-group["lr"] * scale)

    def _gather(self, gi: int, scratch: torch.Tensor) -> None:
        """Every rank's updated matrices onto every rank (all-gather per round)."""
        import torch.distributed as dist

        rank, gathers = self.dp.rank, []
        for slots in self.rounds[gi]:
            outputs = [p.data if p is not None else scratch for p in slots]
            mine = outputs[rank].clone()  # the input must not alias the output it is gathered into
            gathers.append((dist.all_gather(outputs, mine, async_op=True), mine))
        for work, _ in gathers:
            work.wait()


class ShardedAdamW(torch.optim.Optimizer):
    """AdamW whose state is sharded (ZeRO-2): every parameter is split flat into world-size slices; the
    gradient is reduce-scattered (each rank gets the mean gradient of its slice), torch's own AdamW updates
    this rank's slice, a view into the parameter, and the slices are all-gathered back."""

    def __init__(self, groups: list[dict], device_type: str):
        super().__init__(groups, dict(lr=1e-3))
        self.dp = DataParallel()
        self.slices: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> this rank's slice of it (a view)
        inner = []
        for group in self.param_groups:
            views = []
            for p in group["params"]:
                n = p.numel()
                per = -(-n // self.dp.size)
                lo, hi = min(self.dp.rank * per, n), min((self.dp.rank + 1) * per, n)
                view = p.detach().view(-1)[lo:hi]
                self.slices[p] = view
                views.append(view)
            inner.append(dict(params=views, lr=group["lr"]))
        self.inner = torch.optim.AdamW(inner, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0,
                                       fused=device_type in ("cuda", "cpu"))

    @torch.no_grad()
    def step(self):
        import torch.distributed as dist

        size = self.dp.size
        for group, inner in zip(self.param_groups, self.inner.param_groups):
            inner["lr"] = group["lr"]
            for p in group["params"]:
                view = self.slices[p]
                if not self.dp.on:
                    view.grad = p.grad.view(-1)
                    continue
                per = -(-p.numel() // size)
                flat = p.grad.view(-1)
                if per * size != flat.numel():  # uneven: a padded copy (never for the shapes we train)
                    flat = torch.cat([flat, flat.new_zeros(per * size - flat.numel())])
                shard = flat.new_empty(per)
                dist.reduce_scatter_tensor(shard, flat)
                view.grad = shard[:view.numel()].div_(size)
        self.inner.step()
        for group in self.param_groups:
            for p in group["params"]:
                self.slices[p].grad = None
                if self.dp.on:
                    per = -(-p.numel() // self.dp.size)
                    mine = p.new_zeros(per)  # the input must not alias the output it is gathered into
                    mine[:self.slices[p].numel()] = self.slices[p]
                    if per * self.dp.size == p.numel():
                        dist.all_gather_into_tensor(p.view(-1), mine)
                    else:
                        full = p.new_empty(per * self.dp.size)
                        dist.all_gather_into_tensor(full, mine)
                        p.view(-1).copy_(full[:p.numel()])

    def init_state(self) -> None:
        """The state torch's fused AdamW creates at its first step (torch.optim.adamw._init_group: a float32
        step of 0 on the parameter's device, zero moments), created now, as Muon.init_state does; the first
        step sees it exists and leaves it (tests/test_optim.py holds the two to the same first steps)."""
        for group in self.inner.param_groups:
            for p in group["params"]:
                state = self.inner.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def dmodel_lr_scale(model_dim: int) -> float:
    """AdamW learning rates were tuned at d=768; they scale as (d/768)^-0.5."""
    return (model_dim / 768) ** -0.5


def build_optimizers(model, *, matrix_lr: float, embedding_lr: float, unembedding_lr: float,
                     device_type: str, ns_dtype: torch.dtype) -> list[torch.optim.Optimizer]:
    """[AdamW(head, embedding, value embeddings), Muon(block matrices)]; every group records its base lr in
    'initial_lr'.
    ns_dtype: Newton–Schulz's precision, as trainer/precision.py chooses it for the device."""
    groups = model.param_groups()
    scale = dmodel_lr_scale(model.shape.model_dim)
    adam_groups = [dict(params=groups["head"], lr=unembedding_lr * scale),
                   dict(params=groups["embedding"], lr=embedding_lr * scale)]
    if groups["value_embed"]:  # nanochat's: half the embedding's rate
        adam_groups.append(dict(params=groups["value_embed"], lr=0.5 * embedding_lr * scale))
    adam = ShardedAdamW(adam_groups, device_type)
    muon = Muon(groups["matrix"], lr=matrix_lr, momentum=MUON_MOMENTUM[1], ns_dtype=ns_dtype)
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
