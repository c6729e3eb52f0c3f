"""GPU specs as users write them ("H100:8"): parsed once, against the one hardware table (trainer/hardware.py)."""
from __future__ import annotations

import difflib

from nanolaunch.errors import NanolaunchError
from trainer.hardware import GPU, GPUS


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
    name, colon, count = spec.partition(":")
    if colon and not count:
        raise NanolaunchError(f"bad GPU spec {spec!r}: give the count after ':' (H100:8), or no ':' for one GPU")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise NanolaunchError(f"bad GPU spec {spec!r}: the count after ':' must be a whole number") from None
    if not 1 <= n <= 16:
        raise NanolaunchError(f"bad GPU spec {spec!r}: GPUs per node must be between 1 and 16")
    return lookup(name), n
