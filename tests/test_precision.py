"""Precision by what the device really does (trainer/precision.py): the choice follows the capability probe,
whatever it answers, and the trainer's log says which path it took and why."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import hardware, precision

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def cpu(flags: str) -> hardware.CPU:
    return hardware.CPU("Test CPU", frozenset(flags.split()), 2)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("setting", ["auto", "bf16", "fp32"])
def test_the_choice_follows_the_capability_probe(monkeypatch, native, setting):
    monkeypatch.setattr(precision, "bf16_native", lambda device: precision.Native(native, "probe replaced"))
    chosen = precision.choose(setting, CPU)
    assert chosen.newton_schulz == (torch.bfloat16 if native else torch.float32)
    assert chosen.dtype == (("bf16" if native else "fp32") if setting == "auto" else setting)
    assert "probe replaced" in chosen.describe()


def test_a_cpu_without_bf16_flags_is_emulated_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "this_cpu", lambda: cpu("sse avx avx2 fma"))
    monkeypatch.setattr(precision, "time_product", lambda dtype: pytest.fail("measured although the flags tell"))
    native = precision.bf16_native(CPU)
    assert not native.bf16 and "emulated" in native.why


@pytest.mark.parametrize("flags", ["avx2 avx512f avx512_bf16", "avx2 amx_bf16 amx_tile"])
@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(2e-3, 1e-3, True), (2e-3, 60e-3, False)])
def test_bf16_flags_are_confirmed_by_a_measurement_made_once(monkeypatch, tmp_path, flags, fp32_s, bf16_s, expected):
    """Flags can say native while the kernels are narrowed (ONEDNN_MAX_CPU_ISA=AVX2): the timing decides."""
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "this_cpu", lambda: cpu(flags))
    timed = []
    monkeypatch.setattr(precision, "time_product",
                        lambda dtype: timed.append(dtype) or (bf16_s if dtype == torch.bfloat16 else fp32_s))
    first = precision.bf16_native(CPU)
    assert first.bf16 is expected and "measured" in first.why and len(timed) == 2
    again = precision.bf16_native(CPU)
    assert again.bf16 is expected and "cached" in again.why and len(timed) == 2  # not measured again
    saved = json.loads((hardware.machine_cache(cpu(flags)) / "bf16.json").read_text())
    assert saved["speedup"] == pytest.approx(fp32_s / bf16_s)


@pytest.mark.parametrize("capability, expected", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_a_gpu_is_native_from_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    native = precision.bf16_native(torch.device("cuda", 0))
    assert native.bf16 is expected and f"{capability[0]}.{capability[1]}" in native.why


def test_isa_limits_make_another_machine(monkeypatch):
    """Narrowing the kernels changes speed, so it changes the key every cache and ledger row is filed under."""
    for name in hardware.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    plain = hardware.this_cpu()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    narrowed = hardware.this_cpu()
    assert plain.key != narrowed.key and "ONEDNN_MAX_CPU_ISA=AVX2" in narrowed.describe()


def test_the_trainer_log_says_which_path_it_took_and_why(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    env = {**os.environ, "NANOLAUNCH_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "trainer.train", "--depth", "1", "--vocab-size", "256", "--seq-len", "32",
                          "--device-batch", "2", "--total-batch", "64", "--device", "cpu", "--data", "synthetic",
                          "--probe", "2", "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() + out.stderr.splitlines() if x.startswith("precision: "))
    native = precision.bf16_native(CPU)  # the same machine and cache (if it measured): the same answer
    assert ("dtype bf16" if native.bf16 else "dtype fp32") in line
    assert ("Newton–Schulz bf16" if native.bf16 else "Newton–Schulz fp32") in line
    assert hardware.this_cpu().model in line
