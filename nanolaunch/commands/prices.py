"""`nanolaunch prices`: the GPU table and the cheapest node of each kind, with the price source."""
from __future__ import annotations

from nanolaunch import gpus, output as out, prices as price_data
from nanolaunch.commands.common import JsonOpt


def prices(as_json: JsonOpt = False) -> None:
    """Show each GPU's memory and peak bf16, and the cheapest 1- and 8-GPU node on-demand and spot."""
    rows = []
    for gpu in gpus.GPUS.values():
        for count in (1, 8):
            offer, spot = price_data.cheapest(gpu.name, count, price_data.needs(nodes=1))
            rows.append({"gpu": gpu.name, "description": gpu.description, "memory_gib": gpu.memory_gib,
                         "peak_bf16_tflops": gpu.peak_bf16_tflops, "count": count,
                         "usd_per_hour": offer.usd_per_hour if offer else None,
                         "offer": offer.label if offer else None,
                         "spot_usd_per_hour": spot.spot_usd_per_hour if spot else None,
                         "spot_offer": f"{spot.cloud} {spot.instance_type} ({spot.spot_region})" if spot else None,
                         "source": (offer or spot).source if (offer or spot) else None})
    out.emit(rows, as_json, _render)


def _render(rows: list[dict]) -> None:
    t = out.table("GPU", "memory", "peak bf16", "count", "$/h on-demand", "where", "$/h spot", "where")
    for r in rows:
        t.add_row(r["gpu"], f"{r['memory_gib']:g} GiB", f"{r['peak_bf16_tflops']:g} TFLOP/s", str(r["count"]),
                  out.usd(r["usd_per_hour"]), r["offer"] or "—", out.usd(r["spot_usd_per_hour"]), r["spot_offer"] or "—")
    c = out.console()
    c.print(t)
    sources = sorted({r["source"] for r in rows if r["source"]})
    c.print("source: " + ("; ".join(sources) if sources else "no price data"))
    c.print("cpu: peak unknown (MFU is never guessed on a CPU); local runs cost NANOLAUNCH_LOCAL_USD_PER_HOUR, default 0")
