"""`nanolaunch plan`: every derived number of a run before a cent is spent."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nanolaunch import output as out
from nanolaunch.commands.common import (BatchOpt, DataOpt, DataSplitOpt, GpuOpt, InfraOpt, IterationsOpt, JsonOpt,
                                        MaxCostOpt, MaxHoursOpt, ModelArg, NodesOpt, PresetOpt, RatioOpt, SpotOpt,
                                        SeqOpt, TextColumnOpt, TotalBatchOpt, ValueEmbeddingsOpt, VocabOpt,
                                        check_limits, fixed_by, resolve)
from nanolaunch import calibration, disk, search
from nanolaunch.planner import plan as make_plan


def plan(
    model: ModelArg = None,
    preset: PresetOpt = None,
    depth: Annotated[Optional[int], typer.Option(help="Model depth (layers).")] = None,
    ratio: RatioOpt = None,
    iterations: IterationsOpt = None,
    gpu: GpuOpt = None,
    infra: InfraOpt = None,
    nodes: NodesOpt = None,
    batch: BatchOpt = None,
    seq: SeqOpt = None,
    total_batch: TotalBatchOpt = None,
    vocab: VocabOpt = None,
    value_embeddings: ValueEmbeddingsOpt = None,
    data: DataOpt = None,
    data_split: DataSplitOpt = None,
    text_column: TextColumnOpt = None,
    shards: Annotated[Optional[int], typer.Option(help="Data shards to fetch (train + 1 validation).")] = None,
    mfu: Annotated[Optional[float], typer.Option(help="Assume this MFU (0-1) for step time.")] = None,
    spot: SpotOpt = None,
    max_cost: MaxCostOpt = None,
    max_hours: MaxHoursOpt = None,
    budget: Annotated[Optional[float], typer.Option(
        "--budget", help="What can I train for this many $? Chooses the model and ratio too (give no dN).")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="With --budget: write the scaling fit, its points and the choice to this PNG.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print every derived number of a run: shape, FLOPs, horizon, batch, data, memory, time and cost.

    Without --gpu and --batch (and without a preset) the plan searches for the GPU, GPUs per node, nodes and
    batch: the cheapest config that fits on the clouds SkyPilot has enabled, and the alternatives."""
    check_limits(max_cost, max_hours, budget=budget)
    if plot is not None:
        out.check_output_path(plot, "--plot")
    if budget is not None or plot is not None:
        chosen_elsewhere = {"a model (dN)": model, "--preset": preset, "--ratio": ratio, "--iterations": iterations,
                            "--gpu": gpu, "--batch": batch, "--max-cost": max_cost}
        return _budget(budget, plot, conflicting=chosen_elsewhere, max_hours=max_hours, mfu=mfu, as_json=as_json,
                       overrides=dict(infra=infra, nodes=nodes, seq_len=seq, total_batch=total_batch,
                                      vocab_size=vocab, value_embeddings=value_embeddings, spot=spot, data=data,
                                      data_split=data_split, text_column=text_column))
    config, chosen = resolve(model, preset, infra=infra, depth=depth, ratio=ratio, iterations=iterations, gpu=gpu, nodes=nodes,
                             device_batch=batch, seq_len=seq, total_batch=total_batch, vocab_size=vocab,
                             value_embeddings=value_embeddings,
                             shards=shards, spot=spot, data=data, data_split=data_split,
                             text_column=text_column)
    rows = calibration.ledger_rows()
    settled = search.settle(config, fixed_by(gpu, batch, nodes, chosen, config), searchable=not config.on_cpu
                            and not config.slurm, mfu=mfu, max_cost=max_cost, max_hours=max_hours,
                            **measured_kw(config, chosen, rows))
    config = settled.config
    measured, measured_from = calibration.measured_for(config, chosen, rows, calibrate=mfu is None)
    result = make_plan(config, mfu=mfu, measured=measured, measured_from=measured_from,
                       memory_measured=calibration.measured_memory(rows, config))
    result["preset"] = chosen.name if chosen else None
    result["config"] = config.to_dict()
    result["search"] = settled.as_dict()
    result["past_predictions"] = calibration.track_record(rows, result["preset"], result["gpu"])
    for w in result["warnings"]:
        out.warn(w)
    out.emit(result, as_json, render)


