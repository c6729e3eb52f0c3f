"""README.md's example output, made by running the commands it shows.

    .venv/bin/python docs/examples/generate.py           # rewrite the generated blocks of README.md (and the
                                                        # full outputs in docs/examples/NAME.txt)
    .venv/bin/python docs/examples/generate.py --check   # compare only: exit 1 where a committed one differs
    .venv/bin/python docs/examples/generate.py NAME ...  # only these examples

A generated block in README.md is the indented block right after a line `<!-- example: NAME -->`; EXAMPLES
below says which commands it shows and which part of their output (an excerpt cuts long lines at 146
characters, " ..." marking the cut, and may leave parts out, saying so in the block). Where the README shows
an excerpt, the whole output is kept in docs/examples/NAME.txt. tests/test_readme_examples.py runs every
example the same way and fails when a committed block or file no longer matches (after `normalise`). A
rerun rewrites only what differs after `normalise` (`--force`: everything), so the measurements of the
machine a block was made on stay with the prose that cites them.

Each example runs in a fresh HOME and NANOLAUNCH_HOME (a temporary folder), with no setting of the user's
(NANOLAUNCH_*, NL_*, SKYPILOT_*, WANDB_*, HF_TOKEN), no SkyPilot catalog (prices come from nanolaunch's own
dated snapshot, every cloud priced: none is enabled), and no traffic beyond loopback: the proxies point at a
closed loopback port and tests/loopback_guard.py refuses any other connection in every Python started; an
example that tried one is an error, never a committed output. Commands that need a cloud, a GPU, a Slurm
cluster, a Hub or minutes of CPU training stay pasted by hand: HAND_PASTED names each and why.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES_DIR = Path(__file__).resolve().parent
MARKER = re.compile(r"^<!-- example: ([a-z0-9-]+) -->\s*$")
INDENT = "    "
CUT = 146  # a line longer than CUT + 4 keeps its first CUT characters and " ..."
REPO_SHOWN = "/path/to/nanolaunch"  # the checkout's absolute path, as the README shows it


# ---------------------------------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class Cmd:
    """One `$ nanolaunch ...` line of a block and its output.

    shown: the command as the README shows it (after `$ `); the nanolaunch arguments are its part before the
    first ` | `, unless `args` gives them. pipe: what the shell pipeline after it does, in Python (jq, sed and
    head need not be installed), applied to stdout. excerpt: the part of the output the README shows (the
    whole output goes to docs/examples/NAME.txt when it differs). cut: cut lines longer than CUT + 4.
    setup: nanolaunch commands run first, in the same home, that must succeed and are not shown.
    fails: the command is expected to exit non-zero (a refusal the README shows). args: the nanolaunch
    arguments, where `shown` abbreviates them."""
    shown: str
    pipe: Callable[[str], str] | None = None
    excerpt: Callable[[str], str] | None = None
    cut: bool = False
    setup: tuple[tuple[str, ...], ...] = ()
    fails: bool = False
    args: tuple[str, ...] | None = None
    blank_before: bool = False  # a blank line between it and the command before

    def argv(self) -> list[str]:
        if self.args is not None:
            return list(self.args)
        words = shlex.split(self.shown.split(" | ", 1)[0])
        assert words[0] == "nanolaunch", self.shown
        return words[1:]


@dataclass(frozen=True)
class Example:
    name: str
    cmds: tuple[Cmd, ...]
    # (regex, replacement) pairs for what legitimately varies in this example's output beyond `normalise`'s
    # own rules: measurements of this machine.
    masks: tuple[tuple[str, str], ...] = field(default=())
    # keep the whole output in docs/examples/NAME.txt where the README shows an excerpt
    transcript: bool = True


def paragraphs(text: str, expect: int, what: str) -> list[str]:
    parts = text.split("\n\n")
    if len(parts) != expect:
        raise ValueError(f"{what}: expected {expect} parts separated by blank lines, got {len(parts)}; the output "
                         "changed shape: update its excerpt in docs/examples/generate.py")
    return parts


def plan_search_excerpt(text: str) -> str:
    """The choice and its plan, then the alternatives; the memory table is left out (the next example shows one)."""
    plan, _memory, alternatives = paragraphs(text, 3, "plan d34 --ratio 40")
    return f"{plan}\n\n(then the memory per GPU, term by term)\n{alternatives}"


GIVEN_LINES = ("plan:", "batch ", "peak memory ", "wall time ", "price ", "spot ", "cost ", "disk ")


def plan_given_excerpt(text: str) -> str:
    """A given config: the lines about its batch, memory, time and price, its memory table, not the alternatives."""
    plan, memory, _alternatives = paragraphs(text, 3, "plan d34 --ratio 40 --gpu H100:8 --batch 4")
    kept = [line for line in plan.splitlines() if line.startswith(GIVEN_LINES)]
    return "\n".join(kept) + f"\n\n{memory}\n\n(then the configs that fit, as in the search above)"


PRESET_SETTINGS_SHOWN = 7


def preset_show_excerpt(text: str) -> str:
    """The preset's first settings, then its provenance and measured results."""
    lines = text.splitlines()
    try:
        config, provenance = lines.index("config"), lines.index("provenance")
    except ValueError:
        raise ValueError("preset show: no 'config' or 'provenance' line; update its excerpt in "
                         "docs/examples/generate.py") from None
    settings = lines[config + 1:provenance]
    rest = len(settings) - PRESET_SETTINGS_SHOWN
    return "\n".join(lines[:config + 1] + settings[:PRESET_SETTINGS_SHOWN] + [f"(then {rest} more settings)"]
                     + lines[provenance:])


