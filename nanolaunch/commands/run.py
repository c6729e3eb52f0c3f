"""`nanolaunch run` and `nanolaunch dry`: a full training run, and 20-iteration probes of batch sizes."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nanolaunch import batch_search, calibration, output as out, presets, search
from nanolaunch.commands.common import (BatchOpt, CheckpointEveryOpt, DataOpt, DataSplitOpt, ForceOpt, GpuOpt,
                                        InfraOpt, IterationsOpt, JsonOpt, LocalOpt, ManagedOpt, MaxCostOpt,
                                        MaxHoursOpt, ModelArg, NodesOpt, PresetOpt, ProjectOpt, RatioOpt, SeqOpt,
                                        SpotOpt, TextColumnOpt, TitleOpt, TotalBatchOpt, ValueEmbeddingsOpt, VocabOpt,
                                        check_limits, fixed_by, resolve)
from nanolaunch.commands.plan import measured_kw
from nanolaunch.ledger import export_row
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError
from nanolaunch.backends.local import run_local
from nanolaunch.session import Request, derived
from nanolaunch.planner import PlanError
from trainer import events


def _on_cloud(config: RunConfig, local: bool) -> bool:
    """GPU configs and anything with --infra run on SkyPilot unless --local; other CPU configs run here."""
    return not local and (config.infra is not None or not config.on_cpu)


def run(
    model: ModelArg = None,
    preset: PresetOpt = None,
    ratio: RatioOpt = None,
    iterations: IterationsOpt = None,
    batch: BatchOpt = None,
    seq: SeqOpt = None,
    total_batch: TotalBatchOpt = None,
    vocab: VocabOpt = None,
    value_embeddings: ValueEmbeddingsOpt = None,
    data: DataOpt = None,
    data_split: DataSplitOpt = None,
    text_column: TextColumnOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    gpu: GpuOpt = None,
    infra: InfraOpt = None,
    nodes: NodesOpt = None,
    spot: SpotOpt = None,
    managed: ManagedOpt = False,
    title: TitleOpt = "",
    project: ProjectOpt = "default",
    local: LocalOpt = False,
    max_cost: MaxCostOpt = None,
    max_hours: MaxHoursOpt = None,
    force: ForceOpt = False,
    wandb_project: Annotated[Optional[str], typer.Option(envvar="WANDB_PROJECT",
                                                         help="Log to this W&B project (key: WANDB_API_KEY).")] = None,
    dryrun: Annotated[bool, typer.Option("--dryrun", help="Validate the task and let SkyPilot choose the instance; "
                                                           "launch nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a model to the end of its horizon and record it in the ledger.

    Without --gpu and --batch (and without a preset) it launches the config `plan` chooses; a config the plan
    says does not fit is refused before anything is asked of SkyPilot (--force launches it anyway)."""
    check_limits(max_cost, max_hours)
    config, chosen = resolve(model, preset, infra=infra, ratio=ratio, iterations=iterations, device_batch=batch,
                             seq_len=seq, total_batch=total_batch, vocab_size=vocab, value_embeddings=value_embeddings,
                             checkpoint_every=checkpoint_every, gpu=gpu, nodes=nodes, spot=spot, data=data,
                             data_split=data_split, text_column=text_column)
    on_cloud = managed or _on_cloud(config, local)
    settled = search.settle(config, fixed_by(gpu, batch, nodes, chosen, config),
                            searchable=on_cloud and not config.on_cpu and not config.slurm, max_cost=max_cost,
                            max_hours=max_hours, **measured_kw(config, chosen, calibration.ledger_rows()))
    config = settled.config
    plan = derived(config, chosen)
    refused = search.refusal(settled, plan)
    if refused and not force:
        raise NanolaunchError(refused)
    if refused:
        out.warn(f"--force: {refused.removesuffix('; --force launches it anyway')}")
    if search.caution(plan):
        out.warn(search.caution(plan))
    if settled.searched:
        out.note(f"chose {settled.within.chosen.describe()}: {settled.within.why}")
    if max_cost is not None and plan["cost_usd"] is not None and plan["cost_usd"] > max_cost:
        raise NanolaunchError(f"estimated cost {out.usd(plan['cost_usd'])} exceeds --max-cost {out.usd(max_cost)} "
                              f"({out.hours(plan['wall_hours'])} at {out.usd(plan['usd_per_hour'])}/h)")
    req = Request("run", config, chosen, title, project, max_cost=max_cost, wandb_project=wandb_project or None,
                  quiet=as_json, managed=managed)
    if dryrun:
        from nanolaunch.backends import skypilot

        out.emit({**skypilot.dryrun(req, plan), "search": settled.as_dict()}, as_json, _dryrun_summary)
        return
    if managed and local:
        raise NanolaunchError("--managed runs as a SkyPilot managed job; it cannot run with --local")
    if on_cloud:
        from nanolaunch.backends import skypilot

        row = skypilot.run(req)
    else:
        row = run_local(req)
    out.emit(export_row(row), as_json, _summary)
    if row["status"] != "ok":
        raise typer.Exit(1)