def _budget(budget: float | None, plot: Path | None, *, conflicting: dict, max_hours: float | None,
            mfu: float | None, as_json: bool, overrides: dict) -> None:
    """What `budget` dollars buy: the model, the config and a predicted val_bpb (nanolaunch/budget.py)."""
    from nanolaunch import budget as budgets, scaling
    from nanolaunch.errors import NanolaunchError

    given = [flag for flag, value in conflicting.items() if value is not None]
    if budget is None:
        raise NanolaunchError("--plot draws the scaling fit of --budget: give --budget USD")
    if given:
        raise NanolaunchError(f"--budget chooses the model, its horizon and the config: drop {', '.join(given)}")
    base, _ = resolve("d12", None, **overrides)
    if base.on_cpu or base.slurm:
        raise NanolaunchError("--budget searches cloud GPUs; it cannot plan for a CPU or a Slurm cluster")
    try:
        answer = budgets.for_budget(base, budget, max_hours=max_hours, mfu=mfu, rows=calibration.ledger_rows())
    except ValueError as e:
        raise NanolaunchError(f"--budget: {e}") from None
    config = answer.pop("config")
    answer["plan"] = make_plan(config, mfu=mfu)
    answer["config"] = config.to_dict()
    if plot is not None:
        c = answer["chosen"]
        scaling.write_plot(answer["points"], scaling.fit(answer["points"]),
                           {"flops": c["flops"], "val_bpb": c["predicted_val_bpb"],
                            "label": f"${budget:,.0f}: d{c['depth']} ratio {c['ratio']:g}"}, plot)
        out.console(stderr=True).print(f"wrote {plot}")
    out.emit(answer, as_json, render_budget)


def render_budget(b: dict) -> None:
    c, x, p, fit = out.console(), b["chosen"], b["plan"], b["fit"]
    nodes = f"{x['nodes']} nodes of " if x["nodes"] > 1 else ""
    limit = f" within {out.hours(b['max_hours'])}" if b["max_hours"] else ""
    c.print(f"[bold]budget {out.usd(b['budget_usd'])}{limit}[/]: d{x['depth']} at ratio {x['ratio']:g}  [dim]· "
            f"{p['params']:,} params, {out.num(p['tokens'])} tokens, {out.sci(x['flops'])} FLOPs; {b['why']}[/]")
    c.print(f"config       {nodes}{x['spec'].replace(':', ' × ')} GPUs, device batch {x['device_batch']}  [dim]· "
            f"{p['price_source']}[/]")
    c.print(f"wall time    {out.hours(p['wall_hours'])}  [dim]· MFU {out.pct(p['mfu'])} ({p['mfu_source']})[/]")
    c.print(f"cost         {out.usd(p['cost_usd'])} of {out.usd(b['budget_usd'])}")
    c.print(f"val_bpb      {b['predicted_val_bpb']:.3f} predicted ± {b['loo_error']:.1%}  [dim]· {fit['formula']}, "
            f"fitted to {fit['points']} runs at {fit['budgets']} compute budgets "
            f"({sum(1 for q in b['points'] if q['kind'] == 'ledger')} from this ledger); ± is the leave-one-out "
            f"error (each budget predicted without its own runs)"
            + ("; [yellow]outside the fitted range: an extrapolation[/]" if b["extrapolated"] else "") + "[/]")
    t = out.table("model", "ratio", "FLOPs", "config", "wall", "cost", "val_bpb predicted",
                  title="the choice, then the most compute each other depth buys")
    for a in b["alternatives"]:
        t.add_row(f"d{a['depth']}", f"{a['ratio']:g}", out.sci(a["flops"]),
                  (f"{a['nodes']}×" if a["nodes"] > 1 else "") + f"{a['spec']} b{a['device_batch']}",
                  out.hours(a["wall_hours"]), out.usd(a["cost_usd"]), f"{a['predicted_val_bpb']:.3f}")
    c.print()
    c.print(t)


def measured_kw(config, chosen, rows) -> dict:
    """The ledger's (or the preset's) measurement of the config's GPU kind, for the search's timing."""
    if config.on_cpu:
        return {}
    measured, source = calibration.measured_for(config, chosen, rows)
    return {"measured": measured, "measured_from": source}


def render(p: dict) -> None:
    c = out.console()
    title = f"plan: d{p['depth']}" + (f" (preset {p['preset']})" if p["preset"] else "")
    within = p["search"]["within"]
    if p["search"]["searched"]:
        c.print(f"[bold]chosen[/]: {_describe(within['chosen'])} — {within['why']}")
    c.print(f"[bold]{title}[/] on {p['nodes']} node(s) of {p['gpus_per_node']}×{p['gpu']} ({p['gpu_description']})")
    for line in _summary(p):
        c.print(line)
    c.print()
    c.print(_memory_table(p["memory"]))
    if p.get("past_predictions"):
        c.print()
        c.print(_past_predictions(p["past_predictions"]))
    overall = p["search"]["overall"]
    if overall and overall["alternatives"]:
        c.print()
        render_alternatives(overall, p)


