"""Property: any bad value for any option of the commands that spend or record money is refused with one line
on stderr and a non-zero exit, no traceback, no stray file, and the ledger unchanged (issue 24).

The CLI runs in this process (`nanolaunch.cli.main`), so hundreds of examples take seconds. Values come from
hypothesis: numbers that are not finite, negative, or not numbers at all; text with control characters; GPU,
data and infra specs that do not parse."""
import contextlib
import io
import math
import sqlite3
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import nl

# The base of each command: valid, and cheap if a bad value were ever let through.
BASE = {
    "plan": ["plan", "d12"],
    "run": ["run", "--preset", "cpu_demo", "--local", "--iterations", "1"],
    "dry": ["dry", "--preset", "a100_d10", "--local"],
    "yaml": ["yaml", "--preset", "a100_d10"],
    "ledger add": ["ledger", "add", "d12", "--gpu", "H100:1"],
    "ledger edit": ["ledger", "edit", "1", "--why", "a property test"],
    "ledger": ["ledger"],
}
# Numeric options, and whether 0 is a value they take.
NUMBERS = {
    "plan": {"--ratio": False, "--iterations": False, "--nodes": False, "--batch": False, "--seq": False,
             "--total-batch": False, "--vocab": False, "--shards": False, "--mfu": False, "--max-cost": False,
             "--max-hours": False, "--depth": False},
    "run": {"--ratio": False, "--iterations": False, "--batch": False, "--nodes": False, "--max-cost": False,
            "--max-hours": False, "--seq": False, "--total-batch": False, "--vocab": False},
    "dry": {"--iters": False, "--memory-limit-gib": False, "--seq": False, "--total-batch": False, "--vocab": False},
    "yaml": {"--ratio": False, "--iterations": False, "--batch": False, "--nodes": False, "--seq": False,
             "--total-batch": False, "--vocab": False},
    "ledger add": {"--wall-minutes": True, "--cost": True, "--val-bpb": False, "--mfu": False,
                   "--peak-memory-gib": False, "--batch": False},
    "ledger edit": {"--cost": True, "--val-bpb": False},  # each the one change asked for
}
TEXT = {  # options whose value is one printable line
    "run": ["--title", "--project"], "ledger add": ["--title", "--project"], "ledger edit": ["--title", "--project"],
    "dry": ["--project"],
}
SPECS = {  # options with a grammar of their own, and values outside it
    "--gpu": ["H100:", "H100:0", "H100:-1", ":8", "NOPE:1", "H100:x", "H100:1:2"],
    "--data": ["not a dataset", "a/b/c/d", "owner/name@", "~/no-such-folder-here"],
    "--infra": ["AWS!", "slurm/", "a b"],
    "--preset": ["no-such-preset", "../etc/passwd"],
    "--since": ["yesterday", "2026-13-01", "06/12/2026"],
    "--sort": ["title", "--", "cost"],
    "--kind": ["runs", "probe"],
    "--status": ["fine", "OK"],
}
SPEC_COMMANDS = {"plan": ["--gpu", "--data", "--infra", "--preset"], "run": ["--gpu", "--data", "--infra"],
                 "yaml": ["--gpu", "--data", "--infra"], "ledger add": ["--gpu", "--kind", "--status"],
                 "ledger": ["--since", "--sort", "--kind", "--status"]}


def not_a_number(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return True


def numbers(zero_ok: bool):
    bad = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "", "1,5", "0x10"]),
                    st.floats(max_value=-1e-6, allow_nan=False).map(repr),
                    st.text(max_size=8).filter(not_a_number))
    return bad if zero_ok else st.one_of(bad, st.just("0"))


def cases():
    out = []
    for command, options in NUMBERS.items():
        out += [st.tuples(st.just(command), st.just(o), numbers(zero_ok)) for o, zero_ok in options.items()]
    for command, options in TEXT.items():
        garbage = st.one_of(st.text(min_size=1, max_size=20).filter(lambda s: not s.isprintable()),
                            st.just("x" * 201))
        out += [st.tuples(st.just(command), st.just(o), garbage) for o in options]
    for command, options in SPEC_COMMANDS.items():
        out += [st.tuples(st.just(command), st.just(o), st.sampled_from(SPECS[o])) for o in options]
    return st.one_of(*out)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("property")
    assert nl(home, "ledger", "add", "d12", "--gpu", "H100:1", "--title", "seed", "--cost", "1").returncode == 0
    return home


def snapshot(home):
    con = sqlite3.connect(home / "ledger.db")
    state = (con.execute("SELECT * FROM runs").fetchall(), con.execute("SELECT * FROM run_events").fetchall())
    con.close()
    files = sorted(str(p) for p in home.rglob("*") if not p.name.startswith("ledger.db"))
    return state, files


def invoke(home, args: list[str]) -> tuple[int, str]:
    from nanolaunch import cli

    err = io.StringIO()
    old_argv = sys.argv
    sys.argv = ["nanolaunch", *args]
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            mp.setenv("NANOLAUNCH_HOME", str(home))
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old_argv
    return code, err.getvalue()


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_every_bad_value_is_one_line_and_changes_nothing(home, case):
    command, option, value = case
    before = snapshot(home)
    code, err = invoke(home, [*BASE[command], option, value])
    lines = err.strip().splitlines()
    assert code != 0, (command, option, value, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (command, option, value, err)
    assert "Traceback" not in err
    assert snapshot(home) == before, (command, option, value)


@pytest.mark.parametrize("command, extra", [("plan", []), ("yaml", []), ("ledger", []), ("ledger add", []),
                                            ("ledger edit", ["--cost", "2"])])
def test_the_bases_themselves_succeed(tmp_path, command, extra):
    """So a refusal above is the bad value's doing, not the base's."""
    assert nl(tmp_path, "ledger", "add", "d12", "--gpu", "H100:1", "--cost", "1").returncode == 0
    code, err = invoke(tmp_path, [*BASE[command], *extra])
    assert code == 0, err
