"""The CLI as a user runs it: a real subprocess, its exit code, its output, and what it imported."""
import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "sky", "pandas", "wandb", "datasets")
PROBE = """
import sys
from nanolaunch.cli import main
sys.argv = ["nanolaunch"] + sys.argv[1:]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
""".format(heavy=HEAVY)


def run_and_list_imports(*args, env=None):
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [["--help"], ["plan", "d12"], ["preset", "list"], ["plan", "--preset", "cpu_demo"]])
def test_light_commands_import_nothing_heavy(args):
    r = run_and_list_imports(*args)
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stderr or r.stderr.rstrip().endswith("HEAVY=")


def test_plan_json_keys_and_reference_values():
    r = run_and_list_imports("plan", "d10", "--ratio", "20", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert (p["params"], p["flops_per_token"], p["iterations"], p["tokens"]) == (133038080, 703856640, 5075, 2660761600)
    for key in ("depth model_dim n_heads vocab_size seq_len params flops_per_token tokens iterations total_flops "
                "total_batch device_batch world_size grad_accum train_shards peak_memory_gib gpu_memory_gib fits mfu "
                "step_seconds wall_hours usd_per_hour price_source cost_usd cost_usd_spot").split():
        assert key in p, key


def test_bad_batch_is_one_line_with_the_arithmetic():
    r = run_and_list_imports("plan", "--preset", "a100_d10", "--batch", "48")
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if not l.startswith("HEAVY=")]
    assert len(lines) == 1 and "5.33" in lines[0], r.stderr


@pytest.mark.parametrize("batch, fits", [("64", False), ("32", True)])
def test_a100_fit_prediction(batch, fits):
    p = json.loads(run_and_list_imports("plan", "--preset", "a100_d10", "--batch", batch, "--json").stdout)
    assert p["fits"] is fits and p["gpu_memory_gib"] == 40


def test_plan_text_prints_every_derived_number():
    r = run_and_list_imports("plan", "d34", "--ratio", "40", "--gpu", "H100:8", "--batch", "4")
    assert r.returncode == 0, r.stderr
    for word in ("parameters", "FLOPs/token", "iterations", "total FLOPs", "accum", "shards", "peak memory",
                 "MFU", "step time", "wall time", "price", "cost", "configs that fit"):
        assert word in r.stdout, word


def test_unknown_gpu_and_preset_are_one_line_errors_with_suggestions():
    r = run_and_list_imports("plan", "d12", "--gpu", "H10:8")
    assert r.returncode == 2 and "H100" in r.stderr
    r = run_and_list_imports("preset", "show", "cpu_dem")
    assert r.returncode == 2 and "cpu_demo" in r.stderr


def test_preset_show_json_roundtrips_config():
    p = json.loads(run_and_list_imports("preset", "show", "h100x8_d34", "--json").stdout)
    assert p["config"]["depth"] == 34 and p["config"]["ratio"] == 40 and p["config"]["gpu"] == "H100:8"


def test_prices_lists_a100_and_h100_with_a_source():
    rows = json.loads(run_and_list_imports("prices", "--json").stdout)
    priced = {r["gpu"] for r in rows if r["usd_per_hour"]}
    assert {"A100", "H100"} <= priced
    assert all(r["source"] for r in rows if r["usd_per_hour"])


def test_durations_read_in_one_unit_per_scale():
    from nanolaunch import output as out

    assert [out.seconds(x) for x in (0.2349, 9.04, 12.0, 88.5, None)] == ["235 ms", "9.0 s", "12.0 s", "1.5 min",
                                                                          "unknown"]


def test_ledger_add_records_the_gpu_as_parsed_and_refuses_an_unknown_one(tmp_path):
    from conftest import nl

    bad = nl(tmp_path, "ledger", "add", "d6", "--gpu", "FOO:8", "--wall-minutes", "3")
    assert bad.returncode == 2 and "unknown GPU 'FOO'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    added = nl(tmp_path, "ledger", "add", "d6", "--gpu", "h100:8", "--wall-minutes", "3", "--json")
    assert added.returncode == 0, added.stderr
    row = json.loads(added.stdout)
    assert (row["gpu"], row["gpu_count"]) == ("H100", 8)  # was recorded as "h100"
    assert json.loads(nl(tmp_path, "ledger", "--json").stdout)[0]["gpu"] == "H100"


def test_plan_and_yaml_take_value_embeddings():
    from trainer.arithmetic import ModelShape

    args = ("d4", "--gpu", "H100:1", "--batch", "8", "--iterations", "10")
    p = json.loads(run_and_list_imports("plan", *args, "--value-embeddings", "--json").stdout)
    shape = ModelShape(4, value_embeddings=True)
    assert (p["params"], p["value_embed_params"], p["config"]["value_embeddings"]) == (
        shape.params, shape.value_embed_params, True)
    assert p["verdict"] == "probe first"  # their saved rows are assumed, not counted
    plain = json.loads(run_and_list_imports("plan", *args, "--no-value-embeddings", "--json").stdout)
    assert plain["params"] == ModelShape(4).params and "value_embed_params" not in plain
    task = run_and_list_imports("yaml", *args, "--value-embeddings")
    assert task.returncode == 0, task.stderr
    assert "NL_VALUE_EMBEDDINGS: '1'" in task.stdout  # the trainer on the node gets the setting
