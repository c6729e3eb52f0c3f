"""The private names nanolaunch takes from other packages, in one place, with the releases they were checked
against. tests/test_compat.py fails when an installed release is outside these ranges or pyproject.toml allows
another: a new release is read again before the range moves.

SkyPilot's internals (its state database, server helpers) are reached only through nanolaunch/backends/sky_sdk.py."""
from __future__ import annotations

# package: (first release checked, first release not checked) -- pyproject.toml pins the same ranges
CHECKED = {"typer": ("0.29", "0.30"), "skypilot": ("0.14.1", "0.15")}

# typer ≥ 0.22 carries its own copy of click; its usage errors are what `standalone_mode=False` raises.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # noqa: E402

__all__ = ["CHECKED", "ClickException", "NoArgsIsHelpError", "UsageError"]