def grep(word: str) -> Callable[[str], str]:
    return lambda text: "\n".join(line for line in text.splitlines() if word in line)


def head(n: int, after: str | None = None) -> Callable[[str], str]:
    """`sed -n '/^AFTER/,$p' | head -N` (`head -N` alone without AFTER; N=0: no head)."""
    def pipe(text: str) -> str:
        lines = text.splitlines()
        if after is not None:
            start = next((i for i, line in enumerate(lines) if re.match(after, line)), len(lines))
            lines = lines[start:]
        return "\n".join(lines[:n] if n else lines)
    return pipe


def keep_lines(*prefixes: str) -> Callable[[str], str]:
    return lambda text: "\n".join(line for line in text.splitlines() if line.startswith(prefixes))


BUDGET_FIELDS = ("depth", "ratio", "spec", "nodes", "device_batch", "wall_hours", "cost_usd")


def budget_jq(text: str) -> str:
    """jq -c '{chosen: (.chosen | {depth, ratio, spec, nodes, device_batch, wall_hours, cost_usd}),
    predicted_val_bpb, loo_error, extrapolated}', numbers as jq 1.6 prints them (40.0 as 40; otherwise
    Python's shortest repr, which is jq's 17 significant digits for these)."""
    def jq_number(x):
        return int(x) if isinstance(x, float) and x.is_integer() and abs(x) < 1e17 else x

    d = json.loads(text, parse_float=lambda s: jq_number(float(s)))
    picked = {"chosen": {k: d["chosen"].get(k) for k in BUDGET_FIELDS},
              **{k: d.get(k) for k in ("predicted_val_bpb", "loo_error", "extrapolated")}}
    return json.dumps(picked, separators=(",", ":"), ensure_ascii=False)


JQ = ("jq -c '{chosen: (.chosen | {depth, ratio, spec, nodes, device_batch, wall_hours, cost_usd}), "
      "predicted_val_bpb, loo_error, extrapolated}'")

SEED_RECORDS = (  # docs/DESIGN.md §3, as `ledger add` types them in
    ("ledger", "add", "d10", "--gpu", "A100:1", "--batch", "32", "--project", "search", "--title", "seed d10",
     "--wall-minutes", "60.7", "--cost", "4.36", "--val-bpb", "0.897", "--mfu", "0.55"),
    ("ledger", "add", "d10", "--gpu", "A100:1", "--batch", "64", "--project", "search", "--title", "seed d10 probe",
     "--kind", "dry", "--status", "oom"),
    ("ledger", "add", "d12", "--gpu", "H100:1", "--batch", "32", "--project", "search", "--title", "seed d12",
     "--wall-minutes", "47", "--val-bpb", "0.854"),
)

