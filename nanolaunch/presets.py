"""Named presets: a RunConfig plus the provenance and measured results that justify it.

Built-in presets are TOML files in presets/; promoted ones live in NANOLAUNCH_HOME/presets. A preset may
derive from another (`base = "a100_d10"`): it inherits the base's config, never its results.
"""
from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from nanolaunch.config import ConfigError, RunConfig
from nanolaunch.errors import NanolaunchError
from trainer import events

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "presets"
TOP_LEVEL = {"description", "base", "config", "provenance", "results"}


def result_fields() -> dict[str, type]:
    """What a preset's results hold: what its run measured (the trainer's Result fields marked preset) and
    what it cost (the ledger's)."""
    return {**events.Result.preset_fields(), "wall_seconds": float, "cost_usd": float, "usd_per_hour": float}


PROVENANCE_FIELDS = {"source", "run_id", "date", "device_name", "commit", "price_source", "note"}


def home() -> Path:
    from trainer.hardware import nanolaunch_home

    return nanolaunch_home()


def user_dir() -> Path:
    return home() / "presets"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    config: RunConfig
    description: str = ""
    base: str | None = None
    provenance: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "description": self.description, "base": self.base,
                "config": self.config.to_dict(), "provenance": self.provenance, "results": self.results}


def _files() -> dict[str, Path]:
    found = {}
    for directory in (BUILTIN_DIR, user_dir()):  # a promoted preset may not shadow a built-in one
        for path in sorted(directory.glob("*.toml")) if directory.is_dir() else ():
            found.setdefault(path.stem, path)
    return found


def names() -> list[str]:
    return sorted(_files())


def load(name: str, _chain: tuple[str, ...] = ()) -> Preset:
    files = _files()
    if name not in files:
        near = difflib.get_close_matches(name, list(files), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise NanolaunchError(f"no preset named {name!r}; {hint}see `nanolaunch preset list`")
    if name in _chain:
        raise NanolaunchError(f"preset {name!r} derives from itself: {' -> '.join(_chain + (name,))}")
    path = files[name]
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{path}: unknown field {key!r} (known: {', '.join(sorted(TOP_LEVEL))})")
    base = data.get("base")
    config = dict(data.get("config", {}))
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: field 'base' must be a preset name")
        config = {**load(base, _chain + (name,)).config.to_dict(), **config}
    return Preset(
        name=name, path=path, config=RunConfig.from_mapping(config, str(path)),
        description=str(data.get("description", "")), base=base,
        provenance=_checked(data.get("provenance", {}), {k: str for k in PROVENANCE_FIELDS}, path, "provenance"),
        results=_checked(data.get("results", {}), result_fields(), path, "results"),
    )


def _checked(table: dict, schema: dict, path: Path, section: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{path}: unknown field {section}.{key} (known: {', '.join(sorted(schema))})")
        kind = schema[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else isinstance(value, kind)
        if not ok:
            raise ConfigError(f"{path}: field {section}.{key} must be {kind.__name__}, got {value!r}")
    return dict(table)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_toml(description: str, config: dict, provenance: dict, results: dict) -> str:
    lines = [f"description = {_toml_value(description)}"]
    for section, table in (("config", config), ("provenance", provenance), ("results", results)):
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def check_new_name(name: str, overwrite: bool = False) -> Path:
    """Where a new preset `name` would go; refuses bad names, built-ins, and (unless overwrite) existing ones."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
        raise NanolaunchError(f"preset names are lowercase letters, digits and _, got {name!r}")
    if (BUILTIN_DIR / f"{name}.toml").exists():
        raise NanolaunchError(f"{name!r} is a built-in preset; choose another name")
    path = user_dir() / f"{name}.toml"
    if path.exists() and not overwrite:
        raise NanolaunchError(f"preset {name!r} exists ({path}); pass --force to replace it")
    return path


def write(name: str, text: str, *, overwrite: bool = False) -> Path:
    """Writes a promoted preset atomically; never replaces one silently, never shadows a built-in."""
    path = check_new_name(name, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.toml.tmp")
    tmp.write_text(text)
    tomllib.loads(tmp.read_text())  # never publish a file we cannot read back
    os.replace(tmp, path)
    return path
