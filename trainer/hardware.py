"""Accelerator facts: memory and peak dense bf16 FLOP/s, one table for the planner and the trainer (torch-free).

Peaks are vendor datasheet figures without sparsity (docs/DESIGN.md). A device that matches nothing has an
unknown peak: MFU is then reported as unknown, never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str  # SkyPilot's accelerator name
    memory_gib: float
    peak_bf16_tflops: float | None
    description: str
    device_name_keys: tuple[str, ...] = ()  # all found in torch.cuda.get_device_name() means this GPU

    @property
    def peak_flops(self) -> float | None:
        return None if self.peak_bf16_tflops is None else self.peak_bf16_tflops * 1e12


GPUS = {g.name: g for g in (
    GPU("A100", 40, 312, "NVIDIA A100-SXM4-40GB", ("A100", "40GB")),
    GPU("A100-80GB", 80, 312, "NVIDIA A100-SXM4-80GB", ("A100", "80GB")),
    GPU("H100", 80, 989, "NVIDIA H100 SXM 80GB", ("H100", "HBM3")),  # "NVIDIA H100 80GB HBM3" is the SXM part
    GPU("H100-PCIe", 80, 756, "NVIDIA H100 PCIe 80GB", ("H100", "PCIe")),
    GPU("H200", 141, 989, "NVIDIA H200 141GB", ("H200",)),
    # NVIDIA HGX B200 datasheet: FP16/BF16 Tensor 4.5 PFLOPS per GPU with sparsity, so 2,250 dense; 180 GB as
    # SkyPilot's catalogs state it. Key "NVIDIA B200", not "B200": a GB200 ("NVIDIA GB200") is another part.
    GPU("B200", 180, 2250, "NVIDIA B200 180GB", ("NVIDIA B200",)),
    GPU("L40S", 48, 362, "NVIDIA L40S 48GB", ("L40S",)),
    GPU("RTX5090", 32, 209.5, "NVIDIA GeForce RTX 5090", ("RTX 5090",)),
    GPU("RTX4090", 24, 165.2, "NVIDIA GeForce RTX 4090", ("RTX 4090",)),
)}


def gpu_for_device_name(device_name: str) -> GPU | None:
    """The table's GPU for a CUDA device name, or None (e.g. H100 NVL, a CPU)."""
    for gpu in GPUS.values():
        if gpu.device_name_keys and all(k in device_name for k in gpu.device_name_keys):
            return gpu
    if "A100" in device_name:  # an A100 whose name gives no memory size: same chip, same peak
        return GPUS["A100"]
    if "H100" in device_name and "SXM" in device_name:
        return GPUS["H100"]
    return None


def peak_flops(device_name: str) -> float | None:
    gpu = gpu_for_device_name(device_name)
    return gpu.peak_flops if gpu else None


def mfu(flops_per_token: int, tokens_per_second: float | None, peak: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the devices' peak; None where the peak is unknown."""
    if not tokens_per_second or not peak:
        return None
    return flops_per_token * tokens_per_second / (peak * devices)


# Environment variables that narrow which instructions PyTorch's CPU kernels use (ATen, oneDNN, MKL): a
# machine with them set behaves as another machine, so they are part of its identity.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 flags of native bf16 matrix products


@dataclass(frozen=True)
class CPU:
    """This machine's CPU as the trainer's speed depends on it: model, instruction flags, cores."""
    model: str
    flags: frozenset[str]
    cores: int
    isa_limits: tuple[tuple[str, str], ...] = ()

    @property
    def bf16_flags(self) -> list[str]:
        return [f for f in BF16_FLAGS if f in self.flags]

    @property
    def key(self) -> str:
        """Stable id of this machine: two machines with the same key run the trainer at the same speed."""
        import hashlib

        text = "\n".join([self.model, " ".join(sorted(self.flags)), str(self.cores),
                          *(f"{k}={v}" for k, v in self.isa_limits)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        limits = "".join(f", {k}={v}" for k, v in self.isa_limits)
        bf16 = "/".join(self.bf16_flags) or "no bf16 flag"
        return f"{self.model}, {self.cores} cores, {bf16}{limits}"


def this_cpu() -> CPU:
    """Model and flags from /proc/cpuinfo (Linux); elsewhere the platform's name and no flags."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine() or "cpu", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    limits = tuple((k, os.environ[k]) for k in ISA_LIMITS if os.environ.get(k))
    return CPU(model, flags, cores(), limits)


def cores() -> int:
    """CPU cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def nanolaunch_home():
    """NANOLAUNCH_HOME (default ~/.nanolaunch): the ledger, runs, presets and caches; on a node, the node's."""
    import os
    from pathlib import Path

    return Path(os.environ.get("NANOLAUNCH_HOME") or Path.home() / ".nanolaunch")


def machine_cache(cpu: CPU):
    """Where measurements of this machine are kept: NANOLAUNCH_HOME/cache/machines/<key>/."""
    return nanolaunch_home() / "cache" / "machines" / cpu.key


def read_measurement(cpu: CPU, name: str) -> dict | None:
    """A measurement of this machine kept under machine_cache (None: never taken, or unreadable)."""
    import json

    try:
        return json.loads((machine_cache(cpu) / name).read_text())
    except (OSError, ValueError):
        return None


def keep_measurement(cpu: CPU, name: str, data: dict) -> None:
    """Whole or absent: written aside, then renamed (a concurrent process writes the same figure)."""
    import json
    import os

    path = machine_cache(cpu) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