def _summary(p: dict) -> list[str]:
    """Every derived number of the plan, one line each, with where it comes from."""
    lines = []

    def row(key: str, value: str, note: str = "") -> None:
        lines.append(f"{key:<12} {value}" + (f"  [dim]· {note}[/]" if note else ""))

    row("model", f"depth {p['depth']} · model_dim {p['model_dim']} · {p['n_heads']} heads × {p['head_dim']} · "
        f"vocab {p['vocab_size']:,} · seq {p['seq_len']:,}", "")
    value_embeds = p.get("value_embed_params")  # only with value embeddings (ModelShape.as_dict)
    row("parameters", out.num(p["params"]),
        f"embedding {p['embedding_params']:,} + head {p['embedding_params']:,} + blocks {p['matrix_params']:,}"
        + (f" + value embeddings {value_embeds:,}" if value_embeds else ""))
    left_out = "embedding − value embeddings" if value_embeds else "embedding"
    row("FLOPs/token", out.num(p["flops_per_token"]), f"6·(params − {left_out}) + 12·L·heads·head_dim·T")
    row("horizon", f"{p['iterations']:,} iterations × {p['total_batch']:,} tokens",
        f"{out.num(p['tokens'])} tokens = {p['tokens_per_param']:.1f} tokens/param")
    row("total FLOPs", out.sci(p["total_flops"]), "")
    row("batch", f"{p['device_batch']} × {p['seq_len']:,} × {p['world_size']} GPU × accum {p['grad_accum']}",
        f"= {p['total_batch']:,} tokens per step")
    _data_rows(p, row)
    m = p["memory"]
    colour = {"fits": "green", "probe first": "yellow", "does not fit": "red"}[p["verdict"]]
    span = (f"{p['peak_memory_gib']:.1f}" if p["peak_memory_high_gib"] == p["peak_memory_gib"] else
            f"{p['peak_memory_gib']:.1f}–{p['peak_memory_high_gib']:.1f}")
    row("peak memory", f"{span} GiB of {p['gpu_memory_gib']:g} GiB: [{colour}]{p['verdict']}[/]"
        + ("" if p["verdict_source"].startswith("memory model") else f" ({p['verdict_source']})"),
        f"usable {m['usable_gib']:.1f} GiB at {m['headroom']:.0%} headroom; {m['breakdown']}")
    peak = "unknown peak" if p["peak_flops"] is None else f"{p['peak_flops'] / 1e12:g} TFLOP/s bf16 × {p['world_size']}"
    row("MFU", out.pct(p["mfu"]), f"{p['mfu_source']}; denominator {peak}")
    row("step time", out.seconds(p["step_seconds"]), f"{p['evals']} evals take {out.seconds(p['eval_seconds'])}")
    row("wall time", out.hours(p["wall_hours"]),
        "training + evaluation, excluding setup" if p["startup_seconds"] is None
        else f"training + evaluation + {out.seconds(p['startup_seconds'])} start-up as measured")
    uses = "  (this run)"
    row("price", f"{out.usd(p['usd_per_hour_on_demand'])}/h on demand" + ("" if p["spot"] else uses),
        p["price_source_on_demand"])
    if p["price_source_spot"]:
        row("spot", f"{out.usd(p['usd_per_hour_spot'])}/h" + (uses if p["spot"] else ""), p["price_source_spot"])
    row("cost", f"{out.usd(p['cost_usd'])} on-demand · {out.usd(p['cost_usd_spot'])} spot", "")
    d, disk_floor = p["disk"], disk.FLOOR_GB
    row("disk", f"{d['disk_size_gb']:,} GB per node" + ("" if d["asked"] else " (asked of a cloud only)"),
        " + ".join(f"{x['term']} {x['gb']:,.0f}" for x in d["terms"]) + f" GB, + {d['margin']:.0%} margin, at "
        f"least SkyPilot's default {disk_floor} GB; the bucket mount's cache is bounded to {d['cache_gb']} GB")
    return lines


