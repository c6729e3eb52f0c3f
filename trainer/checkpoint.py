"""Checkpoints that are complete or invisible.

RUN_DIR/checkpoints/step_000500/
    model.pt    model state_dict (fp32)
    optim-00003.pt  rank 3's [AdamW, Muon] state: its shard (optimizer state is sharded, trainer/optim.py);
                    every rank writes its own, so a resume needs the same world size
    ranks.pt    per rank: data-loader position and RNG states, indexed by rank
    state.json  loop state: step, horizon, last val_bpb, wall seconds so far, shape and config
    COMPLETE    written last: step and the size of every file above

A checkpoint is written into RUN_DIR/checkpoints/.tmp-step_000500-PID (rank 0 names it; every rank writes
its optimizer shard there, so across nodes RUN_DIR must be shared), every file fsynced, COMPLETE written
and fsynced by rank 0 once every rank's file is there, then the directory is renamed to step_000500 (and
the parent fsynced). A write that
is killed leaves a .tmp-* directory (or, never, a step_* without COMPLETE); resume ignores both and the
next run sweeps the temp directories. Where directories cannot be renamed (a FUSE bucket mount), the files
are moved one by one into step_000500 with COMPLETE last, which keeps the same guarantee. Older complete
checkpoints are rotated away.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

DIRNAME = "checkpoints"
MARKER = "COMPLETE"
FILES = ("model.pt", "ranks.pt", "state.json")  # and one optim-NNNNN.pt per rank


def optim_file(rank: int) -> str:
    return f"optim-{rank:05d}.pt"
_STEP = re.compile(r"^step_(\d{6,})$")


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def root(run_dir) -> Path:
    return Path(run_dir) / DIRNAME


def is_complete(path: Path) -> bool:
    """A step_* directory whose COMPLETE marker lists files that are all there with their sizes."""
    if not _STEP.match(path.name) or not (path / MARKER).is_file():
        return False
    try:
        sizes = json.loads((path / MARKER).read_text())["sizes"]
        return all((path / name).is_file() and (path / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def complete_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    base = root(run_dir)
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=step_of)


def latest(run_dir) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    return int(_STEP.match(Path(path).name).group(1))


def sweep(run_dir) -> list[Path]:
    """Remove what killed writes left behind (temp dirs, step_* without a valid marker)."""
    base = root(run_dir)
    removed = []
    if base.is_dir():
        for p in base.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or (_STEP.match(p.name) and not is_complete(p))):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def save(run_dir, step: int, *, model_state: dict, optim_state: list, rank_states: list, state: dict,
         keep: int = 2) -> Path:
    """Write checkpoint `step` atomically (see module doc) and keep only the newest `keep` (0: all). Every rank
    calls it with its own optimizer state; rank 0's model, rank states and loop state are the ones written."""
    import torch.distributed as dist

    distributed = dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    base = root(run_dir)
    final = base / f"step_{step:06d}"
    tmp = None
    if rank == 0:
        base.mkdir(parents=True, exist_ok=True)
        if not is_complete(final):  # else the same step again (a resumed run that ends where it started)
            tmp = base / f".tmp-{final.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
    if distributed:
        box = [str(tmp) if tmp else None]
        dist.broadcast_object_list(box, src=0)
        tmp = Path(box[0]) if box[0] else None
    if tmp is None:
        return final
    _write(tmp / optim_file(rank), lambda f: torch.save(optim_state, f))
    if distributed:
        dist.barrier()  # every rank's shard is on disk before rank 0 completes the checkpoint
    if rank == 0:
        _write(tmp / "model.pt", lambda f: torch.save(model_state, f))
        _write(tmp / "ranks.pt", lambda f: torch.save(rank_states, f))
        _write(tmp / "state.json", lambda f: f.write(json.dumps(state, indent=1).encode()))
        names = [*FILES, *(optim_file(r) for r in range(len(rank_states)))]
        sizes = {name: (tmp / name).stat().st_size for name in names}
        _write(tmp / MARKER, lambda f: f.write(json.dumps({"step": step, "sizes": sizes}).encode()))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)  # an incomplete leftover of the same name
        try:
            os.rename(tmp, final)
        except OSError:  # bucket mounts (FUSE) may not rename directories: move the files, the marker last
            _move_files(tmp, final, names)
        _fsync_dir(base)
        if keep > 0:
            for old in complete_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _move_files(tmp: Path, final: Path, names: list[str]) -> None:
    """Still complete or invisible: until COMPLETE (with every size) arrives, resume ignores `final`."""
    final.mkdir()
    for name in (*names, MARKER):
        os.rename(tmp / name, final / name)
    _fsync_dir(final)
    shutil.rmtree(tmp, ignore_errors=True)