# A measurement of this machine: the calibration probe's speed, the times predicted from it, the CPU.
MEASURED = (
    (r"this machine \((?:[^()]|\([^()]*\))*\)", "this machine (<cpu>)"),  # "(Intel(R) Xeon(R) ..., 2 cores, ...)"
    (r"[\d,.]+ tok/s", "<n> tok/s"),
    (r"\b[\d,.]+ (ms|s|min|h)\b( \([\d.]+ days\))?", "<duration>"),
)

EXAMPLES: tuple[Example, ...] = (
    Example("plan-search", (Cmd("nanolaunch plan d34 --ratio 40", excerpt=plan_search_excerpt, cut=True),)),
    Example("plan-given", (
        Cmd("nanolaunch plan d34 --ratio 40 --gpu H100:8 --batch 4", excerpt=plan_given_excerpt, cut=True),
        Cmd("nanolaunch plan d34 --ratio 40 --gpu H100:8 --batch 8 | grep 'peak memory'", pipe=grep("peak memory"),
            cut=True, blank_before=True),
    )),
    Example("run-refused", (Cmd("nanolaunch run d34 --ratio 40 --gpu H100:1", fails=True),)),
    Example("plan-budget", (
        Cmd("nanolaunch plan --budget 100", cut=True),
        Cmd(f"nanolaunch plan --budget 100 --json | {JQ}", pipe=budget_jq, blank_before=True),
        Cmd("nanolaunch plan --budget 2500 --json | jq -c '...'   (the same filter)", pipe=budget_jq,
            args=("plan", "--budget", "2500", "--json")),
    )),
    Example("plan-bad-batch", (Cmd("nanolaunch plan --preset a100_d10 --batch 48", fails=True),)),
    Example("plan-calibration", (
        Cmd("nanolaunch plan --preset cpu_demo",
            excerpt=keep_lines("calibrating", "MFU ", "step time ", "wall time ")),),
        masks=MEASURED, transcript=False),  # the rest is the plan of cpu_demo; the numbers are the machine's
    Example("run-no-cloud", (Cmd("nanolaunch run d12 --ratio 20 --dryrun", fails=True, cut=True),)),
    Example("yaml-head", (Cmd("nanolaunch yaml --preset h100_d12 | head -20", pipe=head(20)),)),
    Example("yaml-envs-run", (
        Cmd("nanolaunch yaml --preset h100_d12 | sed -n '/^envs:/,$p' | head -8", pipe=head(8, after=r"envs:")),
        Cmd("nanolaunch yaml --preset h100_d12 | sed -n '/^run:/,$p'", pipe=head(0, after=r"run:")),
    )),
    Example("ledger-search", (
        Cmd("nanolaunch ledger --project search --sort -val_bpb", setup=SEED_RECORDS),
        Cmd("nanolaunch ledger --compare"),
    )),
    Example("when-wrong", (
        Cmd("nanolaunch plan d12 --ratio inf", fails=True),
        Cmd("nanolaunch plan d12 --depth 4", fails=True),
        Cmd("nanolaunch plan d12 --gpu H100:", fails=True),
        Cmd("nanolaunch run d34 --ratio 40 --gpu H100:8 --batch 32", fails=True),
        Cmd("nanolaunch dry --preset a100_d10 --batch 64", fails=True),
        Cmd("nanolaunch ledger add d12 --gpu H100:1 --mfu 5", fails=True),
        Cmd("nanolaunch ledger --csv /no/such/folder/rows.csv", fails=True),
        Cmd("nanolaunch ledger rm 2", fails=True, setup=(
            ("ledger", "add", "d12", "--gpu", "H100:1", "--wall-minutes", "47"),
            ("ledger", "add", "d12", "--gpu", "H100:1", "--wall-minutes", "47"),
            ("ledger", "rm", "2", "--why", "typed in twice"))),
    )),
    Example("presets", (
        Cmd("nanolaunch preset list"),
        Cmd("nanolaunch preset show a100_d10", excerpt=preset_show_excerpt, blank_before=True),
    )),
)
BY_NAME = {e.name: e for e in EXAMPLES}

