"""What the compiled training step keeps for backward, counted from the graph itself (nanolaunch/memory.py's
CUDA constants come from here; tests/test_graph_census.py re-derives them).

The trainer's step (GPT forward with targets, as `torch.compile` captures it on CUDA) is traced through
AOTAutograd and split by the min-cut rematerialisation partitioner, the one torch.compile's default backend
(inductor) uses; no code is generated and nothing runs on a GPU. The forward graph's outputs beyond the loss
are what backward needs: every one that is not a parameter or input is memory held from the end of the
forward pass into backward. Tensors sharing storage are counted once.

CUDA's autocast cannot run without CUDA, so its op policy is applied at the Python level (CudaAutocast):
matrix products and attention in bf16, the ops PyTorch's CUDA autocast runs in fp32 (norms, pow, exp,
log-softmax, NLL, ...) in fp32, others in their inputs' precision. The lists are PyTorch's own:
AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32 and AT_FORALL_FP32_SET_OPT_DTYPE in ATen/autocast_mode.h,
which CUDA registers. The composite ops (square → pow, cross_entropy → log_softmax + nll_loss) are named
as what they dispatch to under autocast.

    python -m trainer.graph_census        # the census and the fitted per-element bytes, as JSON
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from trainer.arithmetic import ModelShape

LOWER_PRECISION = {"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "einsum", "mv",
                   "scaled_dot_product_attention"}
FP32 = {"rms_norm", "layer_norm", "group_norm", "pow", "square", "exp", "expm1", "log", "log1p", "log2", "log10",
        "rsqrt", "reciprocal", "logsumexp", "softplus", "nll_loss", "cross_entropy", "mse_loss", "l1_loss"}
FP32_UNLESS_DTYPE = {"softmax", "log_softmax", "sum", "cumsum", "prod"}


def _cast(x, dtype):
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(a, dtype) for a in x)
    return x


class CudaAutocast(TorchFunctionMode):
    """torch.autocast("cuda", dtype=bfloat16)'s casts, on any device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        dtype = (torch.bfloat16 if name in LOWER_PRECISION else torch.float32 if name in FP32 else
                 torch.float32 if name in FP32_UNLESS_DTYPE and kwargs.get("dtype") is None else None)
        if dtype is not None:
            args, kwargs = _cast(args, dtype), {k: _cast(v, dtype) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Saved:
    """Bytes the forward pass keeps for backward, by kind."""
    activations: int  # everything else: the residual stream, norms, q/k/v, attention outputs, MLP hiddens
    logits: int  # tensors with a (tokens × vocab) extent: log-softmax, soft-capped logits
    weight_copies: int  # bf16 copies of parameters (autocast's casts, kept for the backward matmuls)
    inputs: int  # parameters, buffers and token ids (resident anyway: not counted as extra)


def saved_for_backward(shape: ModelShape, batch: int) -> Saved:
    """The census of one compiled training step of GPT(shape) at this device batch."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_function
    from torch._inductor.compile_fx import partition_fn
    from torch.multiprocessing.reductions import StorageWeakRef

    from trainer.gpt import GPT

    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        model = GPT(shape)
    mode = FakeTensorMode()
    with mode:  # shapes and dtypes only: a d34 step is traced without allocating its memory
        tensors = [torch.empty(t.shape, dtype=t.dtype) for t in [*model.parameters(), *model.buffers()]]
        for t, p in zip(tensors, model.parameters()):
            t.requires_grad_(True)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    graphs = {}

    def keep(kind):
        def compiler(gm, _inputs):
            graphs[kind] = gm
            return make_boxed_func(gm.forward)
        return compiler

    def step(*args):
        *state, idx, targets = args
        with CudaAutocast():
            return torch.func.functional_call(model, dict(zip(names, state)), (idx, targets))

    from torch._inductor.decomposition import select_decomp_table

    traced = aot_function(step, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                          partition_fn=partition_fn, decompositions=select_decomp_table())
    with mode:
        idx = torch.zeros((batch, shape.seq_len), dtype=torch.long)
        traced(*tensors, idx, idx).backward()
    graph = graphs["forward"].graph
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    param_numels = {p.numel() for p in model.parameters()}
    tokens = batch * shape.seq_len
    seen, counts = set(), {"activations": 0, "logits": 0, "weight_copies": 0, "inputs": 0}
    for node in output[1:]:  # output[0] is the loss
        value = node.meta.get("val") if hasattr(node, "meta") else None
        if not isinstance(value, torch.Tensor):
            continue
        storage = StorageWeakRef(value.untyped_storage())
        if storage in seen:
            continue
        seen.add(storage)
        nbytes = value.untyped_storage().nbytes()
        numel = nbytes // value.element_size()
        if node.op == "placeholder":
            kind = "inputs"
        elif value.dtype == torch.bfloat16 and numel in param_numels:
            kind = "weight_copies"
        elif numel % (tokens * shape.vocab_size) == 0:
            kind = "logits"
        else:
            kind = "activations"
        counts[kind] += nbytes
    return Saved(**counts)


# Real shapes (the partitioner's choices depend on the sizes: vocab 65,536 and seq 2,048 as trained), traced
# with fake tensors: depth, vocab, seq, device batch.
SHAPES = [(4, 65536, 2048, 1), (10, 65536, 2048, 1), (10, 65536, 2048, 2), (20, 65536, 2048, 1)]


def fit(shapes=SHAPES) -> dict:
    """Per-element bytes by least squares over the census of `shapes` (the relation is exact: the residual
    is reported): activations = a·L·N·d + b·N·d + c·L·N + e·N, logits = f·N·V, weight copies = w·(12·L·d² + V·d).
    N: tokens per device batch, d: model_dim, V: vocab, L: depth."""
    import numpy as np

    rows, acts, logits, copies, census = [], [], [], [], []
    for depth, vocab, seq, batch in shapes:
        shape = ModelShape(depth, vocab_size=vocab, seq_len=seq)
        s = saved_for_backward(shape, batch)
        n, d = batch * seq, shape.model_dim
        rows.append([depth * n * d, n * d, depth * n, n])
        acts.append(s.activations)
        logits.append(s.logits / (n * vocab))
        copies.append(s.weight_copies / (12 * depth * d * d + vocab * d))
        census.append({"depth": depth, "vocab": vocab, "seq": seq, "batch": batch, **s.__dict__})
    coef, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(acts, dtype=float), rcond=None)
    predicted = np.array(rows, dtype=float) @ coef
    worst = float(np.max(np.abs(predicted - acts) / np.array(acts)))
    return {"per_layer_channel": round(float(coef[0]), 4), "per_channel": round(float(coef[1]), 4),
            "per_layer_token": round(float(coef[2]), 4), "per_token": round(float(coef[3]), 4),
            "per_logit": round(float(np.mean(logits)), 4), "per_weight": round(float(np.mean(copies)), 4),
            "logit_spread": float(np.ptp(logits)), "weight_spread": float(np.ptp(copies)),
            "activation_max_error": worst, "census": census, "torch": torch.__version__}


if __name__ == "__main__":
    print(json.dumps(fit(), indent=2))
