"""What several commands share: the option and argument definitions, and choosing a config from `dN`,
`--preset` and override flags.

Every flag that more than one command takes is defined here, once: the same flag has the same type, default
behaviour and help text everywhere.
"""
from __future__ import annotations

import re
from typing import Annotated, Optional

import typer

from nanolaunch import presets
from nanolaunch.config import ConfigError, RunConfig
from nanolaunch.errors import NanolaunchError
from trainer.settings import SettingError, parse_data

# What to train.
ModelArg = Annotated[Optional[str], typer.Argument(help="Model size as dN, e.g. d12 (depth 12).", show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="Start from a named preset.")]
# The horizon (either replaces the preset's horizon entirely), the batch and checkpoints.
RatioOpt = Annotated[Optional[float], typer.Option("--ratio", help="Train on RATIO × params tokens.")]
IterationsOpt = Annotated[Optional[int], typer.Option("--iterations", help="Train for exactly N optimizer steps.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", help="Device batch: sequences per GPU per micro-step.")]
# The shape of the model and its batch (what a preset or dN leaves at the defaults).
SeqOpt = Annotated[Optional[int], typer.Option("--seq", help="Sequence length.")]
TotalBatchOpt = Annotated[Optional[int], typer.Option("--total-batch", help="Tokens per optimizer step.")]
VocabOpt = Annotated[Optional[int], typer.Option("--vocab", help="Vocabulary size (tokenizer and model).")]
ValueEmbeddingsOpt = Annotated[Optional[bool], typer.Option(
    "--value-embeddings/--no-value-embeddings", help="nanochat's value embeddings: a gated (vocab × d) table added "
    "to v on every other layer (more parameters, no more FLOPs; memory verdict at best 'probe first').")]
CheckpointEveryOpt = Annotated[Optional[int], typer.Option(
    "--checkpoint-every", help="Steps between checkpoints (≤0: only at the end); a recovered run loses at most "
                               "this many.")]
# What it trains on.
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Training data: a Hugging Face dataset as ID[:CONFIG][@REVISION] (default "
                   "karpathy/fineweb-edu-100b-shuffle), a local folder of *.parquet or *.txt files, stdlib or "
                   "synthetic.")]
DataSplitOpt = Annotated[Optional[str], typer.Option("--data-split", help="Hub dataset: the split to train on "
                                                                          "(default train).")]
TextColumnOpt = Annotated[Optional[str], typer.Option("--text-column", help="Hub dataset: the column holding the "
                                                                            "text (default text).")]
# Where it runs.
GpuOpt = Annotated[Optional[str], typer.Option("--gpu", help="GPUs per node as KIND[:COUNT], e.g. H100:8, or cpu.")]
NodesOpt = Annotated[Optional[int], typer.Option("--nodes", help="Number of nodes.")]
SpotOpt = Annotated[Optional[bool], typer.Option(
    "--spot/--on-demand", help="Spot GPUs: priced at spot rates, run as a managed job recovered after preemption. "
                               "Unset: the preset's choice, else on-demand.", show_default=False)]
ManagedOpt = Annotated[bool, typer.Option(
    "--managed", help="Run as a SkyPilot managed job: when its cluster is lost (preempted, node failure, Slurm "
                      "allocation ended) SkyPilot launches a new one and the trainer resumes from its last "
                      "checkpoint. Spot runs always are.")]
