"""nanolaunch: plan, probe, run and account for nanochat-style GPT pretraining on rented GPUs."""
from __future__ import annotations

import os
import sys

import typer

from nanolaunch.commands import cloud, ledger, plan, preset, prices, run, show
from nanolaunch.compat import ClickException, NoArgsIsHelpError, UsageError
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
        # Not standalone: click raises its usage errors (printed below as one line, not a box) and returns the
        # code of a typer.Exit, of --help or of Ctrl-C instead of exiting.
        code = app(prog_name="nanolaunch", standalone_mode=False)
    except NoArgsIsHelpError as e:  # `nanolaunch`, `nanolaunch preset`: the help, not an error
        sys.stderr.write(e.format_message())  # empty where rich has printed the help already
        sys.exit(e.exit_code)
    except UsageError as e:
        _fail(f"{_first_line(e.format_message())} (see {_command_path(e)} --help)", e.exit_code)
    except ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except NanolaunchError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # one line for people; the traceback when asked for
        if os.environ.get("NANOLAUNCH_DEBUG") == "1":
            raise
        _fail(f"{type(e).__name__}: {e} (set NANOLAUNCH_DEBUG=1 for the traceback)", 1)
    else:
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    from nanolaunch.output import error

    error(_first_line(message) or "failed")
    sys.exit(code)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def _command_path(e: UsageError) -> str:
    ctx = getattr(e, "ctx", None)
    return ctx.command_path if ctx is not None else "nanolaunch"


if __name__ == "__main__":
    main()
