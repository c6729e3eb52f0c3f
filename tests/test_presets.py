"""Presets: built-ins load, derive from each other, and bad files fail in one line naming file and field."""
import pytest

from nanolaunch import presets
from nanolaunch.config import ConfigError
from nanolaunch.errors import NanolaunchError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAUNCH_HOME", str(tmp_path))
    (tmp_path / "presets").mkdir()
    return tmp_path


def test_builtins_load_with_provenance():
    assert {"a100_d10", "h100_d12", "h100x8_d34", "cpu_demo"} <= set(presets.names())
    for name in presets.names():
        p = presets.load(name)
        assert p.provenance.get("source"), name


def test_derived_preset_inherits_config_not_results():
    base, derived = presets.load("a100_d10"), presets.load("h100_d12")
    assert derived.config.train.depth == 12 and derived.config.gpu == "H100:1"
    assert derived.config.train.iterations == base.config.train.iterations == 1500
    assert "mfu" not in derived.results and base.results["mfu"] == 0.55


def test_unknown_field_names_file_and_field(home):
    path = home / "presets" / "mine.toml"
    path.write_text('[config]\ndepth = 4\ndevice_bach = 8\n')
    with pytest.raises(ConfigError, match=r"mine\.toml.*'device_bach'"):
        presets.load("mine")


def test_wrong_type_names_file_and_field(home):
    (home / "presets" / "mine.toml").write_text('[config]\ndepth = "four"\n')
    with pytest.raises(ConfigError, match=r"mine\.toml: depth must be int, got 'four'"):
        presets.load("mine")
    (home / "presets" / "mine.toml").write_text('[config]\ndepth = 4\n[results]\nmfu = "high"\n')
    with pytest.raises(ConfigError, match=r"mine\.toml.*results\.mfu"):
        presets.load("mine")


def test_malformed_toml_is_one_line(home):
    (home / "presets" / "broken.toml").write_text("[config\ndepth = 4\n")
    with pytest.raises(ConfigError) as e:
        presets.load("broken")
    assert "broken.toml" in str(e.value) and "\n" not in str(e.value)


def test_unknown_name_suggests_nearest():
    with pytest.raises(NanolaunchError, match="a100_d10"):
        presets.load("a100_d12")


def test_derivation_cycle_is_refused(home):
    (home / "presets" / "x.toml").write_text('base = "y"\n[config]\ndepth = 4\n')
    (home / "presets" / "y.toml").write_text('base = "x"\n[config]\ndepth = 4\n')
    with pytest.raises(NanolaunchError, match="derives from itself"):
        presets.load("x")


def test_promoted_preset_cannot_shadow_a_builtin(home):
    (home / "presets" / "a100_d10.toml").write_text('[config]\ndepth = 2\n')
    assert presets.load("a100_d10").config.train.depth == 10
