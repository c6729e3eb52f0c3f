"""The model, the optimizers and the schedules, in-process (no training runs here)."""
import math

import pytest
import torch

from trainer.arithmetic import ModelShape
from trainer.common import SyntheticLoader, is_oom
from trainer.hardware import peak_flops
from trainer.gpt import GPT, SOFTCAP
from trainer.optim import (Muon, build_optimizers, dmodel_lr_scale, lr_multiplier, muon_momentum,
                           newton_schulz)

torch.set_num_threads(2)


@pytest.mark.parametrize("depth,vocab,seq,head_dim", [(1, 256, 32, 64), (2, 1024, 64, 32), (3, 300, 16, 64),
                                                      (4, 65536, 2048, 128), (12, 65536, 2048, 128)])
def test_parameter_count_is_the_arithmetic(depth, vocab, seq, head_dim):
    shape = ModelShape(depth, vocab, seq, head_dim)
    with torch.device("meta"):
        model = GPT(shape)
    assert sum(p.numel() for p in model.parameters()) == shape.params
    groups = model.param_groups()
    assert sum(p.numel() for p in groups["matrix"]) == shape.matrix_params
    assert sum(p.numel() for p in groups["embedding"]) == shape.embedding_params
    assert sum(p.numel() for p in groups["head"]) == shape.head_params
    attn = model.blocks[0].attn
    assert (attn.n_head, attn.head_dim) == (shape.n_head, shape.actual_head_dim)
    assert all(not hasattr(m, "bias") or m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.wte.weight.data_ptr() != model.lm_head.weight.data_ptr() or str(model.wte.weight.device) == "meta"


@pytest.mark.parametrize("depth", [3, 4])
def test_value_embeddings_count_as_the_arithmetic_and_nanochat(depth):
    """Tables on every other layer, the last included, trained by AdamW; their gates by Muon. At depth 4, vocab
    4,096, heads of 128 nanochat 92d63d4 printed 7,340,114 parameters: ours plus its 34 scalars (4 residual and 4
    x0 lambdas, the 24-wide smear gate, smear and backout lambdas), which nanolaunch does not have."""
    shape = ModelShape(depth, 4096, 256, 128, value_embeddings=True)
    with torch.device("meta"):
        model = GPT(shape)
    groups = model.param_groups()
    assert sum(p.numel() for p in model.parameters()) == shape.params
    assert sum(p.numel() for p in groups["matrix"]) == shape.matrix_params
    assert sum(p.numel() for p in groups["value_embed"]) == shape.value_embed_params
    assert sorted(int(k) for k in model.value_embeds) == list(shape.value_embed_layers) == [i for i in range(depth)
                                                                                           if i % 2 == (depth - 1) % 2]
    assert [b.attn.ve_gate is not None for b in model.blocks] == [i in shape.value_embed_layers for i in range(depth)]
    if depth == 4:
        assert shape.params + 34 == 7_340_114
    # FLOPs: a table lookup is none, the gates' matmuls are counted
    plain = ModelShape(depth, 4096, 256, 128)
    assert shape.flops_per_token - plain.flops_per_token == 6 * (shape.matrix_params - plain.matrix_params)


def test_value_embeddings_off_keeps_the_checkpoint_keys_and_on_trains():
    plain = GPT(ModelShape(2, 512, 64, 64)).state_dict()
    assert not any("value_embeds" in k or "ve_gate" in k for k in plain)
    torch.manual_seed(0)
    model = GPT(ModelShape(2, 512, 64, 64, value_embeddings=True), fused_loss=True)
    model.init_weights()
    opts = build_optimizers(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, device_type="cpu",
                            ns_dtype=torch.float32)
    assert [g["lr"] for g in opts[0].param_groups][2] == 0.5 * 0.2 * dmodel_lr_scale(128)  # nanochat's half rate
    x = torch.randint(0, 512, (4, 64))
    before = {k: t.weight.detach().clone() for k, t in model.value_embeds.items()}
    gates = [b.attn.ve_gate.weight.detach().clone() for b in model.blocks if b.attn.ve_gate is not None]
    losses = []
    for _ in range(8):
        loss = model(x, x.roll(-1, 1))
        loss.backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert all(not torch.equal(before[k], t.weight) for k, t in model.value_embeds.items())  # AdamW trained them
    assert all(not torch.equal(g, b.attn.ve_gate.weight) for g, b in zip(gates, model.blocks[1:]))  # Muon, the gates


def tiny(fused=False, seed=0, head_std=0.3):
    torch.manual_seed(seed)
    model = GPT(ModelShape(2, 512, 64, 64), fused_loss=fused)
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=head_std)  # zero at init: give the head something to do
    for b in model.blocks:
        torch.nn.init.normal_(b.attn.c_proj.weight, std=0.05)
        torch.nn.init.normal_(b.mlp.c_proj.weight, std=0.05)
    return model


