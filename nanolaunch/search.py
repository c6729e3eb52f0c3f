"""The search: which GPU, how many per node, how many nodes and which device batch a run should use.

Every GPU kind × GPUs per node (1, 2, 4, 8 where the catalog sells them) × nodes (1, 2, 4, 8) × device batch
(the powers of two that divide the total batch) is kept where the memory model says it fits, priced at the
node SkyPilot's optimizer would pick on the enabled clouds (planner.node_price), timed at the MFU the plan
assumes for that GPU, and ranked by cost and by wall time. Pure arithmetic: no torch, no SkyPilot call.

Within one node shape the model's wall time and cost do not depend on the device batch (the MFU is one figure
per GPU kind), so the largest batch that fits stands for it: larger micro-batches run the GPU closer to its
peak (the A100 d10 record: 53% at batch 16, 55% at 32).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from nanolaunch import gpus, output as out, planner, prices
from nanolaunch.config import RunConfig
from trainer.arithmetic import ShapeError, grad_accum_steps, iterations_for

PER_NODE = (1, 2, 4, 8)
NODES = (1, 2, 4, 8)
# Costs within this fraction of the cheapest count as a tie; a tie goes to fewer nodes (the MFU assumed for
# one node is unmeasured across nodes), then to the faster config.
TIE = 0.01


@dataclass(frozen=True)
class Fixed:
    """What the user fixed (a flag or a preset); None is searched."""
    gpu: str | None = None
    per_node: int | None = None
    nodes: int | None = None
    device_batch: int | None = None


@dataclass(frozen=True)
class Candidate:
    gpu: str
    per_node: int
    nodes: int
    device_batch: int
    grad_accum: int
    peak_memory_gib: float  # the counted peak (low end)
    peak_memory_high_gib: float  # with the largest unexplained excess of a published figure
    usable_memory_gib: float
    fits: bool  # the counted peak fits
    verdict: str  # fits (even the high end), probe first (only the counted peak), does not fit
    mfu: float | None
    mfu_source: str
    wall_hours: float | None
    usd_per_hour: float | None  # all nodes, at the rate the run would pay (spot for a spot run)
    cost_usd: float | None
    price_source: str

    @property
    def spec(self) -> str:
        return f"{self.gpu}:{self.per_node}"

    def describe(self) -> str:
        nodes = f"{self.nodes} nodes of " if self.nodes > 1 else ""
        return f"{nodes}{self.per_node}×{self.gpu} at device batch {self.device_batch}"

    def as_dict(self) -> dict:
        return {**asdict(self), "spec": self.spec, "world_size": self.per_node * self.nodes}


@dataclass(frozen=True)
class Search:
    chosen: Candidate | None
    why: str
    alternatives: list[tuple[str, Candidate]]  # (role, candidate): the choice, the fastest, the trade-offs
    # between them (the cost/time frontier) and the cheapest of each other GPU kind
    considered: int  # node shapes with a price
    fitting: int  # of those, where some batch fits
    clouds: str

    def as_dict(self) -> dict:
        return {"chosen": self.chosen.as_dict() if self.chosen else None, "why": self.why,
                "alternatives": [{"role": role, **c.as_dict()} for role, c in self.alternatives],
                "considered": self.considered,
                "fitting": self.fitting, "clouds": self.clouds}


def batches(config: RunConfig, world: int) -> list[int]:
    """Device batches, largest first, that split the total batch evenly over `world` GPUs (powers of two)."""
    t = config.train
    per_gpu = t.total_batch // (t.seq_len * world) if t.total_batch % (t.seq_len * world) == 0 else 0
    return [b for b in (2**k for k in range(per_gpu.bit_length() - 1, -1, -1)) if per_gpu % b == 0]


def shapes(config: RunConfig, fixed: Fixed) -> list[tuple[gpus.GPU, int, int]]:
    """(GPU, per node, nodes) to consider: the catalog's node sizes for every GPU with a known memory and peak."""
    kinds = [gpus.lookup(fixed.gpu)] if fixed.gpu else [g for g in gpus.GPUS.values() if g.peak_flops]
    found = []
    for gpu in kinds:
        counts = [fixed.per_node] if fixed.per_node else [n for n in prices.node_counts(gpu.name) if n in PER_NODE]
        for per_node in counts:
            for nodes in ([fixed.nodes] if fixed.nodes else NODES):
                found.append((gpu, per_node, nodes))
    return found