def _gzip(r: dict) -> str:
    return "" if r.get("gzip_bpb") is None else f" (gzip -9: {r['gzip_bpb']:.4f})"


def _summary(r: dict) -> None:
    c = out.console()
    c.print(f"run #{r['id']} {r['status']}: val_bpb {out.num(r['val_bpb'], 4)}{_gzip(r)} · wall {out.seconds(r['wall_seconds'])}"
            f" · cost {out.usd(r['cost_usd'])} · MFU {out.pct(r['mfu'])} · {out.num(r['tokens_per_second'])} tok/s"
            f" · peak {out.num(r['peak_memory_gib'], 2)} GiB")
    if r.get("error"):
        c.print(f"error: {r['error']}")
    c.print(f"folder: {r['run_dir']}   (see `nanolaunch show {r['id']}`)")


def _dryrun_summary(d: dict) -> None:
    c, sky, plan = out.console(), d["skypilot"], d["plan"]
    c.print(f"task valid: {d['name']} ({d['nodes']} node(s), {d['accelerators']}, spot {sky['spot']})")
    c.print(f"SkyPilot would launch {sky['cloud']} {sky['instance_type']} ({sky['region']}) at "
            f"{out.usd(sky['usd_per_hour'])}/h; the plan used {out.usd(plan['usd_per_hour'])}/h from {plan['price_source']}")
    c.print(f"estimated {out.hours(plan['wall_hours'])}, {out.usd(plan['cost_usd'])}; nothing was launched")


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise NanolaunchError(f"--batch takes whole numbers separated by commas, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise NanolaunchError(f"--batch needs at least one positive batch size, got {text!r}")
    return sorted(set(batches))


def dry(
    model: ModelArg = None,
    preset: PresetOpt = None,
    batch: Annotated[str, typer.Option("--batch", help="Device batch, several (8,16,32), or auto: the batches that "
                                                       "divide the total batch, largest first, until none is faster.")] = "",
    iters: Annotated[int, typer.Option(help="Iterations per probe.")] = 20,
    seq: SeqOpt = None,
    total_batch: TotalBatchOpt = None,
    vocab: VocabOpt = None,
    value_embeddings: ValueEmbeddingsOpt = None,
    gpu: GpuOpt = None,
    infra: InfraOpt = None,
    memory_limit_gib: Annotated[Optional[float], typer.Option(
        help="Cap each local probe's memory (a real allocation failure past it is an OOM).")] = None,
    force: Annotated[bool, typer.Option(help="Probe even batches predicted not to fit.")] = False,
    save_preset: Annotated[Optional[str], typer.Option(help="Save the best batch as a new preset of this name.")] = None,
    project: ProjectOpt = "default",
    local: LocalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Probe batch sizes for N iterations each: OOM or not, MFU, step time, peak memory."""
    config, chosen = resolve(model, preset, infra=infra, gpu=gpu, seq_len=seq, total_batch=total_batch,
                             vocab_size=vocab, value_embeddings=value_embeddings)
    check_limits(memory_limit_gib=memory_limit_gib)
    auto = batch.strip().lower() == "auto"
    batches = _batches(batch, config, auto)
    if save_preset is not None:
        presets.check_new_name(save_preset)  # before spending anything
    if iters < 1:
        raise NanolaunchError("--iters must be at least 1")
    probes = _fitting(batches, config, chosen, iters, memory_limit_gib, force, say=not as_json)
    reqs = [Request("dry", candidate, chosen, project=project, probe=iters, memory_limit_gib=memory_limit_gib,
                    quiet=as_json) for _, candidate in probes]
    stop = (lambda done: batch_search.should_stop([export_row(r) for r in done])) if auto else (lambda done: False)
    if _on_cloud(config, local):  # one cluster for the whole sweep
        from nanolaunch.backends import skypilot

        done = skypilot.sweep(reqs, stop=stop) if reqs else []
    else:
        done = []
        for r in reqs:
            done.append(run_local(r))
            if stop(done):
                break
    rows = [export_row(row) | {"grad_accum": (row["plan"] or {}).get("grad_accum")} for row in done]
    best = batch_search.best(rows)
    for r in rows:
        r["best"] = r is best
    if auto and not as_json:
        out.console().print(f"batch auto: probed {len(rows)} of {len(probes)} candidates that fit "
                            f"({', '.join(str(b) for b, _ in probes)}), largest first"
                            + (f"; stopped after {batch_search.PATIENCE} probes that were not "
                               f"{batch_search.tie(rows):.0%} faster" if len(rows) < len(probes) else ""))
    out.emit(rows, as_json, _profile)
    if save_preset is not None:
        if best is None:
            raise NanolaunchError("no probe finished ok: nothing to save as a preset")
        path = _save_best(save_preset, best, rows, chosen, config)
        out.console(stderr=True).print(f"saved batch {best['device_batch']} as preset {save_preset} ({path})")


def _batches(batch: str, config: RunConfig, auto: bool) -> list[int]:
    """The device batches to probe: those asked for, or with auto every one that divides the total batch."""
    if not auto:
        return parse_batches(batch) if batch else [config.train.device_batch]
    per_node = config.gpus_per_node  # probes run on one node
    batches = batch_search.candidates(config.train.total_batch, config.train.seq_len, per_node)
    if not batches:
        raise NanolaunchError(f"--batch auto: total batch {config.train.total_batch:,} is not a whole number of "
                              f"sequences per GPU ({config.train.seq_len:,} tokens × {per_node} GPU)")
    return batches


def _fitting(batches: list[int], config: RunConfig, chosen, iters: int, memory_limit_gib: float | None,
             force: bool, say: bool) -> list[tuple[int, RunConfig]]:
    """The probes worth paying for: each batch planned first, those predicted not to fit refused (--force
    probes them anyway), before anything is spent."""
    probes, refused = [], []
    for b in batches:
        candidate = config.replace(device_batch=b, iterations=iters, ratio=None, target_flops=None)
        try:
            p = derived(candidate, chosen, probe=True)
        except PlanError as e:
            raise NanolaunchError(f"batch {b}: {e}") from None
        limit = memory_limit_gib if memory_limit_gib is not None else p["usable_memory_gib"]
        fits = p["peak_memory_gib"] <= limit
        if say:
            out.console().print(f"batch {b}: predicted peak {p['peak_memory_gib']:.2f} GiB of {limit:.2f} GiB usable"
                                f" → {'fits' if fits else 'does not fit'}; grad accum {p['grad_accum']}")
        if fits or force:
            probes.append((b, candidate))
        else:
            refused.append(b)
    if refused and not probes:  # nothing left to probe: say what would run, not an empty table
        from nanolaunch.search import largest_batch

        fitting = largest_batch(config, "probe first")
        hint = f"--batch {fitting} (the largest predicted to fit) or " if fitting else ""
        raise NanolaunchError(f"batch {', '.join(map(str, refused))} predicted not to fit on {config.gpu}: try "
                              f"{hint}--batch auto; --force probes it anyway")
    for b in refused:
        out.warn(f"batch {b} predicted not to fit: not probed (--force probes it anyway)")
    return probes


def _save_best(name: str, best: dict, rows: list[dict], chosen, config: RunConfig):
    """A preset derived from the probed one, with the winning batch and what its probe measured."""
    import datetime

    results = {k: best[k] for k in events.Result.preset_fields() if best.get(k) is not None}  # what its probe measured
    probes = ", ".join(f"#{r['id']} b{r['device_batch']} {r['status']}" for r in rows)
    provenance = {"source": f"nanolaunch dry --batch on {best['gpu_count'] or 1}×{best['gpu']}: probes {probes}",
                  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if chosen is not None:  # derived from its preset: only the batch changes
        text = f'base = "{chosen.name}"\n' + presets.to_toml(f"{chosen.name} with the batch its probes chose",
                                                              {"device_batch": best["device_batch"]}, provenance, results)
    else:
        text = presets.to_toml(f"d{config.train.depth} with the batch its probes chose",
                               config.replace(device_batch=best["device_batch"]).to_dict(), provenance, results)
    return presets.write(name, text)


def _profile(rows: list[dict]) -> None:
    t = out.table("config", "MFU", "step", "grad accum", "peak memory", "tokens/s", "outcome", "#",
                  title="hardware profile")
    for r in rows:
        outcome = "best" if r["best"] else ("works" if r["status"] == "ok" else r["status"])
        t.add_row(f"d{r['depth']} batch {r['device_batch']}", out.pct(r["mfu"]),
                  f"{out.num(r['step_ms'])} ms" if r["step_ms"] else "—", str(r["grad_accum"]),
                  f"{r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] else "—",
                  out.num(r["tokens_per_second"]), outcome, str(r["id"]))
    out.console().print(t)