def test_initial_loss_is_uniform():
    torch.manual_seed(0)
    model = GPT(ModelShape(2, 512, 64, 64))
    model.init_weights()
    x = torch.randint(0, 512, (2, 64))
    assert model(x, x).item() == pytest.approx(math.log(512), abs=1e-5)  # zero head: uniform prediction


def test_logits_are_soft_capped_and_causal():
    model = tiny()
    torch.nn.init.normal_(model.lm_head.weight, std=50.0)
    x = torch.randint(0, 512, (2, 64))
    logits = model(x)
    assert logits.dtype == torch.float32 and logits.shape == (2, 64, 512)
    assert logits.abs().max().item() <= SOFTCAP
    x2 = x.clone()
    x2[:, 40:] = (x2[:, 40:] + 1) % 512
    assert torch.equal(model(x2)[:, :40], logits[:, :40])  # no position sees the future


@pytest.mark.parametrize("head_std", [0.3, 50.0])  # 50: logits pressed against the soft cap (exp without a max)
def test_fused_loss_matches_plain_loss_and_gradients(head_std):
    plain, fused = tiny(head_std=head_std), tiny(fused=True, head_std=head_std)
    x, y = torch.randint(0, 512, (3, 64)), torch.randint(0, 512, (3, 64))
    y[0, :7] = -1  # ignored targets
    exact = tiny(head_std=head_std).double()  # the reference: the plain loss in fp64
    lp, lf, le = plain(x, y), fused(x, y), exact(x, y)
    assert lf.item() == pytest.approx(lp.item(), rel=1e-6)
    for loss in (lp, lf, le):
        loss.backward()
    for (name, a), b, e in zip(plain.named_parameters(), fused.parameters(), exact.parameters()):
        # Against fp64, no worse than the plain loss in fp32 (whose error, relative to the largest gradient,
        # is ~1e-6 here and ~4e-5 at the cap, where 1 − tanh² cancels), with a floor for the easy case
        scale = e.grad.abs().max().item()
        plain_error = (a.grad.double() - e.grad).abs().max().item() / scale
        fused_error = (b.grad.double() - e.grad).abs().max().item() / scale
        assert fused_error <= max(2 * plain_error, 2e-6), (name, fused_error, plain_error)
        if head_std < 1:  # away from the cap the two fp32 losses also agree with each other, as before
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6 * scale), name
    per_tok_p, per_tok_f = plain(x, y, reduction="none"), fused(x, y, reduction="none")
    assert per_tok_f.shape == (3 * 64,)
    assert torch.allclose(per_tok_p, per_tok_f, atol=1e-5)
    assert per_tok_f[:7].abs().max().item() == 0.0
    assert fused(x, y, reduction="sum").item() == pytest.approx(per_tok_p.sum().item(), rel=1e-5)


def test_fused_loss_reuses_its_logit_buffer_and_two_pending_losses_keep_their_own():
    from trainer.gpt import _logit_buffers

    plain, fused = tiny(), tiny(fused=True)
    batches = [(torch.randint(0, 512, (3, 64)), torch.randint(0, 512, (3, 64))) for _ in range(2)]
    fused(*batches[0]).backward()  # a step: its backward keeps the buffer
    kept = next(iter(_logit_buffers.free.values())).data_ptr()
    fused.zero_grad()
    # two losses before one backward: the second must not overwrite the first one's buffer
    sum(plain(x, y) for x, y in batches).backward()
    sum(fused(x, y) for x, y in batches).backward()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6 * a.grad.abs().max().item()), name
    assert next(iter(_logit_buffers.free.values())).data_ptr() == kept  # the next step took it and gave it back


