"""nanolaunch: plan, probe, run and account for nanochat-style GPT pretraining on rented GPUs."""
from __future__ import annotations

import os
import sys

import typer

from nanolaunch.commands import cloud, ledger, plan, preset, prices, run, show
from nanolaunch.errors import NanolaunchError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
app.command("plan")(plan.plan)
app.command("dry")(run.dry)
app.command("run")(run.run)
app.command("prices")(prices.prices)
app.command("show")(show.show)
app.command("yaml")(cloud.yaml)
app.command("status")(cloud.status)
app.command("down")(cloud.down)
app.command("logs")(cloud.logs)
app.add_typer(preset.app, name="preset")
app.add_typer(ledger.app, name="ledger")


def main() -> None:
    try:
        app(standalone_mode=True)
    except NanolaunchError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # one line for people; the traceback when asked for
        if os.environ.get("NANOLAUNCH_DEBUG") == "1":
            raise
        _fail(f"{type(e).__name__}: {e} (set NANOLAUNCH_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    from nanolaunch.output import error

    error(message.splitlines()[0] if message else "failed")
    sys.exit(code)


if __name__ == "__main__":
    main()
