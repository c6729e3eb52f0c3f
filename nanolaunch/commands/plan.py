"""`nanolaunch plan`: every derived number of a run before a cent is spent."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nanolaunch import output as out
from nanolaunch.commands.common import (BatchOpt, DataOpt, DataSplitOpt, GpuOpt, InfraOpt, IterationsOpt, JsonOpt,
                                        ModelArg, NodesOpt, PresetOpt, RatioOpt, SpotOpt, TextColumnOpt, resolve)
from nanolaunch import calibration
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
    seq: Annotated[Optional[int], typer.Option("--seq", help="Sequence length.")] = None,
    total_batch: Annotated[Optional[int], typer.Option(help="Tokens per optimizer step.")] = None,
    vocab: Annotated[Optional[int], typer.Option("--vocab", help="Vocabulary size.")] = None,
    data: DataOpt = None,
    data_split: DataSplitOpt = None,
    text_column: TextColumnOpt = None,
    shards: Annotated[Optional[int], typer.Option(help="Data shards to fetch (train + 1 validation).")] = None,
    mfu: Annotated[Optional[float], typer.Option(help="Assume this MFU (0-1) for step time.")] = None,
    spot: SpotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print every derived number of a run: shape, FLOPs, horizon, batch, data, memory, time and cost."""
    config, chosen = resolve(model, preset, infra=infra, depth=depth, ratio=ratio, iterations=iterations, gpu=gpu, nodes=nodes,
                             device_batch=batch, seq_len=seq, total_batch=total_batch, vocab_size=vocab,
                             shards=shards, spot=spot, data=data, data_split=data_split,
                             text_column=text_column)
    rows = calibration.ledger_rows()
    measured, measured_from = calibration.measured_for(config, chosen, rows, calibrate=mfu is None)
    result = make_plan(config, mfu=mfu, measured=measured, measured_from=measured_from)
    result["preset"] = chosen.name if chosen else None
    result["config"] = config.to_dict()
    result["past_predictions"] = calibration.track_record(rows, result["preset"], result["gpu"])
    for w in result["warnings"]:
        out.warn(w)
    out.emit(result, as_json, render)