def candidates(config: RunConfig, fixed: Fixed, *, mfu: float | None = None, measured: dict | None = None,
               measured_from: str = "", clouds: prices.Clouds | None = None) -> list[Candidate]:
    """One candidate per node shape: at its largest batch whose verdict is "fits", else its largest "probe first"
    batch, else its smallest batch (kept so a refusal can say why); shapes without a price or without a whole
    batch are left out."""
    shape = config.shape
    try:
        iterations = iterations_for(shape.params, config.train.total_batch, flops_per_token=shape.flops_per_token,
                                    **config.train.horizon)
    except ShapeError as e:
        raise planner.PlanError(str(e)) from None
    n_evals = planner.count_evals(iterations, config.train.eval_every)
    clouds = clouds or planner.infra_clouds(config)
    found = []
    for gpu, per_node, nodes in shapes(config, fixed):
        world = per_node * nodes
        sizes = batches(config, world)  # each splits the total batch evenly
        if fixed.device_batch:  # the user's, not necessarily a power of two
            sizes = [fixed.device_batch] if _splits(config, fixed.device_batch, world) else []
        if not sizes:
            continue
        candidate = config.replace(gpu=f"{gpu.name}:{per_node}", nodes=nodes)
        price = planner.node_price(candidate, clouds)
        rate, source = ((price.spot_rate, price.spot_source) if config.spot
                        else (price.on_demand_rate, price.source))
        if rate is None:
            continue
        # a measurement (the ledger's, a preset's) is of the config's own GPU kind; others get their default
        same_kind = measured if gpu.name == config.accelerator.name else None
        tput = planner.throughput(candidate, gpu, mfu, same_kind, measured_from)
        *_, wall = planner.timing(candidate, tput, iterations, n_evals)
        estimates = [(b, planner.memory_for(candidate, b)) for b in sizes]
        sure = [(b, m) for b, m in estimates if m.verdict == "fits"]
        fitting = [(b, m) for b, m in estimates if m.fits]
        batch, mem = (sure or fitting or estimates[-1:])[0]
        found.append(Candidate(
            gpu.name, per_node, nodes, batch, config.train.total_batch // (batch * config.train.seq_len * world),
            mem.total_gib, mem.high_gib, mem.usable_gib, mem.fits, mem.verdict, tput.mfu, tput.source, wall, rate,
            None if wall is None else wall * rate, source))
    return found


def _splits(config: RunConfig, device_batch: int, world: int) -> bool:
    """A batch the user fixed (not necessarily a power of two) splits the total batch evenly over `world`."""
    try:
        grad_accum_steps(config.train.total_batch, device_batch, config.train.seq_len, world)
    except ShapeError:
        return False
    return True


