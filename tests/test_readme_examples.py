"""README.md's generated examples against what the commands print today.

Each example of docs/examples/generate.py runs as the generator runs it (each command a real subprocess, in a
fresh HOME and NANOLAUNCH_HOME, no traffic beyond loopback) and is compared with its committed block, and
with docs/examples/NAME.txt where the README shows an excerpt, after `normalise` (timestamps, the bucket's
random suffix, and the measurements of the machine in the examples that calibrate it)."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "docs" / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _generator()
HINT = ("the committed example is stale: run `.venv/bin/python docs/examples/generate.py {name}` and review "
        "`git diff README.md docs/examples` (the prose around a block may need the same change)")


@pytest.mark.parametrize("name", list(gen.BY_NAME))
def test_readme_example_matches_what_the_commands_print(name, sky_home, tmp_path):
    example = gen.BY_NAME[name]
    result = gen.run(example, tmp_path)
    problems = gen.differences(example, result, gen.README.read_text())
    assert not problems, "\n\n".join(problems) + "\n\n" + HINT.format(name=name)


def test_every_readme_command_is_generated_or_listed_as_pasted_by_hand():
    text = gen.README.read_text()
    assert set(gen.blocks(text)) == set(gen.BY_NAME), "README.md's markers and generate.py's EXAMPLES differ"
    for command, block in gen.readme_commands(text):
        if block is None:
            assert command in gen.HAND_PASTED, (f"README.md shows `$ {command}` with no `<!-- example: NAME -->` "
                                                "before its block: add it to EXAMPLES in docs/examples/generate.py, "
                                                "or to HAND_PASTED with the reason it cannot run there")
        else:
            assert command in [c.shown for c in gen.BY_NAME[block].cmds], (block, command)
    transcripts = {p.stem for p in gen.EXAMPLES_DIR.glob("*.txt")}
    assert transcripts <= set(gen.BY_NAME), f"docs/examples has files of no example: {transcripts - set(gen.BY_NAME)}"


def _committed(name: str, readme: str) -> "gen.Result":
    """A run that printed exactly what is committed (no command is run)."""
    path = gen.transcript_path(name)
    shown = gen.blocks(readme)[name][2]
    return gen.Result(readme=shown, full=path.read_text().rstrip("\n") if path.exists() else shown)


def test_a_changed_number_is_a_difference_and_a_masked_one_is_not():
    readme = gen.README.read_text()
    search = gen.BY_NAME["plan-search"]
    assert gen.differences(search, _committed("plan-search", readme), readme) == []
    edited = readme.replace("cost         $2,681.95 on-demand", "cost         $2,681.96 on-demand", 1)
    assert edited != readme
    problems = gen.differences(search, _committed("plan-search", readme), edited)
    assert len(problems) == 1 and "$2,681.96" in problems[0] and "README.md" in problems[0], problems

    # The calibration's measurements are this machine's: another speed or CPU is no difference, another
    # number of steps is.
    calibration = gen.BY_NAME["plan-calibration"]
    ok = _committed("plan-calibration", readme)
    other_machine = re.sub(r"\(calibration of this machine \((?:[^()]|\([^()]*\))*\)",
                           "(calibration of this machine (Intel(R) Xeon(R) Processor, 4 cores, amx_bf16)", readme)
    other_machine = re.sub(r"[\d,]+ tok/s", "8,332 tok/s", other_machine)
    other_machine = re.sub(r"step time    \S+ ms", "step time    1.2 s", other_machine)
    assert other_machine != readme
    assert gen.differences(calibration, ok, other_machine) == []
    assert gen.differences(calibration, ok, readme.replace("12 steps of cpu_demo", "10 steps of cpu_demo")) != []
