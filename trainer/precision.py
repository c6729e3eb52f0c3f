"""Precision by what the device really does: bf16 where its matrix products are native, fp32 where emulated.

A GPU of compute capability 8.0 or later (A100, H100, ...) has bf16 tensor cores. On a CPU, bf16 matrix
products are native only with AVX512-BF16 or AMX; without them PyTorch emulates bf16 and a product is 7-70×
slower than fp32. Where the flags say native, a short measurement confirms it (kernels can be narrowed by
ONEDNN_MAX_CPU_ISA and the like, and flags do not tell speed): bf16 against fp32 products, measured once and
cached per machine (trainer/hardware.py machine_cache).

Two choices follow. Newton–Schulz (Muon) runs in bf16 where bf16 is native, else fp32. `--dtype auto` trains
under bf16 autocast where bf16 products are native and faster, else in fp32.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trainer import hardware

BENCH_SIZE = 512  # square matrix products timed against each other; the demo's and d10's widths are 128-640
BENCH_REPEATS = 5


@dataclass(frozen=True)
class Native:
    """Whether bf16 matrix products are native (faster than fp32) on a device, and how that was told."""
    bf16: bool
    why: str


@dataclass(frozen=True)
class Precision:
    dtype: str  # the training dtype: "bf16" (autocast) or "fp32"
    newton_schulz: torch.dtype
    why: str

    def describe(self) -> str:
        ns = "bf16" if self.newton_schulz == torch.bfloat16 else "fp32"
        return f"dtype {self.dtype}, Newton–Schulz {ns} ({self.why})"


def choose(dtype: str, device: torch.device) -> Precision:
    """The training dtype for the setting (auto, bf16, fp32) and Newton–Schulz's, for this device."""
    native = bf16_native(device)
    if device.type == "cpu" and torch.distributed.is_initialized():  # ranks timed apart may disagree: all agree
        flag = torch.tensor([int(native.bf16)])
        torch.distributed.all_reduce(flag, torch.distributed.ReduceOp.MIN)
        native = Native(bool(flag.item()), native.why)
    trained = dtype if dtype != "auto" else "bf16" if native.bf16 else "fp32"
    return Precision(trained, torch.bfloat16 if native.bf16 else torch.float32, native.why)


def bf16_native(device: torch.device) -> Native:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return Native((major, minor) >= (8, 0), f"compute capability {major}.{minor}"
                      + (" has bf16 tensor cores" if major >= 8 else ": no bf16 tensor cores"))
    cpu = hardware.this_cpu()
    if not cpu.bf16_flags:
        return Native(False, f"{cpu.model}: no {'/'.join(hardware.BF16_FLAGS)} flag, bf16 products are emulated")
    speedup, cached = measured_speedup(cpu)
    how = f"{'/'.join(cpu.bf16_flags)}, bf16 product {speedup:.2f}× fp32's speed ({'cached' if cached else 'measured'})"
    return Native(speedup > 1.0, f"{cpu.model}: {how}")


def measured_speedup(cpu: hardware.CPU) -> tuple[float, bool]:
    """fp32 time / bf16 time of a BENCH_SIZE² product on this CPU, and whether it came from the cache."""
    found = hardware.read_measurement(cpu, "bf16.json")
    if found and isinstance(found.get("speedup"), (int, float)):
        return float(found["speedup"]), True
    speedup = time_product(torch.float32) / time_product(torch.bfloat16)
    hardware.keep_measurement(cpu, "bf16.json", {"speedup": speedup, "cpu": cpu.describe(), "size": BENCH_SIZE,
                                                 "measured_at": time.time()})
    return speedup, False


def time_product(dtype: torch.dtype) -> float:
    """Best of BENCH_REPEATS timings of one BENCH_SIZE² matrix product, after a warm-up."""
    a = torch.randn(BENCH_SIZE, BENCH_SIZE).to(dtype)
    a @ a
    best = float("inf")
    for _ in range(BENCH_REPEATS):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return best
