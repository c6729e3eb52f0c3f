"""One rank's tensors, counted: run under torchrun (gloo) by tests/test_memory_model.py; prints one JSON line
per rank. Two training steps of the real model and optimizers; the second is measured: the bytes of the
parameters, of the gradients before the step, of every tensor in the optimizer state after it, and the peak
of the tensors the optimizer step creates (tests/live_bytes.py)."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from live_bytes import LiveBytes  # noqa: E402
from trainer.arithmetic import ModelShape  # noqa: E402
from trainer.gpt import GPT  # noqa: E402
from trainer.optim import build_optimizers  # noqa: E402


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main(depth: int, vocab: int, seq_len: int, head_dim: int, ns_bytes: int, value_embeddings: int = 0) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = GPT(ModelShape(depth, vocab, seq_len, head_dim, bool(value_embeddings)))
    model.init_weights()
    optimizers = build_optimizers(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, device_type="cpu",
                                  ns_dtype={2: torch.bfloat16, 4: torch.float32}[ns_bytes])
    x = torch.randint(0, vocab, (1, seq_len))
    for step in range(2):
        model(x, x).backward()
        if step == 1:
            grads = nbytes(p.grad for p in model.parameters())
            with LiveBytes() as live:
                for opt in optimizers:
                    opt.step()
        else:
            for opt in optimizers:
                opt.step()
        model.zero_grad(set_to_none=True)
    state = [t for opt in optimizers for sd in [opt.state_dict()] for per in sd["state"].values()
             for t in per.values() if torch.is_tensor(t)]
    line = json.dumps({"rank": dist.get_rank() if dist.is_initialized() else 0,
                       "weights": nbytes(model.parameters()), "grads": grads, "optimizer": nbytes(state),
                       "step_peak": live.peak}) + "\n"
    os.write(1, line.encode())  # one write: the ranks share the pipe, and a line under 4 KiB stays whole


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