# The README's other `$ nanolaunch` lines, pasted by hand from a real run, and why none is generated here.
HAND_PASTED: dict[str, str] = {
    "nanolaunch dry --preset cpu_demo --batch 4,8,16 --local":
        "three CPU training probes (a minute of 2 cores); steps, tokens/s and memory are this machine's",
    "nanolaunch dry --preset cpu_demo --batch auto --local --save-preset cpu_demo_auto":
        "up to six CPU training probes; which batch wins depends on this machine's timings",
    "nanolaunch plan --preset cpu_demo":  # the second one, after the runs and probes above; the first is generated
        "predicts from the ledger rows of the runs and probes before it (minutes of CPU training)",
    "nanolaunch run --preset cpu_demo --local": "trains for 2 minutes on 2 cores",
    "nanolaunch plan --preset cpu_demo --data demo/stdlib-text":
        "needs the stdlib corpus published on a Hub served on loopback (tests/hub_server.py)",
    "nanolaunch run --preset cpu_demo --local --data demo/stdlib-text": "trains for 2 minutes, from the loopback Hub",
    "nanolaunch run --preset cpu_demo --infra slurm/nl-local --iterations 30":
        "needs the Slurm cluster of tests/slurm_cluster/up.sh and SkyPilot's API server",
    "nanolaunch show 1 | grep cloud": "shows a Slurm run: needs the Slurm cluster",
    "nanolaunch run --preset cpu_demo --infra slurm/nl-local --iterations 60 --checkpoint-every 10 --managed":
        "needs the Slurm cluster, a managed job and an allocation cancelled by hand",
    "nanolaunch ledger": "lists real runs (the Slurm ones, or the two cpu_demo runs on stdlib text)",
    "nanolaunch preset promote 1 --name my_cpu_d2": "needs a finished run #1 (no output shown)",
}


