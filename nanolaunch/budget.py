"""What can I train for $X? The model (depth and ratio), the config, and the val_bpb the scaling fit predicts.

Every even depth from 4 to 48 at ratios 10, 20 and 40 tokens per parameter (the published records are at 20
and 40; nanochat's later isoFLOP sweeps put the optimum near 10) goes through the search within the budget
(and --max-hours); the one with the most training compute wins, since the fit (nanolaunch/scaling.py) is in
compute alone. Ratio 20 wins ties within TIE of the best prediction. Depths grow until even ratio 10 is over the limits.
"""
from __future__ import annotations

from nanolaunch import scaling, search
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError

DEPTHS = range(4, 50, 2)
RATIOS = (10.0, 20.0, 40.0)  # ascending: the cost grows with the ratio, and with the depth
TIE = 0.005  # relative val_bpb


def for_budget(base: RunConfig, budget: float, *, max_hours: float | None = None, mfu: float | None = None,
               rows: list[dict] | None = None) -> dict:
    points = scaling.published() + scaling.from_ledger(rows or [], base.train.data, base.train.vocab_size)
    law = scaling.fit(points)
    options = []
    for depth in DEPTHS:
        for ratio in RATIOS:
            config = base.replace(depth=depth, ratio=ratio, iterations=None, target_flops=None)
            found = search.search(config, search.Fixed(nodes=base.nodes if base.nodes > 1 else None), mfu=mfu,
                                  max_cost=budget, max_hours=max_hours)
            if found.chosen is None:  # a larger ratio costs more still
                break
            flops = scaling.training_flops(config.train)
            options.append({"depth": depth, "ratio": ratio, "flops": flops, "val_bpb": law.predict(flops),
                            "search": found, "config": search.apply(config, found.chosen)})
        if not options or options[-1]["depth"] != depth:  # not even its smallest ratio: no larger depth either
            break
    if not options:
        raise NanolaunchError(f"nothing fits within ${budget:,.2f}" + (f" and {max_hours:g} h" if max_hours else "")
                              + f": the smallest model (d{DEPTHS[0]}) needs more")
    best = min(o["val_bpb"] for o in options)
    chosen = min((o for o in options if o["val_bpb"] <= best * (1 + TIE)),
                 key=lambda o: (o["ratio"] != 20.0, o["val_bpb"]))
    low, high = min(p["flops"] for p in points), max(p["flops"] for p in points)
    by_depth = {chosen["depth"]: chosen}
    for o in sorted(options, key=lambda o: -o["flops"]):
        by_depth.setdefault(o["depth"], o)
    return {
        "budget_usd": budget, "max_hours": max_hours, "chosen": _row(chosen), "config": chosen["config"],
        "predicted_val_bpb": chosen["val_bpb"], "loo_error": law.loo_error, "fit": law.as_dict(),
        "extrapolated": not low <= chosen["flops"] <= high, "points": points,
        "alternatives": [_row(o) for o in sorted(by_depth.values(), key=lambda o: (o is not chosen, -o["flops"]))][:6],
        "why": (f"the most training compute the budget buys among d{DEPTHS[0]}–d{DEPTHS[-1]} at ratios "
                f"{', '.join(f'{r:g}' for r in RATIOS)} ({len(options)} affordable); the fit is in compute alone, "
                f"so ratio 20 stands unless another buys more than {TIE:.1%} lower val_bpb"),
    }


def _row(o: dict) -> dict:
    c = o["search"].chosen
    return {"depth": o["depth"], "ratio": o["ratio"], "flops": o["flops"], "predicted_val_bpb": o["val_bpb"],
            **{k: v for k, v in c.as_dict().items() if k in ("spec", "nodes", "device_batch", "wall_hours",
                                                                "cost_usd", "usd_per_hour", "price_source", "fits")}}
