"""No death by OOM on the first step: a batch that runs out of memory before the first weight update is halved
(grad accumulation doubled, the same tokens per step) until it fits, and the run then trains exactly as one
started at that batch. The allocation failures are real: --memory-limit-gib caps the address space
(RLIMIT_AS), and 65,536-wide logits at batch 16 do not fit under it."""
import pytest
import torch

from test_ddp import launch
from trainer.optim import ShardedAdamW, Muon

# fp32 logits of 2 GiB at batch 32 and 1 GiB at 16 alone: neither fits a 2.5 GiB address space with the rest of
# the step; batch 8 (peak RSS 1.43 GiB at 2 ranks) fits it with room for the optimizer step's buffers
BIG = ["--depth", "4", "--vocab-size", "65536", "--seq-len", "256", "--data", "synthetic", "--memory-limit-gib", "2.5",
       "--eval-tokens", "4096", "--eval-every", "0", "--dtype", "fp32", "--threads", "1"]


def steps(events):
    return [e["loss"] for e in events if e["event"] == "step"]


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_batch_that_cannot_fit_finishes_at_one_that_does(tmp_path, ranks):
    total = 32 * 256 * ranks  # device batch 32 on every rank, one micro-step
    rc, fell, err = launch(ranks, *BIG, "--total-batch", total, "--device-batch", 32, "--iterations", 2,
                           "--run-dir", tmp_path / "planned32")
    assert rc == 0, err[-3000:]
    changes = [e for e in fell if e["event"] == "batch"]
    assert changes and changes[0]["planned_device_batch"] == 32 and changes[0]["step"] == 0
    assert [c["device_batch"] for c in changes] == [32 // 2 ** (i + 1) for i in range(len(changes))]  # halvings
    ran = changes[-1]["device_batch"]
    assert ran < 32 and changes[-1]["grad_accum"] == 32 // ran
    result = [e for e in fell if e["event"] == "result"]
    assert len(result) == 1 and result[0]["status"] == "ok" and result[0]["device_batch"] == ran
    rc, direct, err = launch(ranks, *BIG, "--total-batch", total, "--device-batch", ran, "--iterations", 2,
                             "--run-dir", tmp_path / f"started{ran}")
    assert rc == 0, err[-3000:]
    assert not [e for e in direct if e["event"] == "batch"]
    assert len(steps(fell)) == 2 and steps(fell) == pytest.approx(steps(direct), rel=1e-6)


def test_out_of_memory_at_batch_one_is_still_oom(tmp_path):
    rc, events, err = launch(1, *BIG, "--memory-limit-gib", "0.6", "--total-batch", 1024, "--device-batch", 4,
                             "--iterations", 2, "--run-dir", tmp_path / "r")
    result = [e for e in events if e["event"] == "result"]
    assert rc == 3 and result[0]["status"] == "oom", err[-2000:]
    halvings = [(e["planned_device_batch"], e["device_batch"]) for e in events if e["event"] == "batch"]
    assert halvings == [(4, 2), (2, 1)][:len(halvings)]  # down to batch 1, never below


def test_eager_optimizer_state_changes_nothing():
    """init_state creates what the first step would: the same updates, the same state, step for step."""
    torch.manual_seed(0)
    shapes = [(64, 32), (64, 32), (32, 64)]
    params = [[torch.nn.Parameter(torch.randn(*s)) for s in shapes] for _ in range(2)]
    for p, q in zip(*params):
        q.data.copy_(p.data)
    embeds = [torch.nn.Parameter(torch.randn(100, 16)) for _ in range(2)]
    embeds[1].data.copy_(embeds[0].data)
    opts = [(Muon(params[i]), ShardedAdamW([dict(params=[embeds[i]], lr=0.01)], "cpu")) for i in range(2)]
    for opt in opts[1]:
        opt.init_state()
    for step in range(3):
        grads = [torch.randn(*s) for s in shapes] + [torch.randn(100, 16)]
        for i in range(2):
            for p, g in zip([*params[i], embeds[i]], grads):
                p.grad = g.clone()
            for opt in opts[i]:
                opt.step()
    for p, q in zip([*params[0], embeds[0]], [*params[1], embeds[1]]):
        assert torch.equal(p, q)
    lazy, eager = opts[0][1].state_dict(), opts[1][1].state_dict()
    assert lazy["state"].keys() == eager["state"].keys()
    for k in lazy["state"]:
        for name, value in lazy["state"][k].items():
            assert torch.equal(value, eager["state"][k][name]) and value.dtype == eager["state"][k][name].dtype


def test_the_ledger_records_the_batch_it_ran_and_the_plan_learns_from_it(tmp_path, monkeypatch):
    import json

    from conftest import nl
    from nanolaunch import calibration
    from nanolaunch.config import RunConfig
    from nanolaunch.ledger import Ledger

    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    config = RunConfig.build(depth=4, gpu="cpu", device_batch=16, total_batch=4096, seq_len=256, iterations=3)
    db = Ledger()
    run_id = db.add(project="default", title="fell back", kind="run", config=config.to_dict(), backend="local",
                    gpu="cpu", gpu_count=1, nodes=1, status="running", started_at=0.0)
    db.finish(run_id, "ok", {"device_batch": 8, "steps": 3, "val_bpb": 3.2, "tokens_per_second": 1000.0})
    db.close()
    shown = nl(tmp_path, "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "ran at batch 8 (planned 16)" in shown.stdout
    row = json.loads(nl(tmp_path, "ledger", "--json").stdout)[0]
    assert (row["device_batch"], row["planned_device_batch"]) == (8, 16)
    assert calibration._config(calibration.ledger_rows()[0]).train.device_batch == 8


def test_a_measured_peak_of_the_same_config_decides_the_verdict(tmp_path):
    """Plans learn from GPU runs: a ledger row of this very config (GPU kind, count, shape, batch) beats the model,
    and the verdict cites it; an out-of-memory row says does not fit."""
    import json

    from conftest import nl

    def plan(batch):
        r = nl(tmp_path, "plan", "d34", "--ratio", "40", "--gpu", "H100:8", "--batch", batch, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert plan(8)["verdict"] == "probe first" and plan(8)["verdict_source"].startswith("memory model")
    assert nl(tmp_path, "ledger", "add", "d34", "--gpu", "H100:8", "--batch", "8", "--kind", "dry",
              "--peak-memory-gib", "60.5", "--wall-minutes", "2").returncode == 0
    assert nl(tmp_path, "ledger", "add", "d34", "--gpu", "H100:8", "--batch", "4", "--kind", "dry", "--status", "oom",
              "--wall-minutes", "2").returncode == 0
    measured = plan(8)
    assert measured["verdict"] == "fits" and measured["verdict_source"].startswith("measured: ledger #1 peaked at 60.5")
    oom = plan(4)
    assert oom["verdict"] == "does not fit" and "ledger #2 ran out of memory" in oom["verdict_source"]
    assert plan(2)["verdict_source"].startswith("memory model")  # another batch: the model still decides
