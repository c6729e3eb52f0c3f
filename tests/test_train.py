"""The trainer end to end, as the launcher runs it: a subprocess, followed by its event lines."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.arithmetic import ModelShape

REPO = Path(__file__).resolve().parent.parent
TINY = ["--depth", "2", "--vocab-size", "1024", "--seq-len", "128", "--head-dim", "64",
        "--device-batch", "8", "--total-batch", "4096"]
SYNTH = ["--depth", "2", "--vocab-size", "512", "--seq-len", "64", "--head-dim", "64", "--device-batch", "4",
         "--total-batch", "512", "--data", "synthetic"]
BIG = ["--depth", "4", "--vocab-size", "65536", "--seq-len", "256", "--device-batch", "16", "--total-batch", "4096",
       "--data", "synthetic", "--memory-limit-gib", "2", "--eval-tokens", "4096"]  # 1 GiB of logits alone: over the cap


def trainer_cmd(*args):
    return [sys.executable, "-m", "trainer.train", *map(str, args)]


def run_trainer(*args, timeout=600):
    out = subprocess.run(trainer_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return out.returncode, parse(out.stdout), out.stderr


def parse(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.lstrip().startswith("{"):
            e = json.loads(line[line.index("{"):])
            if "event" in e and e.get("v") == 1:
                events.append(e)
    return events


def of(events, kind):
    return [e for e in events if e["event"] == kind]


def test_tiny_model_learns_and_reports_the_arithmetic(data_args, tmp_path):
    rc, events, err = run_trainer(*TINY, *data_args, "--iterations", 80, "--eval-every", 20, "--eval-tokens", 16384,
                                  "--checkpoint-every", 40, "--run-dir", tmp_path)
    assert rc == 0, err
    start, result = of(events, "start")[0], of(events, "result")[0]
    shape = ModelShape(2, 1024, 128, 64)
    assert start["shape"] == shape.as_dict()
    assert start["shape"]["params"] == shape.params and start["shape"]["flops_per_token"] == shape.flops_per_token
    assert start["mode"] == "train" and start["world_size"] == 1 and start["device"] == "cpu"
    assert start["peak_flops"] is None and start["resumed_from_step"] is None
    assert start["grad_accum"] == 4 and start["iterations"] == 80 and start["tokens"] == 80 * 4096
    assert start["total_flops"] == 80 * 4096 * shape.flops_per_token
    assert start["config"]["depth"] == 2 and start["config"]["matrix_lr"] == 0.02
    steps = of(events, "step")
    assert [s["step"] for s in steps] == list(range(1, 81))
    assert all(s["mfu"] is None and s["tokens_per_second"] > 0 and s["iterations"] == 80 for s in steps)
    evals = of(events, "eval")
    assert [e["step"] for e in evals] == [0, 20, 40, 60, 80]
    first, last = evals[0]["val_bpb"], evals[-1]["val_bpb"]
    assert last <= 0.7 * first, [e["val_bpb"] for e in evals]
    assert [c["step"] for c in of(events, "checkpoint")] == [40, 80]
    assert result["status"] == "ok" and result["steps"] == 80 and result["val_bpb"] == last
    assert result["loss"] == steps[-1]["loss"] and result["error"] is None
    assert result["peak_memory_gib"] > 0.05 and result["step_ms"] > 0 and result["tokens_per_second"] > 0
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert "step 00080/00080" in err and "val_bpb" in err
    assert events[0]["event"] == "start" and events[-1]["event"] == "result"


def test_probe_reports_timings_without_eval_or_checkpoints(tmp_path):
    rc, events, err = run_trainer(*SYNTH, "--probe", 6, "--ratio", 20, "--resume", "--run-dir", tmp_path)
    assert rc == 0, err
    start, result = of(events, "start")[0], of(events, "result")[0]
    assert start["mode"] == "probe" and start["iterations"] == 6
    assert len(of(events, "step")) == 6 and not of(events, "eval") and not of(events, "checkpoint")
    assert result["status"] == "ok" and result["steps"] == 6 and result["val_bpb"] is None
    assert result["step_ms"] > 0 and result["tokens_per_second"] == pytest.approx(512 / result["step_ms"] * 1000, rel=1e-3)
    assert result["mfu"] is None and result["peak_memory_gib"] > 0
    assert not (tmp_path / "checkpoints").exists()


# a probe reports its batch's OOM; a run halves its batch first (tests/test_oom_fallback.py), so it is given
# too little memory for any batch
@pytest.mark.parametrize("mode", [["--probe", "3"], ["--iterations", "3", "--memory-limit-gib", "0.6"]])
def test_out_of_memory_is_a_result_not_a_traceback(tmp_path, mode):
    rc, events, err = run_trainer(*BIG, *mode, "--run-dir", tmp_path)
    assert rc == 3, err
    result = of(events, "result")[-1]
    assert result["status"] == "oom" and "allocate" in result["error"] and "\n" not in result["error"]
    assert "Traceback" not in err
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "oom"


@pytest.mark.parametrize("args,needle", [
    (["--depth", "two"], "--depth"),
    (["--depth", "2", "--bogus"], "unrecognized"),
    (["--depth", "2", "--iterations", "5", "--ratio", "3"], "at most one horizon"),
    (["--depth", "2", "--max-cost", "3"], "max_cost needs price_per_hour"),
    (["--depth", "2", "--dtype", "fp8"], "dtype must be one of auto, bf16, fp32"),
])
def test_bad_flags_are_one_line_exit_2(args, needle):
    rc, events, err = run_trainer(*args)
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not events


def test_indivisible_batch_shows_the_arithmetic(tmp_path):
    rc, events, err = run_trainer("--depth", "2", "--seq-len", "2048", "--device-batch", "48", "--total-batch",
                                  "524288", "--data", "synthetic", "--run-dir", tmp_path)
    assert rc == 2
    assert "524,288/(48·2048·1) = 5.33" in err
    assert of(events, "result")[0]["status"] == "crashed"


def test_crash_is_reported_in_one_line(tmp_path):
    rc, events, err = run_trainer(*TINY, "--iterations", 2, "--data", tmp_path / "nothing", "--data-dir", tmp_path / "cache", "--run-dir", tmp_path)
    assert rc == 1
    result = of(events, "result")[0]
    assert result["status"] == "crashed" and "does not exist" in result["error"] and "\n" not in result["error"]


def test_sigterm_checkpoints_and_cancels(tmp_path):
    proc = subprocess.Popen(trainer_cmd(*SYNTH, "--iterations", 100000, "--eval-every", 0, "--run-dir", tmp_path),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if '"event": "step"' in line and '"step": 3,' in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(60) == 130
    events = parse("".join(lines))
    result, ckpt = of(events, "result")[0], of(events, "checkpoint")[-1]
    assert result["status"] == "cancelled" and ckpt["step"] == result["steps"] >= 3
    assert (Path(ckpt["path"]) / "COMPLETE").is_file()


def test_budget_ends_over_budget_with_a_checkpoint(tmp_path):
    # $3.60/hour reaches $0.001 after one second of wall time
    rc, events, err = run_trainer(*SYNTH, "--iterations", 100000, "--eval-every", 0, "--max-cost", 0.001,
                                  "--price-per-hour", 3.6, "--run-dir", tmp_path)
    assert rc == 4, err
    result = of(events, "result")[0]
    assert result["status"] == "over_budget" and of(events, "checkpoint")[-1]["step"] == result["steps"]
    assert result["total_wall_seconds"] * 3.6 / 3600 >= 0.001


@pytest.mark.parametrize("code,status", [(3, "oom"), (4, "over_budget"), (130, "cancelled")])
def test_torchrun_hands_the_trainers_own_exit_code_to_the_launcher(tmp_path, code, status):
    """torchrun exits 1 whatever its worker's code; trainer_exit_code reads the worker's from torchrun's failure
    summary (real torchrun output here), and EXIT_STATUS maps it to the status the trainer would have reported."""
    from nanolaunch.backends.local import free_port
    from trainer.events import EXIT_STATUS, trainer_exit_code

    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                          str(free_port()), "-m", "exiting_trainer"], capture_output=True, text=True,
                         env={**os.environ, "NL_TEST_EXIT": str(code), "PYTHONPATH": str(Path(__file__).parent)},
                         timeout=300)
    assert out.returncode == 1
    assert trainer_exit_code(out.stdout + out.stderr) == code and EXIT_STATUS[code] == status
    assert trainer_exit_code("no summary here") is None
