"""Small shared pieces of the trainer: distributed setup, device facts, memory, logging, synthetic data."""
from __future__ import annotations

import datetime
import os
import resource
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """Rank and world size from torchrun's environment (a plain `python -m` run is rank 0 of 1)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return DistEnv(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), world,
                   int(env.get("LOCAL_WORLD_SIZE", world)))


def init_distributed(env: DistEnv, device_type: str) -> None:
    """NCCL on CUDA, gloo on CPU. The long timeout covers rank 0 downloading data or training the
    tokenizer while the others wait at a barrier."""
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", env.local_rank)} if device_type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60), **kwargs)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


_master = True


def set_master(master: bool) -> None:
    global _master
    _master = master


def log(msg: str) -> None:
    """A human line on stderr (rank 0 only); the JSON events go to stdout."""
    if _master:
        print(msg, file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def is_oom(e: BaseException) -> bool:
    """CUDA OOM, or an allocation failure on the CPU (e.g. under --memory-limit-gib's RLIMIT_AS)."""
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(e, RuntimeError):
        msg = str(e).lower()
        if _onednn_alloc(e):
            return True
        return any(s in msg for s in ("out of memory", "can't allocate memory", "cannot allocate memory",
                                      "not enough memory", "failed to allocate", "std::bad_alloc"))
    return False


def _onednn_alloc(e: BaseException) -> bool:
    """oneDNN says only "could not create a primitive" when it cannot allocate its scratchpad: an allocation
    failure when this process's address space is capped."""
    return ("could not create a primitive" in str(e).lower()
            and resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY)


def oom_line(e: BaseException) -> str:
    """The one line an out-of-memory result carries: the error, saying it could not allocate where its own
    words do not."""
    line = one_line(e)
    return f"could not allocate memory under the address-space cap ({line})" if _onednn_alloc(e) else line


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (one small collective; just `flag` on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def free_memory(device: torch.device) -> None:
    """Return what the dead tensors held: to Python's heap, and the CUDA caching allocator's to the GPU."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from trainer.hardware import this_cpu
    return this_cpu().describe()


def limit_memory(gib: float, device: torch.device) -> str:
    """Cap this process's memory: on CUDA the caching allocator's share of the GPU, on the CPU the
    address space (RLIMIT_AS), so going over raises an allocation error instead of swapping.
    Returns a line saying what was set."""
    nbytes = int(gib * 2**30)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        frac = min(1.0, nbytes / total)
        torch.cuda.set_per_process_memory_fraction(frac, device)
        return f"GPU memory capped at {gib:g} GiB ({frac:.1%} of {total / 2**30:.1f} GiB)"
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))
    return f"address space capped at {nbytes / 2**30:g} GiB (RLIMIT_AS)"


def peak_memory_gib(device: torch.device) -> float:
    """CUDA: max_memory_allocated. CPU: this process's peak resident set size (VmHWM).

    Not getrusage's ru_maxrss: Linux carries it across exec, so a trainer started by a large parent
    (a test runner that imported torch, torchrun) would report the parent's size as its own floor."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux; bytes on macOS


class SyntheticLoader:
    """Learnable synthetic batches with the TokenLoader interface, for probes and tests.

    Each sequence is an arithmetic progression a, a+b, a+2b, … (mod vocab) with random a and b < 16:
    a model learns to continue it, so the loss falls. Batches are defined globally: batch n of this
    rank is micro-batch j = rank·grad_accum + n % grad_accum of optimizer step n // grad_accum, so one
    process with grad_accum 2 sees exactly the batches two processes with grad_accum 1 see.
    Every token counts 1 byte (val_bpb is then bits per token)."""

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int, *, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1, seed: int = 0, split: str = "train", state: dict | None = None):
        self.V, self.B, self.T = vocab_size, batch_size, seq_len
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.seed = seed * 2 + (split == "val")
        self.n = int(state["n"]) if state else 0
        self.epoch = 0

    def next_batch(self):
        step, micro = divmod(self.n, self.grad_accum)
        j = step * self.grad_accum * self.world_size + self.rank * self.grad_accum + micro
        self.n += 1
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
        start = torch.randint(0, self.V, (self.B, 1), generator=g)
        stride = torch.randint(1, 16, (self.B, 1), generator=g)
        seq = (start + stride * torch.arange(self.T + 1)) % self.V
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"n": self.n}

    def close(self) -> None:
        pass