def load(path: Path, rank: int, world_size: int = 1) -> dict:
    """Everything one rank needs: model, its optimizer shard, its own loader/RNG state and the loop state.
    The optimizer state is sharded by rank: another world size is refused, naming both."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path} is not a complete checkpoint")
    ranks = torch.load(path / "ranks.pt", map_location="cpu", weights_only=False)
    if len(ranks) != world_size:
        raise CheckpointError(f"checkpoint {path} holds optimizer state sharded over {len(ranks)} ranks and this "
                              f"run has {world_size}; resume it on {len(ranks)} ranks, or use another run_dir")
    return {
        "model": torch.load(path / "model.pt", map_location="cpu", weights_only=True),
        "optim": torch.load(path / optim_file(rank), map_location="cpu", weights_only=False),
        "rank": ranks[rank],
        "world_size": len(ranks),
        "state": json.loads((path / "state.json").read_text()),
    }


# -- what a run saves and resumes: every rank's RNG and data position, agreed across ranks ---------------------
def rank_state(loader, device: torch.device) -> dict:
    """This rank's data position and RNG states: what makes a resumed run bit-exact."""
    import random

    import numpy as np
    return {"loader": loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "python": random.getstate(), "numpy": np.random.get_state()}}


def restore_rng(rng: dict, device: torch.device) -> None:
    import random

    import numpy as np
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])


def gather_rank_states(mine: dict) -> list[dict]:
    """Every rank's state, on every rank (rank 0 writes them)."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def agreed_latest(run_dir) -> Path | None:
    """Rank 0's choice of checkpoint, for every rank (across nodes the run dir must be shared)."""
    import torch.distributed as dist
    path = latest(run_dir)
    if not dist.is_initialized():
        return path
    box = [str(path) if path else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] else None


def check_fits(path: Path, ck: dict, mine: dict) -> str | None:
    """Why checkpoint `ck` cannot continue a run with these facts (shape, batch, world size, data kind), or None."""
    theirs = {k: ck["state"].get(k) for k in mine}
    theirs["world_size"] = ck["world_size"]
    if theirs == mine:
        return None
    diff = ", ".join(f"{k} {theirs[k]} → {mine[k]}" for k in mine if theirs[k] != mine[k])
    return f"checkpoint {path} does not fit these settings ({diff}); use another run_dir"


def resume(run_dir, *, rank: int, world_size: int, facts: dict, model, optimizers, device: torch.device):
    """Load the latest complete checkpoint (rank 0's choice) into the model, this rank's optimizer shard and RNG:
    (its step, this rank's loader state, its loop state), or None where there is none and the run starts fresh."""
    from trainer.common import log
    from trainer.settings import SettingError
    path = agreed_latest(run_dir)
    if path is None:
        log(f"resume: no complete checkpoint in {root(run_dir)}; starting fresh")
        return None
    try:
        ck = load(path, rank, world_size)
    except CheckpointError as e:
        raise SettingError(str(e)) from None
    problem = check_fits(path, ck, facts)
    if problem:
        raise SettingError(problem)
    model.load_state_dict(ck["model"])
    for opt, sd in zip(optimizers, ck["optim"]):
        opt.load_state_dict(sd)
    loader_state = ck["rank"]["loader"]
    restore_rng(ck["rank"]["rng"], device)
    st = ck["state"]
    log(f"resume: {path} (step {st['step']:,} of {st.get('iterations')}, val_bpb {st.get('val_bpb')}, "
        f"{st.get('wall_seconds', 0.0):.0f}s of earlier wall time)")
    return st["step"], loader_state, st
