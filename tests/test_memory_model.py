"""The exact terms of the memory model (nanolaunch/memory.py) against the real tensors of the trainer's model
and optimizers in 1-, 2- and 4-rank gloo runs (tests/memory_census.py): parameters, gradients, every tensor of
the optimizer state, and the peak of what the optimizer step creates (tests/live_bytes.py), never RSS."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanolaunch import memory
from trainer.arithmetic import ModelShape

from test_ddp import free_port

REPO = Path(__file__).resolve().parent.parent
SHAPES = {  # (depth, vocab, seq_len, head_dim[, value_embeddings])
    "small": (2, 512, 64, 64),
    "deeper, few tokens: the optimizer step is the peak": (4, 512, 32, 64),
    "value embeddings: AdamW tables and Muon gates": (3, 512, 64, 64, True),
}


def census(world_size: int, shape: tuple, ns_bytes: int = 2) -> list[dict]:
    head = [sys.executable] if world_size == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size), "--master_port",
         str(free_port())]
    args = [*shape[:4], ns_bytes, int(len(shape) > 4 and shape[4])]
    out = subprocess.run([*head, str(REPO / "tests" / "memory_census.py"), *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return sorted((json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")), key=lambda r: r["rank"])


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("name", SHAPES)
def test_every_exact_term_is_the_bytes_of_the_real_tensors(name, world_size):
    shape = ModelShape(*SHAPES[name])
    ranks = census(world_size, SHAPES[name])
    assert len(ranks) == world_size
    for r in ranks:
        assert r["weights"] == r["grads"] == 4 * shape.params
        assert r["optimizer"] == pytest.approx(memory.optimizer_shard_bytes(shape, world_size, r["rank"]), rel=0.01)
        assert r["step_peak"] == pytest.approx(sum(memory.muon_step_bytes(shape, world_size, r["rank"])), rel=0.01)
    estimate = memory.estimate(shape, 1, 80, "cpu", world_size=world_size)
    assert estimate.optimizer_gib * memory.GIB == max(r["optimizer"] for r in ranks)
    if name.startswith("deeper"):
        assert estimate.step_gib > estimate.forward_gib  # the model's peak moment is the step here


@pytest.mark.parametrize("world_size", [1, 2])
def test_newton_schulz_in_fp32_doubles_its_buffers_exactly(world_size):
    """Where bf16 products are emulated, Newton–Schulz runs in fp32 (trainer/precision.py): the step term
    follows, still to the byte."""
    deeper = next(v for k, v in SHAPES.items() if k.startswith("deeper"))
    for r in census(world_size, deeper, ns_bytes=4):
        shape = ModelShape(*deeper)
        assert r["step_peak"] == pytest.approx(sum(memory.muon_step_bytes(shape, world_size, r["rank"], 4)), rel=0.01)
        assert r["step_peak"] > sum(memory.muon_step_bytes(shape, world_size, r["rank"], 2)) * 1.1


def test_a_quarter_of_the_optimizer_state_at_four_ranks_for_d34():
    d34 = ModelShape(34)
    whole = memory.optimizer_shard_bytes(d34, 1, 0)
    largest = 4 * 4 * d34.model_dim ** 2  # one (4d × d) matrix's momentum
    assert all(abs(memory.optimizer_shard_bytes(d34, 4, r) - whole / 4) <= largest for r in range(4))
    assert whole / memory.GIB == pytest.approx(9.32, abs=0.01)
    assert memory.optimizer_shard_bytes(d34, 8, 0) / memory.GIB == pytest.approx(1.2, abs=0.05)


@pytest.mark.parametrize("depth, vocab, seq_len, head_dim, batch", [(2, 512, 128, 64, 2), (4, 4096, 256, 64, 1),
                                                                     (6, 1024, 128, 64, 2)])
def test_eager_bf16_activations_are_what_autograd_saves(depth, vocab, seq_len, head_dim, batch):
    """The eager bf16 term against the bytes of every tensor autograd saves in a forward pass (saved-tensor
    hooks, each storage once; the parameters themselves excluded), under CPU bf16 autocast."""
    import torch

    from trainer.gpt import GPT

    shape = ModelShape(depth, vocab, seq_len, head_dim)
    torch.manual_seed(0)
    model = GPT(shape, fused_loss=False)
    model.init_weights()
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, vocab, (batch, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, x)
    activations, logits = memory.eager_bf16_saved_bytes(shape, batch)
    assert activations + logits == pytest.approx(sum(saved.values()), rel=0.01)


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_value_embeddings_never_get_a_fits_they_cannot_back(backend):
    """Their saved rows are assumed, measured nowhere: however small, the verdict is "probe first", and a
    shape that does not fit on the count still does not."""
    small = memory.estimate(ModelShape(2, 512, 64, 64, value_embeddings=True), 1, 80, backend)
    assert small.value_embed_gib > 0 and small.total_gib < small.usable_gib and small.verdict == "probe first"
    assert memory.estimate(ModelShape(2, 512, 64, 64), 1, 80, backend).verdict == "fits"
    huge = memory.estimate(ModelShape(34, value_embeddings=True), 64, 80, backend)
    assert huge.verdict == "does not fit"
