"""Hardware facts: memory and peak dense bf16 FLOP/s per accelerator, with an explicit unknown case."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from nanolaunch.errors import NanolaunchError


@dataclass(frozen=True)
class GPU:
    name: str  # SkyPilot's accelerator name
    memory_gib: float
    peak_bf16_tflops: float | None  # None: unknown, so MFU is reported as unknown, never guessed
    description: str

    @property
    def peak_flops(self) -> float | None:
        return None if self.peak_bf16_tflops is None else self.peak_bf16_tflops * 1e12


# Peak dense bf16 from DESIGN.md §3 (vendor datasheets, no sparsity).
GPUS = {g.name: g for g in (
    GPU("A100", 40, 312, "NVIDIA A100-SXM4-40GB"),
    GPU("A100-80GB", 80, 312, "NVIDIA A100-SXM4-80GB"),
    GPU("H100", 80, 989, "NVIDIA H100 SXM 80GB"),
    GPU("H100-PCIe", 80, 756, "NVIDIA H100 PCIe 80GB"),
    GPU("H200", 141, 989, "NVIDIA H200 141GB"),
    GPU("L40S", 48, 362, "NVIDIA L40S 48GB"),
    GPU("RTX5090", 32, 209.5, "NVIDIA GeForce RTX 5090"),
    GPU("RTX4090", 24, 165.2, "NVIDIA GeForce RTX 4090"),
)}

CPU_NAME = "cpu"


def local_cpu() -> GPU:
    """This machine as a 'device': its RAM, and an unknown peak (MFU is never guessed on a CPU)."""
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return GPU(CPU_NAME, round(memory, 1), None, f"this machine's CPU ({os.cpu_count()} cores)")


def lookup(name: str) -> GPU:
    if name.lower() == CPU_NAME:
        return local_cpu()
    by_upper = {k.upper(): g for k, g in GPUS.items()}
    gpu = by_upper.get(name.upper())
    if gpu is None:
        near = difflib.get_close_matches(name.upper(), list(by_upper), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(by_upper[n].name for n in near)}? " if near else ""
        raise NanolaunchError(f"unknown GPU {name!r}; {hint}known: {', '.join(GPUS)}, cpu")
    return gpu


def parse_gpu_spec(spec: str) -> tuple[GPU, int]:
    """'H100:8' -> (H100, 8); 'A100' -> (A100, 1)."""
    name, _, count = spec.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise NanolaunchError(f"bad GPU spec {spec!r}: the count after ':' must be a whole number") from None
    if not 1 <= n <= 16:
        raise NanolaunchError(f"bad GPU spec {spec!r}: GPUs per node must be between 1 and 16")
    return lookup(name), n
