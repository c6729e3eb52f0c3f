"""The planner: every derived number of a run before a cent is spent.

Pure arithmetic over RunConfig, the GPU table, the memory model and a price offer. It never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nanolaunch import disk, gpus, memory, prices
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from trainer import fineweb, hardware
from trainer.settings import data_kind, data_slug
from trainer.arithmetic import ShapeError, grad_accum_steps, iterations_for

# MFU assumed when nothing better is known, per GPU kind, with where the figure comes from.
DEFAULT_MFU = {
    "A100": (0.55, "seed record: nanochat d10 on A100-SXM4-40GB"),
    "A100-80GB": (0.55, "seed record of the A100-40GB (same chip)"),
    "H100": (0.47, "seed record: nanochat d34 on 8×H100"),
    "H200": (0.47, "seed record of the H100 (same peak)"),
}
FALLBACK_MFU = 0.40


class PlanError(NanolaunchError):
    pass


@dataclass(frozen=True)
class Throughput:
    """Achieved FLOP/s per device and where the figure came from; mfu is None where the peak is unknown."""
    flops_per_second: float | None
    mfu: float | None
    source: str


def throughput(config: RunConfig, gpu: gpus.GPU, mfu: float | None = None, measured: dict | None = None,
               measured_from: str = "") -> Throughput:
    """--mfu beats a measured run of the same GPU kind, which beats the default for the kind."""
    if mfu is not None:
        if not 0 < mfu <= 1:
            raise PlanError(f"--mfu must be a fraction in (0, 1], got {mfu}")
        return Throughput(_flops(mfu, gpu), mfu, "given with --mfu")
    measured = measured or {}
    if measured.get("mfu") and gpu.peak_flops:
        return Throughput(_flops(measured["mfu"], gpu), measured["mfu"], f"measured ({measured_from})")
    if measured.get("tokens_per_second") and measured.get("flops_per_token"):
        # A measured rate on a device without a known peak (a CPU): reuse its FLOP/s, scaled by nothing else.
        devices = measured.get("devices", 1)
        per_device = measured["tokens_per_second"] * measured["flops_per_token"] / devices
        mfu_now = hardware.mfu(measured["flops_per_token"], measured["tokens_per_second"], gpu.peak_flops, devices)
        return Throughput(per_device, mfu_now, f"measured tokens/s ({measured_from})")
    if gpu.peak_flops is None:
        return Throughput(None, None, f"unknown: no peak FLOP/s for {gpu.name} and no measured run; pass --mfu "
                                      "or probe with `nanolaunch dry`")
    value, source = DEFAULT_MFU.get(gpu.name, (FALLBACK_MFU, f"assumed; no measurement for {gpu.name}, pass --mfu"))
    return Throughput(_flops(value, gpu), value, source)


def _flops(mfu: float, gpu: gpus.GPU) -> float | None:
    return mfu * gpu.peak_flops if gpu.peak_flops else None


def count_evals(iterations: int, eval_every: int) -> int:
    """Evaluations at step 0, every eval_every steps, and at the last step (as nanochat does); with
    eval_every ≤ 0, only at the last step."""
    if eval_every <= 0:
        return 1
    return iterations // eval_every + 1 + (1 if iterations % eval_every else 0)


def plan(config: RunConfig, *, mfu: float | None = None, measured: dict | None = None, measured_from: str = "",
         probe: bool = False, data: dict | None = None, memory_measured: dict | None = None) -> dict:
    """`probe`: the config is a probe's, which trains on synthetic batches (no data pipeline in memory) and
    never evaluates. `data`: the data plan, when the caller has it (it is the same on every GPU).
    `memory_measured`: a ledger row's measured peak of this very config (calibration.measured_memory), which
    the verdict then stands on."""
    gpu, per_node, world = config.accelerator, config.gpus_per_node, config.world_size
    shape = config.shape
    try:
        grad_accum = grad_accum_steps(config.train.total_batch, config.train.device_batch, config.train.seq_len, world)
        iterations = iterations_for(shape.params, config.train.total_batch, flops_per_token=shape.flops_per_token,
                                    **config.train.horizon)
    except ShapeError as e:
        raise PlanError(str(e)) from None
    tokens = iterations * config.train.total_batch
    warnings = []
    if config.train.device_batch & (config.train.device_batch - 1):
        warnings.append(f"device batch {config.train.device_batch} is not a power of two; kernels are usually slower")

    mem = memory_for(config, probe=probe)
    tput = throughput(config, gpu, mfu, measured, measured_from)

    startup_s = (measured or {}).get("startup_seconds") if mfu is None else None
    n_evals = 0 if probe else count_evals(iterations, config.train.eval_every)
    step_s, train_s, eval_s, wall_h = timing(config, tput, iterations, n_evals, startup_s)
    price = node_price(config)
    rate = price.spot_rate if config.spot else price.on_demand_rate

    data = data or _data_plan(config, tokens)
    result = {
        **shape.as_dict(),
        "gpu": gpu.name, "gpu_description": gpu.description, "gpus_per_node": per_node, "nodes": config.nodes,
        "world_size": world, "total_batch": config.train.total_batch, "device_batch": config.train.device_batch,
        "grad_accum": grad_accum, "iterations": iterations, "tokens": tokens,
        "tokens_per_param": tokens / shape.params, "total_flops": float(shape.flops_per_token) * tokens,
        **data,
        "peak_memory_gib": mem.total_gib, "gpu_memory_gib": gpu.memory_gib, "usable_memory_gib": mem.usable_gib,
        "fits": mem.fits, "verdict": mem.verdict, "peak_memory_high_gib": mem.high_gib, "memory": mem.as_dict(),
        **measured_verdict(mem, memory_measured),
        "peak_flops": gpu.peak_flops, "mfu": tput.mfu, "mfu_source": tput.source,
        "step_seconds": step_s, "evals": n_evals, "eval_seconds": eval_s, "train_seconds": train_s,
        "startup_seconds": startup_s,
        "wall_hours": wall_h, "spot": config.spot, "usd_per_hour": rate,
        "price_source": price.spot_source if config.spot else price.source,
        "usd_per_hour_on_demand": price.on_demand_rate, "usd_per_hour_spot": price.spot_rate,
        "price_source_on_demand": price.source, "price_source_spot": price.spot_source, "clouds": price.clouds,
        "cost_usd": _cost(wall_h, price.on_demand_rate), "cost_usd_spot": _cost(wall_h, price.spot_rate),
        "warnings": warnings,
        "disk": disk.plan(config, data),
        "tokenizer": tokenizer_plan(config, data),
    }
    return result


def tokenizer_plan(config: RunConfig, data: dict) -> dict | None:
    """The tokenizer a run uses: the one this machine's store keeps for the same data, vocabulary and character
    budget (local runs), else one trained by rank 0 before step 0 and kept for the runs after it."""
    from pathlib import Path

    from trainer.settings import tokenizer_name
    from trainer.tokenizer import META_FILE

    t = config.train
    kind = data_kind(t.data)
    if kind == "synthetic":
        return None
    commit = None
    if kind == "hub":
        from trainer import hub
        try:
            kept = hub.Listing.from_json((Path(data_dir(config)) / hub.LISTING_FILE).read_text())
            commit = kept.revision if kept.source == hub.Source.of(t) else None
        except (OSError, ValueError, TypeError, KeyError):
            pass
    name = tokenizer_name(t, commit or ("<commit>" if kind == "hub" else None))
    path = Path(data_dir(config)) / name
    reused = (kind != "hub" or commit is not None) and (path / META_FILE).is_file()
    files = None
    if data.get("chars_per_shard"):  # the first training files, as many as hold tokenizer_chars
        files = math.ceil(t.tokenizer_chars / data["chars_per_shard"])
        if data.get("dataset_files"):
            files = min(files, data["dataset_files"] - 1)
    return {"name": name, "path": str(path) if reused else None, "reused": reused, "chars": t.tokenizer_chars,
            "files": files}


def measured_verdict(mem: memory.MemoryEstimate, seen: dict | None) -> dict:
    """A measurement of this config beats the model: it ran out of memory (does not fit), or its peak (reserved
    where known, the allocator's whole share, + the CUDA context) fits the usable memory or not."""
    if not seen:
        return {"verdict_source": "memory model (docs/memory.md)"}
    if seen["oom"]:
        return {"fits": False, "verdict": "does not fit", "verdict_source": f"measured: ledger #{seen['id']} ran out "
                                                                           "of memory at this batch"}
    held = (seen["reserved_gib"] or seen["allocated_gib"]) + memory.CUDA_CONTEXT_GIB
    fits = held <= mem.usable_gib
    return {"fits": fits, "verdict": "fits" if fits else "does not fit", "peak_memory_measured_gib": held,
            "verdict_source": f"measured: ledger #{seen['id']} peaked at {seen['allocated_gib']:.1f} GiB allocated"
                              + (f", {seen['reserved_gib']:.1f} reserved" if seen["reserved_gib"] else "")
                              + f" (+ {memory.CUDA_CONTEXT_GIB:g} context)"}


def timing(config: RunConfig, tput: Throughput, iterations: int, n_evals: int,
           startup_s: float | None = None) -> tuple[float | None, ...]:
    """(step, training, evaluation seconds, wall hours) at this throughput; None everywhere when unknown."""
    if not tput.flops_per_second:
        return None, None, None, None
    shape = config.shape
    cluster_flops = tput.flops_per_second * config.world_size
    step_s = config.train.total_batch * shape.flops_per_token / cluster_flops
    train_s = step_s * iterations
    eval_s = n_evals * config.train.eval_tokens * shape.flops_per_token / 3 / cluster_flops  # forward only: 1/3
    return step_s, train_s, eval_s, (train_s + eval_s + (startup_s or 0)) / 3600


@dataclass(frozen=True)
class NodePrice:
    """What the run's nodes cost per hour, on demand and spot (None: no offer), each with its source."""
    on_demand_rate: float | None
    spot_rate: float | None
    source: str
    spot_source: str
    clouds: str  # which clouds were priced, and why those


def node_price(config: RunConfig, clouds: prices.Clouds | None = None) -> NodePrice:
    """This machine or your own cluster: the rate you set. A cloud run: the cheapest node SkyPilot's optimizer
    would pick on the enabled clouds that can run it (a cloud run mounts its bucket; several nodes need a
    cloud that can join them), on demand and spot each with its own cloud, region and instance."""
    if config.on_cpu or config.slurm:
        rate, source = prices.local_rate()
        if config.slurm:
            source = f"{config.infra}: {source}"
        return NodePrice(rate, None, source, "", "")  # no spot here or on a Slurm cluster
    clouds = clouds or infra_clouds(config)
    gpu, per_node, nodes = config.accelerator.name, config.gpus_per_node, config.nodes
    offer, spot = prices.cheapest(gpu, per_node, prices.needs(nodes=nodes), clouds)
    where = f"{per_node}×{gpu} in one node"
    return NodePrice(
        offer.usd_per_hour * nodes if offer else None, spot.spot_usd_per_hour * nodes if spot else None,
        f"{offer.label}, {offer.source}" if offer else f"unknown: no offer for {where} on {clouds.note}",
        f"{spot.spot_label}, {spot.source}" if spot else f"unknown: no spot offer for {where} on {clouds.note}",
        clouds.note)


def infra_clouds(config: RunConfig) -> prices.Clouds:
    """--infra CLOUD[/REGION] narrows the clouds to that one, as SkyPilot's optimizer does."""
    if config.infra:
        cloud = config.infra.split("/")[0]
        return prices.Clouds(frozenset({cloud}), f"{cloud} (--infra {config.infra})")
    return prices.enabled_clouds()


def memory_for(config: RunConfig, device_batch: int | None = None, probe: bool = False) -> memory.MemoryEstimate:
    """Peak memory per device of this config (at another device batch if given); `probe`: synthetic batches."""
    return memory.estimate(config.shape, device_batch or config.train.device_batch, config.accelerator.memory_gib,
                           "cpu" if config.on_cpu else "cuda", real_data=not probe, world_size=config.world_size,
                           compiled=config.mode[1], ns_bytes=2 if _bf16_native(config) else 4)


def _bf16_native(config: RunConfig) -> bool:
    """As trainer/precision.py decides, from what can be told without torch: every GPU in the table is of
    compute capability 8.0 or later; a local CPU by its flags."""
    if not config.on_cpu:
        return True
    return config.on_this_cpu and bool(hardware.this_cpu().bf16_flags)


def _cost(wall_hours: float | None, rate: float | None) -> float | None:
    return None if wall_hours is None or rate is None else wall_hours * rate


def _data_plan(config: RunConfig, tokens: int) -> dict:
    """Shards of a Hub dataset one epoch needs at the worst characters/token, what is fetched, when that repeats
    data, and where the dataset's size comes from; None everywhere for other data."""
    t = config.train
    kind = data_kind(t.data)
    if kind in ("local", "stdlib"):
        return _folder_plan(t.data if kind == "local" else data_dir(config), tokens)
    if kind != "hub":
        return dict(NO_DATA_PLAN)
    if fineweb.is_default(t.data, t.data_config) and (t.data_split, t.val_shard) == ("train", None):  # its layout
        files, chars, chars_from = fineweb.SHARDS_TOTAL, fineweb.CHARS_PER_SHARD, fineweb.CHARS_FROM
        size, size_from = fineweb.BYTES_PER_SHARD, fineweb.BYTES_FROM
    else:  # asks the Hub once, then reads the listing the trainer will use too
        from trainer import hub
        try:
            listing = hub.facts(hub.Source.of(t), data_dir(config), val_index=t.val_shard)
        except hub.DataError as e:
            raise PlanError(str(e)) from None
        files, chars, chars_from = len(listing.train) + 1, listing.chars_per_shard, listing.chars_from
        size, size_from = listing.bytes_per_shard, "the Hub's file sizes"
    try:
        return {**fineweb.plan_shards(tokens, files=files, chars_per_shard=chars, shards=t.shards),
                "chars_from": chars_from, "bytes_per_shard": size, "bytes_from": size_from}
    except ValueError as e:
        raise PlanError(f"{t.data}: {e}") from None


NO_DATA_PLAN = {k: None for k in ("train_shards", "shards", "dataset_files", "chars_per_shard",
                                  "repeat_above_chars_per_token", "epochs", "chars_from", "bytes_per_shard",
                                  "bytes_from")}


def _folder_plan(folder: str, tokens: int) -> dict:
    """A folder's files are all read (the last is validation): how many epochs of them the run needs.
    Unknown while the folder is missing (stdlib's is built by the first run; a wrong path fails there)."""
    from trainer.data import DataError, list_shards
    from trainer.hub import shard_chars

    try:
        paths = list_shards(folder)
        chars = sum(shard_chars(p, "text") if p.suffix == ".parquet" else p.stat().st_size for p in paths[:-1])
    except (DataError, OSError):
        return dict(NO_DATA_PLAN)
    if len(paths) < 2 or not chars:
        return dict(NO_DATA_PLAN)
    return {**fineweb.plan_shards(tokens, files=len(paths), chars_per_shard=chars / (len(paths) - 1),
                                  shards=len(paths)), "chars_from": "measured on the folder's files",
            "bytes_per_shard": sum(p.stat().st_size for p in paths) / len(paths), "bytes_from": "the folder's files"}


def data_dir(config: RunConfig) -> str:
    """This machine's cache of the run's data and tokenizer, shared by every run, probe and plan on it."""
    from nanolaunch.presets import home

    return str(home() / "cache" / "data" / data_slug(config.train))


def measured_from_preset(preset, config: RunConfig) -> tuple[dict | None, str]:
    """A preset's measured results, usable when the plan runs on the same GPU kind the preset measured."""
    if preset is None or not preset.results:
        return None, ""
    if preset.config.accelerator.name != config.accelerator.name:
        return None, ""
    devices = preset.config.world_size
    measured = {"mfu": preset.results.get("mfu"), "tokens_per_second": preset.results.get("tokens_per_second"),
                "flops_per_token": preset.config.shape.flops_per_token, "devices": devices}
    return measured, f"preset {preset.name}: {preset.provenance.get('source', 'no source given')}"
