"""The private names nanolaunch takes from other packages were checked on the installed releases."""
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

from nanolaunch import compat

REPO = Path(__file__).resolve().parents[1]


def test_installed_releases_are_the_checked_ones():
    for package, (low, high) in compat.CHECKED.items():
        assert Version(low) <= Version(version(package)) < Version(high), \
            f"{package} {version(package)} was never checked: read nanolaunch/compat.py's names in it, then move the range"


def test_pyproject_allows_only_the_checked_releases():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, (low, high) in compat.CHECKED.items():
        spec = next(d for d in deps if re.match(rf"{package}(\[[^\]]*\])?[<>=]", d))
        assert f">={low}" in spec and f"<{high}" in spec, spec


def test_a_command_without_its_subcommand_prints_help_not_an_error(capsys):
    import pytest

    from nanolaunch import cli

    with pytest.raises(SystemExit) as e:
        import sys
        argv, sys.argv = sys.argv, ["nanolaunch", "preset"]
        try:
            cli.main()
        finally:
            sys.argv = argv
    assert e.value.code in (0, 2)
    assert "error" not in capsys.readouterr().err.lower()


def test_from_the_repo_root_import_sky_is_skypilot():
    """No folder of the repo shadows SkyPilot's package (`sky/` once did: `to_task` failed with "module 'sky' has
    no attribute 'Task'" wherever SkyPilot was absent)."""
    import subprocess
    import sys

    found = subprocess.run([sys.executable, "-c", "import sky; print(sky.__file__)"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert "site-packages" in found and not found.startswith(str(REPO / "sky"))