def choose(found: list[Candidate], *, max_cost: float | None = None, max_hours: float | None = None,
           clouds: str = "") -> Search:
    """The cheapest candidate that fits within the limits (near-ties: fewer nodes, then faster), and the
    cost/time frontier around it."""
    timed = [c for c in found if c.cost_usd is not None]
    fits = [c for c in timed if c.fits]
    allowed = [c for c in fits if (max_cost is None or c.cost_usd <= max_cost)
               and (max_hours is None or c.wall_hours <= max_hours)]
    within = [c for c in allowed if c.verdict == "fits"] or allowed  # "probe first" only where nothing is sure
    if not within:
        return Search(None, _none_why(timed, fits, max_cost, max_hours),
                      [("trade-off", c) for c in _frontier(fits)], len(timed), len(fits), clouds)
    cheapest = min(c.cost_usd for c in within)
    chosen = min((c for c in within if c.cost_usd <= cheapest * (1 + TIE)),
                 key=lambda c: (c.nodes, c.wall_hours, c.per_node))
    fastest = min(within, key=lambda c: (c.wall_hours, c.cost_usd))
    frontier = _frontier(within)
    limits = "".join([f", within --max-cost {out.usd(max_cost)}" if max_cost is not None else "",
                      f", within --max-hours {max_hours:g}" if max_hours is not None else ""])
    sure = chosen.verdict == "fits"
    why = (f"cheapest of {len(within)} node shapes that {'fit' if sure else 'fit only at the counted peak'}{limits} "
           f"(of {len(timed)} priced on {clouds}); device batch {chosen.device_batch} is the largest that "
           f"{'fits' if sure else 'might'} ({chosen.peak_memory_gib:.1f}–{chosen.peak_memory_high_gib:.1f} of "
           f"{chosen.usable_memory_gib:.1f} GiB usable)" + ("" if sure else "; nothing fits at the high end: "
                                                             "probe first (`nanolaunch dry`)")
           + f"; timed at MFU {out.pct(chosen.mfu)} ({chosen.mfu_source})")
    if chosen is not fastest:
        why += f"; fastest: {fastest.describe()}, {out.hours(fastest.wall_hours)} for {out.usd(fastest.cost_usd)}"
    return Search(chosen, why, _alternatives(within, frontier, chosen, fastest), len(timed), len(fits), clouds)


def _alternatives(within: list[Candidate], frontier: list[Candidate], chosen: Candidate,
                  fastest: Candidate) -> list[tuple[str, Candidate]]:
    """(role, candidate), cheapest first: the choice, the fastest, the trade-offs between them, and the
    cheapest of every other GPU kind."""
    roles = {id(chosen): "chosen", id(fastest): "fastest"}
    for c in frontier:
        roles.setdefault(id(c), "trade-off")
    for gpu in {c.gpu for c in within}:
        best = min((c for c in within if c.gpu == gpu), key=lambda c: (c.cost_usd, c.nodes, c.wall_hours))
        roles.setdefault(id(best), f"cheapest {gpu}")
    picked = [c for c in within if id(c) in roles]
    return [(roles[id(c)], c) for c in sorted(picked, key=lambda c: (c is not chosen, c.cost_usd, c.wall_hours))]