InfraOpt = Annotated[Optional[str], typer.Option(
    "--infra", help="Where SkyPilot runs it: slurm/NAME (a Slurm cluster in ~/.slurm/config), a cloud (aws), "
                    "or a cloud region (gcp/us-central1); default: the cheapest enabled cloud.")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Run on this machine instead of SkyPilot (GPU configs).")]
# What the search may choose (plan, run).
MaxCostOpt = Annotated[Optional[float], typer.Option(
    "--max-cost", help="Choose no config estimated above this many $ (and stop the trainer there).")]
MaxHoursOpt = Annotated[Optional[float], typer.Option(
    "--max-hours", help="Choose no config estimated to take longer than this many hours.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Launch even what the plan says does not fit.")]
# The ledger.
def label(flag: str, empty_ok: bool):
    """A ledger label is one line of at most 200 printable characters (a table row, a CSV cell)."""
    def check(value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip() and not empty_ok:
            raise typer.BadParameter(f"{flag} must not be empty")
        if len(value) > 200 or any(not ch.isprintable() for ch in value):
            raise typer.BadParameter(f"{flag} must be one line of at most 200 printable characters")
        return value
    return check


def _run_number(value: int) -> int:
    if not 1 <= value < 2**63:
        raise typer.BadParameter(f"no run #{value}: run numbers are 1 or more, as in `nanolaunch ledger`")
    return value


TitleOpt = Annotated[str, typer.Option("--title", help="A title for the ledger: what this run is.",
                                       callback=label("--title", empty_ok=True))]
ProjectOpt = Annotated[str, typer.Option("--project", help="Ledger project the run counts under.",
                                         callback=label("--project", empty_ok=False))]
ProjectFilterOpt = Annotated[Optional[str], typer.Option("--project", help="Only rows of this ledger project.")]
RunArg = Annotated[int, typer.Argument(help="Run number, as in `nanolaunch ledger`.", show_default=False,
                                       callback=_run_number)]
# Output.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text for people.")]


def parse_model(model: str) -> int:
    m = re.fullmatch(r"[dD](\d+)", model.strip())
    if not m:
        raise NanolaunchError(f"model must look like d12 (depth 12), got {model!r}")
    return int(m.group(1))


def data_settings(spec: str) -> dict:
    """--data as trainer settings (trainer/settings.py parses it)."""
    try:
        return parse_data(spec)
    except SettingError as e:
        raise NanolaunchError(f"--data {e}") from None


def resolve(model: str | None, preset_name: str | None, **overrides) -> tuple[RunConfig, presets.Preset | None]:
    """Defaults < preset < dN < flags. A horizon flag replaces the preset's horizon entirely."""
    chosen = presets.load(preset_name) if preset_name else None
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "data" in changes:  # a new dataset replaces what the preset chose for its own: config, revision, files
        changes = {"data_config": None, "data_revision": None, "shards": None, "val_shard": None, **changes,
                   **data_settings(changes["data"])}
    if model is not None:
        depth = parse_model(model)
        if changes.get("depth", depth) != depth:
            raise NanolaunchError(f"{model} and --depth {changes['depth']} disagree: give one of them")
        changes["depth"] = depth
    if any(k in changes for k in ("ratio", "iterations", "target_flops")):
        changes = {"ratio": None, "iterations": None, "target_flops": None, **changes}
    if chosen is None and "depth" not in changes:
        raise NanolaunchError("give a model size (e.g. d12) or --preset NAME")
    base = chosen.config.to_dict() if chosen else {}
    try:
        return RunConfig.build(**{**base, **changes}), chosen
    except TypeError as e:  # a wrong type reaching the dataclass from a flag
        raise ConfigError(str(e)) from None


def fixed_by(gpu: str | None, batch: int | None, nodes: int | None, preset: presets.Preset | None,
             config: RunConfig):
    """What the search may not change: everything, once the user names a GPU, a batch or a preset (the config
    is then theirs, checked as it is); otherwise only --nodes, if given."""
    from nanolaunch.search import Fixed

    if preset is not None or gpu is not None or batch is not None:
        return Fixed(config.accelerator.name, config.gpus_per_node, config.nodes, config.train.device_batch)
    return Fixed(nodes=nodes)


def check_range(flag: str, value: float | None, low: float, high: float = float("inf"), *,
                low_open: bool = False) -> None:
    """A number a user typed: finite and within [low, high] ((low, high] with low_open), or one line naming it."""
    import math

    if value is None:
        return
    inside = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not inside:
        bounds = f"{'(' if low_open else '['}{low:g}, {'∞)' if high == float('inf') else f'{high:g}]'}"
        raise NanolaunchError(f"{flag} must be a finite number in {bounds}, got {value:g}")


def check_limits(max_cost: float | None = None, max_hours: float | None = None, **more: float | None) -> None:
    """Limits are positive, finite numbers: one line naming the flag otherwise (more: budget=...)."""
    for name, value in {"max_cost": max_cost, "max_hours": max_hours, **more}.items():
        check_range(f"--{name.replace('_', '-')}", value, 0, low_open=True)
