"""The one output layer: JSON for machines, rich tables for people, one-line errors on stderr."""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by people later (logs, docs): do not squeeze tables to 80 columns.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=None if stream.isatty() else 160)


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON, or hand it to `render` for people."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        render(data)


def check_output_path(path, flag: str):
    """Before any work: a file to write must be in an existing folder and not be a folder itself."""
    from pathlib import Path

    from nanolaunch.errors import NanolaunchError

    path = Path(path).expanduser()
    if path.is_dir():
        raise NanolaunchError(f"{flag} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise NanolaunchError(f"{flag} {path}: the folder {path.parent} does not exist")
    return path


def write_file(path, write: Callable[[Any], None] | str, flag: str) -> None:
    """Write a file whole or not at all: `write(tmp_path)` (or the text) into a temporary file beside it, then
    renamed over it; an OS error is one line naming the flag, and no temporary file stays behind."""
    import os
    import tempfile
    from pathlib import Path

    from nanolaunch.errors import NanolaunchError

    path = check_output_path(path, flag)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        if isinstance(write, str):
            Path(tmp).write_text(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise NanolaunchError(f"{flag} {path}: {e.strerror or e}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def error(message: str) -> None:
    from rich.markup import escape

    # The message is text, not markup: "[MODEL]" in a usage error must print as it is.
    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    from rich.markup import escape

    console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}")


def note(message: str) -> None:
    """Progress of slow work, on stderr (so --json output stays clean)."""
    from rich.markup import escape

    console(stderr=True).print(f"[dim]{escape(message)}[/]")


def table(*columns: str, title: str | None = None):
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for c in columns:
        t.add_column(c)
    return t


# Formatting helpers: None always reads "unknown", never a guessed number.
def num(x: float | int | None, digits: int = 0) -> str:
    if x is None:
        return "unknown"
    return f"{x:,.{digits}f}"


def sci(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.6e}"


def pct(x: float | None) -> str:
    return "unknown" if x is None else f"{100 * x:.1f}%"


def usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.2f}"


def hours(h: float | None) -> str:
    if h is None:
        return "unknown"
    if h < 1:
        return f"{h * 60:.1f} min"
    return f"{h:.2f} h" if h < 48 else f"{h:.1f} h ({h / 24:.1f} days)"


def seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "unknown"
    if s < 1:
        return f"{s * 1000:,.0f} ms"
    return f"{s:.1f} s" if s < 60 else hours(s / 3600)