def render(p: dict) -> None:
    c = out.console()
    lines = []

    def row(key: str, value: str, note: str = "") -> None:
        lines.append(f"{key:<12} {value}" + (f"  [dim]· {note}[/]" if note else ""))

    title = f"plan: d{p['depth']}" + (f" (preset {p['preset']})" if p["preset"] else "")
    row("model", f"depth {p['depth']} · model_dim {p['model_dim']} · {p['n_heads']} heads × {p['head_dim']} · "
        f"vocab {p['vocab_size']:,} · seq {p['seq_len']:,}", "")
    row("parameters", out.num(p["params"]),
        f"embedding {p['embedding_params']:,} + head {p['embedding_params']:,} + blocks {p['matrix_params']:,}")
    row("FLOPs/token", out.num(p["flops_per_token"]), "6·(params − embedding) + 12·L·heads·head_dim·T")
    row("horizon", f"{p['iterations']:,} iterations × {p['total_batch']:,} tokens",
        f"{out.num(p['tokens'])} tokens = {p['tokens_per_param']:.1f} tokens/param")
    row("total FLOPs", out.sci(p["total_flops"]), "")
    row("batch", f"{p['device_batch']} × {p['seq_len']:,} × {p['world_size']} GPU × accum {p['grad_accum']}",
        f"= {p['total_batch']:,} tokens per step")
    if p["shards"] is not None:
        repeats = (f"the data repeats: {p['epochs']:.2f} epochs at 5.0 chars/token" if p["epochs"] > 1 else
                   f"these repeat data above {p['repeat_above_chars_per_token']:.2f} chars/token")
        row("data", f"{p['shards']} of {p['dataset_files']:,} shards ({p['shards'] - 1} train + 1 val) of "
            f"{p['config']['data']}",
            f"one epoch needs {p['train_shards']:,} train shards at 5.0 chars/token and "
            f"{p['chars_per_shard']:,.0f} chars per shard ({p['chars_from']}); {repeats}")
    else:
        row("data", p["config"]["data"], "")
    m = p["memory"]
    row("peak memory", f"{p['peak_memory_gib']:.1f} GiB of {p['gpu_memory_gib']:g} GiB: "
        + ("[green]fits[/]" if p["fits"] else "[red]does not fit[/]"),
        f"usable {m['usable_gib']:.1f} GiB at {m['headroom']:.0%} headroom; {m['breakdown']}")
    peak = "unknown peak" if p["peak_flops"] is None else f"{p['peak_flops'] / 1e12:g} TFLOP/s bf16 × {p['world_size']}"
    row("MFU", out.pct(p["mfu"]), f"{p['mfu_source']}; denominator {peak}")
    row("step time", out.seconds(p["step_seconds"]), f"{p['evals']} evals take {out.seconds(p['eval_seconds'])}")
    row("wall time", out.hours(p["wall_hours"]),
        "training + evaluation, excluding setup" if p["startup_seconds"] is None
        else f"training + evaluation + {out.seconds(p['startup_seconds'])} start-up as measured")
    row("price", f"{out.usd(p['usd_per_hour'])}/h" + (" spot" if p["spot"] else ""), p["price_source"])
    row("cost", f"{out.usd(p['cost_usd'])} on-demand · {out.usd(p['cost_usd_spot'])} spot", "")
    c.print(f"[bold]{title}[/] on {p['nodes']} node(s) of {p['gpus_per_node']}×{p['gpu']} ({p['gpu_description']})")
    for line in lines:
        c.print(line)
    m = p["memory"]
    t = out.table("term", "GiB", "kind", "source",
                  title=f"memory per GPU (rank 0 of {m['world_size']}), at the larger of the two peaks: end of the "
                        f"forward pass {m['forward_gib']:.2f} GiB, optimizer step {m['step_gib']:.2f} GiB")
    for term in m["terms"]:
        t.add_row(term["term"], f"{term['gib']:.2f}", term["kind"], term["source"])
    t.add_row("total", f"{m['total_gib']:.2f}", "", f"{'fits' if m['fits'] else 'does not fit'}: usable "
              f"{m['usable_gib']:.1f} GiB = {100 * (1 - m['headroom']):.0f}% of {m['device_memory_gib']:g} GiB")
    c.print()
    c.print(t)
    if p.get("past_predictions"):
        t = out.table("#", "kind", "wall predicted", "measured", "error", "cost predicted", "measured", "error",
                      "memory predicted", "measured", "error", title="past predictions against measurements")
        for r in p["past_predictions"]:
            t.add_row(str(r["id"]), r["kind"], out.seconds(r["wall_predicted_s"]), out.seconds(r["wall_s"]),
                      _signed(r["wall_error"]), out.usd(r["cost_predicted_usd"]), out.usd(r["cost_usd"]),
                      _signed(r["cost_error"]), f"{out.num(r['memory_predicted_gib'], 2)} GiB",
                      f"{out.num(r['memory_gib'], 2)} GiB", _signed(r["memory_error"]))
        c.print()
        c.print(t)
    if p.get("ranking"):
        r = out.table("GPU", "fits", "peak mem", "wall", "$/h", "cost", "spot cost",
                      title="GPU choices, cheapest first")
        for g in p["ranking"]:
            r.add_row(g["gpu"], "yes" if g["fits"] else "[red]no[/]", f"{g['peak_memory_gib']:.1f} GiB",
                      out.hours(g["wall_hours"]), out.usd(g["usd_per_hour"]), out.usd(g["cost_usd"]),
                      out.usd(g["cost_usd_spot"]))
        c.print()
        c.print(r)


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.0f}%"