def _data_rows(p: dict, row) -> None:
    if p["shards"] is not None:
        repeats = (f"the data repeats: {p['epochs']:.2f} epochs at 5.0 chars/token" if p["epochs"] > 1 else
                   f"these repeat data above {p['repeat_above_chars_per_token']:.2f} chars/token")
        row("data", f"{p['shards']} of {p['dataset_files']:,} shards ({p['shards'] - 1} train + 1 val) of "
            f"{p['config']['data']}",
            f"one epoch needs {p['train_shards']:,} train shards at 5.0 chars/token and "
            f"{p['chars_per_shard']:,.0f} chars per shard ({p['chars_from']}); {repeats}")
    else:
        row("data", p["config"]["data"], "")
    tok = p["tokenizer"]
    if tok and tok["reused"]:
        row("tokenizer", f"reused: {tok['path']}", "trained by an earlier run on this data, vocabulary and budget")
    elif tok:
        files = f" (the first {tok['files']:,} files)" if tok["files"] else ""
        row("tokenizer", f"trained before step 0 on ≤{tok['chars']:,} chars{files}",
            f"kept in the store as {tok['name']}: later runs on this data reuse it")


def _memory_table(m: dict):
    t = out.table("term", "GiB", "kind", "source",
                  title=f"memory per GPU (rank 0 of {m['world_size']}), at the larger of the two peaks: end of the "
                        f"forward pass {m['forward_gib']:.2f} GiB, optimizer step {m['step_gib']:.2f} GiB")
    for term in m["terms"]:
        t.add_row(term["term"], f"{term['gib']:.2f}", term["kind"], term["source"])
    t.add_row("total (counted)", f"{m['total_gib']:.2f}", "", f"usable {m['usable_gib']:.1f} GiB = "
              f"{100 * (1 - m['headroom']):.0f}% of {m['device_memory_gib']:g} GiB")
    if m["excess_gib"]:
        t.add_row("+ unexplained", f"{m['excess_gib']:.2f}", "assumed", m["excess_source"])
        t.add_row("high end", f"{m['high_gib']:.2f}", "", f"verdict: {m['verdict']} (fits: the high end fits; "
                  "probe first: only the counted peak does)")
    return t


def _past_predictions(rows: list[dict]):
    t = out.table("#", "kind", "wall predicted", "measured", "error", "cost predicted", "measured", "error",
                  "memory predicted", "measured", "error", title="past predictions against measurements")
    for r in rows:
        t.add_row(str(r["id"]), r["kind"], out.seconds(r["wall_predicted_s"]), out.seconds(r["wall_s"]),
                  _signed(r["wall_error"]), out.usd(r["cost_predicted_usd"]), out.usd(r["cost_usd"]),
                  _signed(r["cost_error"]), f"{out.num(r['memory_predicted_gib'], 2)} GiB",
                  f"{out.num(r['memory_gib'], 2)} GiB", _signed(r["memory_error"]))
    return t


def _describe(x: dict) -> str:
    nodes = f"{x['nodes']} nodes of " if x["nodes"] > 1 else ""
    return f"{nodes}{x['per_node']}×{x['gpu']}, device batch {x['device_batch']}"


def render_alternatives(overall: dict, p: dict | None = None) -> None:
    """The cost/time frontier of configs that fit, cheapest first, and where each figure comes from."""
    t = out.table("", "config", "nodes", "batch", "peak / usable", "MFU", "wall", "$/h", "cost", "node",
                  title=f"configs that fit, cheapest first ({overall['fitting']} of {overall['considered']} priced "
                        f"node shapes fit; prices: {overall['clouds']})")
    for x in overall["alternatives"]:
        mine = p is not None and (x["spec"], x["nodes"], x["device_batch"]) == (
            f"{p['gpu']}:{p['gpus_per_node']}", p["nodes"], p["device_batch"])
        t.add_row(("→ " if mine else "") + x["role"], f"{x['per_node']}×{x['gpu']}", str(x["nodes"]), str(x["device_batch"]),
                  f"{x['peak_memory_gib']:.0f}–{x['peak_memory_high_gib']:.0f} / {x['usable_memory_gib']:.0f} GiB"
                  + ("" if x["verdict"] == "fits" else f" ({x['verdict']})"), out.pct(x["mfu"]),
                  out.hours(x["wall_hours"]), out.usd(x["usd_per_hour"]), out.usd(x["cost_usd"]),
                  x["price_source"].split(",")[0])
    c = out.console()
    c.print(t)
    for gpu, source in sorted({(x["gpu"], x["mfu_source"]) for x in overall["alternatives"]}):
        c.print(f"  [dim]MFU {gpu}: {source}[/]")
    c.print("  [dim]memory: nanolaunch/memory.py (docs/memory.md); wall: total FLOPs ÷ (MFU × peak × GPUs); "
            "several nodes are assumed to keep one node's MFU[/]")


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.0f}%"