# ------------------------------------------------------------------------------------------------------ running
def sandbox_env(home: Path) -> dict[str, str]:
    """This environment, less the user's nanolaunch, trainer, SkyPilot, W&B and Hub settings, with HOME and
    NANOLAUNCH_HOME in `home`, and nothing beyond loopback."""
    drop = ("NANOLAUNCH_", "NL_", "SKYPILOT_", "SKY_", "WANDB_", "HF_TOKEN", "FORCE_COLOR", "TTY_", "COLUMNS",
            "LINES", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    guard = ROOT / "tests" / "loopback_only"
    env.update({
        "HOME": str(home), "NANOLAUNCH_HOME": str(home / ".nanolaunch"), "SKY_RUNTIME_DIR": str(home),
        "SKYPILOT_DISABLE_LOCAL_API_SERVER": "1", "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(home / "hf"),
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
        "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": "",
        "PYTHONPATH": str(guard), "NL_TEST_NETWORK_LOG": str(home / "network.log"),
        "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TERM": "dumb",
    })
    return env


def nanolaunch(args, env: dict[str, str], merged: bool) -> subprocess.CompletedProcess:
    """`nanolaunch ARGS` as a user runs it, from the checkout; stderr into stdout where `merged` (as a
    terminal shows both)."""
    return subprocess.run([sys.executable, "-m", "nanolaunch.cli", *args], cwd=ROOT, env=env, text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merged else subprocess.PIPE, timeout=600)


def substitute(text: str, home: Path) -> str:
    """The run's own paths as the README shows them: the temporary home as ~, the checkout as REPO_SHOWN."""
    for path, shown in sorted({(str(home), "~"), (str(home.resolve()), "~"), (str(ROOT), REPO_SHOWN)},
                              key=lambda p: -len(p[0])):
        text = text.replace(path, shown)
    return text


def clean(text: str) -> str:
    """Lines without trailing spaces (rich pads table cells), no blank lines at either end."""
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def cut(text: str) -> str:
    return "\n".join(line if len(line) <= CUT + 4 else line[:CUT].rstrip() + " ..." for line in text.splitlines())


@dataclass
class Result:
    readme: str  # the block's text as README.md shows it (unindented)
    full: str  # every command with its whole output


def run(example: Example, workdir: Path | None = None) -> Result:
    """Run the example's commands in a fresh home under `workdir` (a temporary folder if None)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=f"nl-example-{example.name}-") as tmp:
            return run(example, Path(tmp))
    home = workdir / "home"
    home.mkdir(parents=True)
    env = sandbox_env(home)
    shown, full = [], []
    for cmd in example.cmds:
        for args in cmd.setup:
            r = nanolaunch(args, env, merged=True)
            if r.returncode != 0:
                raise RuntimeError(f"{example.name}: setup `nanolaunch {shlex.join(args)}` failed "
                                   f"(exit {r.returncode}):\n{r.stdout}")
        r = nanolaunch(cmd.argv(), env, merged=cmd.pipe is None)
        if (r.returncode != 0) != cmd.fails:
            raise RuntimeError(f"{example.name}: `{cmd.shown}` exited {r.returncode}, expected "
                               f"{'non-zero' if cmd.fails else '0'}:\n{r.stdout}{r.stderr or ''}")
        out = r.stdout if cmd.pipe is None else (r.stderr or "") + cmd.pipe(r.stdout)
        out = clean(substitute(out, home))
        gap = "\n" if cmd.blank_before else ""
        full.append(f"{gap}$ {cmd.shown}\n{out}".rstrip("\n"))
        part = cmd.excerpt(out) if cmd.excerpt else out
        shown.append(f"{gap}$ {cmd.shown}\n{cut(part) if cmd.cut else part}".rstrip("\n"))
    network = home / "network.log"
    if network.exists():
        raise RuntimeError(f"{example.name}: a command tried to reach beyond loopback (refused):\n"
                           f"{network.read_text()}")
    return Result(readme="\n".join(shown), full="\n".join(full))


def transcript_path(name: str) -> Path:
    return EXAMPLES_DIR / f"{name}.txt"


# ------------------------------------------------------------------------------------------------------- README
def blocks(text: str) -> dict[str, tuple[int, int, str]]:
    """Each generated block of README text: name → (first line, end line, its text unindented). The block
    is the indented lines (blank ones between them included) right after the marker."""
    lines = text.split("\n")
    found: dict[str, tuple[int, int, str]] = {}
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        if m.group(1) in found:
            raise ValueError(f"README.md: the example {m.group(1)!r} is marked twice")
        end = j = i + 1
        while j < len(lines) and (lines[j].startswith(INDENT) or not lines[j].strip()):
            if lines[j].strip():
                end = j + 1
            j += 1
        body = "\n".join(line[len(INDENT):] if line.strip() else "" for line in lines[i + 1:end])
        found[m.group(1)] = (i + 1, end, body)
    return found


def replace_blocks(text: str, new: dict[str, str]) -> str:
    lines = text.split("\n")
    for name, (start, end, _) in sorted(blocks(text).items(), key=lambda kv: -kv[1][0]):
        if name in new:
            lines[start:end] = [INDENT + line if line else "" for line in new[name].split("\n")]
    return "\n".join(lines)


def readme_commands(text: str) -> list[tuple[str, str | None]]:
    """Every `$ nanolaunch ...` line of an indented block of README text: (command, the generated block it is
    in, or None)."""
    out, current = [], None
    for line in text.split("\n"):
        m = MARKER.match(line)
        if m:
            current = m.group(1)
            continue
        if line.strip() and not line.startswith(INDENT):
            current = None
        elif line.startswith(INDENT + "$ nanolaunch "):
            out.append((line[len(INDENT) + 2:], current))
    return out


# --------------------------------------------------------------------------------------------------- comparing
def normalise(text: str, example: Example) -> str:
    """What may differ between two runs of an example, made equal: timestamps and clock times, the random
    suffix of the bucket name, and the example's own `masks` (measurements of this machine). Paths need no
    rule here: `run` already shows the temporary home as ~ and the checkout as REPO_SHOWN. Plain dates stay:
    the one shown is the price snapshot's, which the README should follow. Run ids stay: every example starts
    from an empty ledger, so they do not vary."""
    rules = (
        (r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?", "<time>"),
        (r"\b\d{1,2}:\d{2}:\d{2}\b", "<time>"),
        (r"\bnanolaunch-[a-z0-9-]+-[0-9a-f]{8}\b", "nanolaunch-<user>-<suffix>"),
        *example.masks,
    )
    text = clean(text)
    for pattern, repl in rules:
        text = re.sub(pattern, repl, text)
    return text


def differences(example: Example, result: Result, readme_text: str) -> list[str]:
    """What differs between a fresh run and the committed README block and transcript, after `normalise`;
    one message (with a diff) for each."""
    problems = []
    committed = blocks(readme_text).get(example.name)
    pairs = [("README.md", None if committed is None else committed[2], result.readme)]
    path = transcript_path(example.name)
    if example.transcript and result.full != result.readme:
        pairs.append((str(path.relative_to(ROOT)), path.read_text().rstrip("\n") if path.exists() else None,
                      result.full))
    elif path.exists():
        problems.append(f"{path.relative_to(ROOT)}: no longer generated; the file is stale")
    for where, old, new in pairs:
        if old is None:
            problems.append(f"{where}: no committed example {example.name!r}")
            continue
        a, b = normalise(old, example), normalise(new, example)
        if a != b:
            diff = "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), "committed", "today's output",
                                                  lineterm="", n=1))
            problems.append(f"{where}: example {example.name!r} no longer matches what the commands print:\n{diff}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="only these examples (default: all)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    parser.add_argument("--force", action="store_true",
                        help="rewrite every block and file, even where only what `normalise` masks differs")
    a = parser.parse_args(argv)
    unknown = [n for n in a.names if n not in BY_NAME]
    if unknown:
        parser.error(f"no example {', '.join(unknown)}; examples: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in a.names] if a.names else list(EXAMPLES)
    text = README.read_text()
    marked = blocks(text)
    missing = [e.name for e in chosen if e.name not in marked]
    if missing:
        print(f"README.md has no marker for {', '.join(missing)} (`<!-- example: NAME -->` before its block)",
              file=sys.stderr)
        return 1
    results = {}
    for example in chosen:
        print(f"{example.name}: {len(example.cmds)} command(s)", file=sys.stderr, flush=True)
        results[example.name] = run(example)
    if a.check:
        problems = [p for e in chosen for p in differences(e, results[e.name], text)]
        print("\n\n".join(problems) or "every example matches", file=sys.stderr)
        return 1 if problems else 0
    # What matches after `normalise` stays as committed: a rerun changes nothing but what really changed (the
    # measurements of the machine a block was made on stay with the prose that cites them).
    def same(old: str | None, new: str, example: Example) -> bool:
        return old is not None and not a.force and normalise(old, example) == normalise(new, example)

    new_blocks, changed = {}, []
    for example in chosen:
        r, old = results[example.name], marked[example.name][2]
        new_blocks[example.name] = old if same(old, r.readme, example) else r.readme
        if new_blocks[example.name] != old:
            changed.append(f"README.md ({example.name})")
        path = transcript_path(example.name)
        if example.transcript and r.full != r.readme:
            committed = path.read_text().rstrip("\n") if path.exists() else None
            if not same(committed, r.full, example):
                path.write_text(r.full + "\n")
                changed.append(str(path.relative_to(ROOT)))
        elif path.exists():
            path.unlink()
            changed.append(f"{path.relative_to(ROOT)} (removed)")
    README.write_text(replace_blocks(text, new_blocks))
    print(f"rewrote {', '.join(changed)}; review `git diff README.md docs/examples`" if changed
          else "every example matches already", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