def test_fused_loss_under_bf16_autocast_is_close():
    plain, fused = tiny(), tiny(fused=True)
    x, y = torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, lf = plain(x, y), fused(x, y)
    assert lf.item() == pytest.approx(lp.item(), rel=2e-2)
    lf.backward()
    assert all(torch.isfinite(p.grad).all() for p in fused.parameters())


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    for shape in [(64, 64), (256, 64), (64, 256), (3, 32, 128)]:
        out = newton_schulz(torch.randn(*shape)).float()
        assert out.shape == torch.Size(shape)
        s = torch.linalg.svdvals(out)
        inside = ((s > 0.5) & (s < 1.5)).float().mean()  # near-zero ones of a random square matrix lag
        assert s.max() < 1.6 and inside > 0.9, (shape, s.min(), s.max(), inside)


def test_optimizers_groups_and_lrs():
    model = tiny()
    adam, muon = build_optimizers(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, device_type="cpu",
                                  ns_dtype=torch.bfloat16)
    scale = dmodel_lr_scale(128)
    assert scale == pytest.approx((128 / 768) ** -0.5)
    assert [g["lr"] for g in adam.param_groups] == pytest.approx([0.004 * scale, 0.2 * scale])
    assert adam.inner.defaults["betas"] == (0.8, 0.95)  # torch's own AdamW, on this rank's slices
    assert isinstance(muon, Muon)
    assert sum(len(g["params"]) for g in muon.param_groups) == 2 * 6  # q k v o fc proj per block
    x = torch.randint(0, 512, (2, 64))
    before = [p.detach().clone() for p in model.parameters()]
    model(x, x).backward()
    for opt in (adam, muon):
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_muon_in_bounded_chunks_takes_the_same_step():
    """Orthogonalising a shape group MUON_CHUNK matrices at a time bounds the step's temporaries; the step is
    the one a single batched call takes."""
    steps = []
    for chunk in (1, 3, 100):
        model = tiny()
        muon = Muon(model.param_groups()["matrix"], lr=0.02, chunk=chunk)
        x = torch.randint(0, 512, (2, 64))
        model(x, x).backward()
        muon.step()
        steps.append([p.detach().clone() for p in model.param_groups()["matrix"]])
    for other in steps[1:]:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(steps[0], other))


def test_lr_schedule_and_muon_momentum():
    n = 100
    assert [lr_multiplier(s, n, 0.0, 0.2, 0.0) for s in (0, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_multiplier(90, n, 0.0, 0.2, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(90, n, 0.0, 0.2, 0.1) == pytest.approx(0.55)
    assert lr_multiplier(99, n, 0.0, 0.2, 0.0) == pytest.approx(0.05)
    assert [lr_multiplier(s, n, 0.1, 0.2, 0.0) for s in (0, 4, 9, 10)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert lr_multiplier(0, 1, 0.0, 0.2, 0.0) == 1.0  # warmdown rounds to 0 steps
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == muon_momentum(10_000) == pytest.approx(0.95)


@pytest.mark.parametrize("device_name, kind", [
    ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA A100 80GB PCIe", "A100-80GB"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA H200", "H200"),
    ("NVIDIA B200", "B200"), ("NVIDIA GB200", None),
    ("NVIDIA L40S", "L40S"), ("NVIDIA GeForce RTX 5090", "RTX5090"), ("NVIDIA GeForce RTX 4090", "RTX4090"),
    ("NVIDIA H100 NVL", None), ("Tesla T4", None), ("x86_64", None)])
def test_the_trainer_finds_its_gpu_in_the_planners_table(device_name, kind):
    """What torch calls a device maps to the one table the planner prices and plans with; others: unknown."""
    from trainer.hardware import GPUS, gpu_for_device_name
    found = gpu_for_device_name(device_name)
    assert (found.name if found else None) == kind
    assert peak_flops(device_name) == (GPUS[kind].peak_flops if kind else None)


def test_oom_detection():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


def test_synthetic_batches_are_global():
    """1 rank × 2 micro-steps sees the same batches as 2 ranks × 1 micro-step."""
    one = SyntheticLoader(100, 2, 8, grad_accum=2)
    r0 = SyntheticLoader(100, 2, 8, rank=0, world_size=2, grad_accum=1)
    r1 = SyntheticLoader(100, 2, 8, rank=1, world_size=2, grad_accum=1)
    for _ in range(3):
        a, b = one.next_batch(), one.next_batch()
        assert torch.equal(a[0], r0.next_batch()[0]) and torch.equal(b[0], r1.next_batch()[0])
    x, y = a
    assert torch.equal(x[:, 1:], y[:, :-1])
    resumed = SyntheticLoader(100, 2, 8, grad_accum=2, state=one.state_dict())
    assert torch.equal(resumed.next_batch()[0], one.next_batch()[0])