def _frontier(found: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both cost and wall time, cheapest first."""
    best = []
    for c in sorted(found, key=lambda c: (c.cost_usd, c.wall_hours, c.nodes)):
        if not best or c.wall_hours < best[-1].wall_hours:
            best.append(c)
    return best


def _none_why(timed: list[Candidate], fits: list[Candidate], max_cost: float | None, max_hours: float | None) -> str:
    if not timed:
        return "no node shape has both a price and a known throughput"
    if not fits:
        nearest = min(timed, key=lambda c: c.peak_memory_gib / c.usable_memory_gib)
        return (f"nothing fits: the smallest need is {nearest.peak_memory_gib:.1f} GiB per GPU on "
                f"{nearest.describe()} ({nearest.usable_memory_gib:.1f} GiB usable)")
    cheapest, fastest = min(fits, key=lambda c: c.cost_usd), min(fits, key=lambda c: c.wall_hours)
    return (f"no config that fits is within the limits: the cheapest is {cheapest.describe()} "
            f"({out.usd(cheapest.cost_usd)}, {out.hours(cheapest.wall_hours)}), the fastest {fastest.describe()} "
            f"({out.usd(fastest.cost_usd)}, {out.hours(fastest.wall_hours)})")


def search(config: RunConfig, fixed: Fixed, *, mfu: float | None = None, measured: dict | None = None,
           measured_from: str = "", max_cost: float | None = None, max_hours: float | None = None) -> Search:
    clouds = planner.infra_clouds(config)
    found = candidates(config, fixed, mfu=mfu, measured=measured, measured_from=measured_from, clouds=clouds)
    return choose(found, max_cost=max_cost, max_hours=max_hours, clouds=clouds.note)


def apply(config: RunConfig, chosen: Candidate) -> RunConfig:
    return config.replace(gpu=chosen.spec, nodes=chosen.nodes, device_batch=chosen.device_batch)


def largest_batch(config: RunConfig, verdict: str = "fits") -> int | None:
    """The largest device batch that splits the total batch evenly and whose verdict on this config's GPUs is
    `verdict` (fits: even at the high end; probe first: at the counted peak); None: none."""
    ok = ("fits",) if verdict == "fits" else ("fits", "probe first")
    return next((b for b in batches(config, config.world_size) if planner.memory_for(config, b).verdict in ok), None)


@dataclass(frozen=True)
class Settled:
    """The config a command goes on with, and the searches behind it."""
    config: RunConfig
    within: Search | None  # within what the user fixed (None: nothing was searched: a CPU or a Slurm run)
    overall: Search | None  # with nothing fixed: the alternatives, and the cheapest config that fits
    searched: bool  # the config is the search's choice, not the user's

    def as_dict(self) -> dict:
        return {"searched": self.searched, "within": self.within.as_dict() if self.within else None,
                "overall": self.overall.as_dict() if self.overall else None}


def settle(config: RunConfig, fixed: Fixed, *, searchable: bool, mfu: float | None = None,
           measured: dict | None = None, measured_from: str = "", max_cost: float | None = None,
           max_hours: float | None = None) -> Settled:
    """The search's choice within what the user fixed; the user's config unchanged where they fixed it all."""
    if not searchable:
        return Settled(config, None, None, False)
    kw = dict(mfu=mfu, measured=measured, measured_from=measured_from, max_cost=max_cost, max_hours=max_hours)
    overall = search(config, Fixed(), **kw)
    if None not in (fixed.gpu, fixed.per_node, fixed.nodes, fixed.device_batch):
        return Settled(config, None, overall, False)
    within = search(config, fixed, **kw)
    if within.chosen is None:
        raise planner.PlanError(f"no config to choose: {within.why}")
    return Settled(apply(config, within.chosen), within, overall, True)


def refusal(settled: Settled, plan: dict) -> str | None:
    """Why this config must not be launched, in one line naming what would fit; None when it may be."""
    if plan["verdict"] != "does not fit":
        return None
    config = settled.config
    batch, maybe = largest_batch(config), largest_batch(config, "probe first")
    here = (f"on {config.nodes} nodes of " if config.nodes > 1 else "on ") + f"{config.gpus_per_node}×{config.accelerator.name}"
    line = (f"d{config.train.depth} at device batch {config.train.device_batch} does not fit: the plan counts "
            f"{plan['peak_memory_gib']:.1f} GiB of {plan['usable_memory_gib']:.1f} GiB usable per device; "
            + (f"the largest batch that fits {here} is {batch}" if batch else
               f"batch {maybe} might fit {here} (probe first)" if maybe else f"no device batch fits {here}"))
    best = settled.overall.chosen if settled.overall else None
    if best is not None:
        line += (f"; the cheapest config that fits is --gpu {best.spec}" + (f" --nodes {best.nodes}" if best.nodes > 1 else "")
                 + f" --batch {best.device_batch} ({out.usd(best.cost_usd)}, {out.hours(best.wall_hours)})")
    return line + "; --force launches it anyway"


def caution(plan: dict) -> str | None:
    """A config that fits only at the counted peak: what to do before paying for the whole run."""
    if plan["verdict"] != "probe first":
        return None
    return (f"probe first: the plan counts {plan['peak_memory_gib']:.1f} GiB per device but published figures put "
            f"it as high as {plan['peak_memory_high_gib']:.1f} GiB of {plan['usable_memory_gib']:.1f} usable; "
            f"`nanolaunch dry` measures it, and the trainer halves the batch if its first step runs out of memory")
