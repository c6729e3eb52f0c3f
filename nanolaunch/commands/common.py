"""What several commands share: choosing a config from `dN`, `--preset` and override flags."""
from __future__ import annotations

import re
from typing import Annotated, Optional

import typer

from nanolaunch import presets
from nanolaunch.config import ConfigError, RunConfig
from nanolaunch.errors import NanolaunchError

ModelArg = Annotated[Optional[str], typer.Argument(help="Model size as dN, e.g. d12 (depth 12).", show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="Start from a named preset.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def parse_model(model: str) -> int:
    m = re.fullmatch(r"[dD](\d+)", model.strip())
    if not m:
        raise NanolaunchError(f"model must look like d12 (depth 12), got {model!r}")
    return int(m.group(1))


def resolve(model: str | None, preset_name: str | None, **overrides) -> tuple[RunConfig, presets.Preset | None]:
    """Defaults < preset < dN < flags. A horizon flag replaces the preset's horizon entirely."""
    chosen = presets.load(preset_name) if preset_name else None
    changes = {k: v for k, v in overrides.items() if v is not None}
    if model is not None:
        changes["depth"] = parse_model(model)
    if any(k in changes for k in ("ratio", "iterations", "target_flops")):
        changes = {"ratio": None, "iterations": None, "target_flops": None, **changes}
    if chosen is None and "depth" not in changes:
        raise NanolaunchError("give a model size (e.g. d12), --depth N, or --preset NAME")
    base = chosen.config.to_dict() if chosen else {}
    try:
        return RunConfig(**{**base, **changes}), chosen
    except TypeError as e:  # a wrong type reaching the dataclass from a flag
        raise ConfigError(str(e)) from None
