"""One trainer config, one hop: every setting reaches the trainer unchanged, by either backend's road."""
import json
import os
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from nanolaunch.backends.local import environment, free_port, run_task
from nanolaunch.events import RunState
from nanolaunch.session import outcome
from nanolaunch.config import RunConfig
from nanolaunch.task import MASTER_PORT_ENV, TEMPLATE, RunOptions, render
from trainer import settings
from trainer.settings import SettingError, TrainConfig

REPO = Path(__file__).resolve().parent.parent


def every_setting_changed(tmp_path) -> dict:
    """A value other than the default for every setting. Of the three horizons only one can be given at a
    time: iterations here, ratio and target_flops in test_each_horizon_round_trips."""
    values = dict(
        depth=2, vocab_size=512, seq_len=64, head_dim=32, value_embeddings=True, device_batch=4, total_batch=512,
        iterations=3,
        matrix_lr=0.03, embedding_lr=0.3, unembedding_lr=0.005, warmup_ratio=0.1, warmdown_ratio=0.3,
        final_lr_frac=0.1, eval_every=2, eval_tokens=1024, checkpoint_every=2, keep_checkpoints=3, seed=7,
        device="cpu", dtype="fp32", compile=False, fused_loss=False, threads=1, data="synthetic", shards=3,
        data_config="sample-10BT", data_split="validation", text_column="content", data_revision="v1.2",
        val_shard=5, tokenizer_chars=1000, fetch_ahead=2, keep_data=True,
        run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), store_dir=str(tmp_path / "store"),
        tokenizer_dir=str(tmp_path / "tok"),
        resume=True, probe=2, probe_data="real", max_cost=100.0, price_per_hour=0.5, memory_limit_gib=8.0,
        wandb_project="nl-settings-test", run_name="every-setting")
    defaults = TrainConfig(depth=1)
    unchanged = [n for n in settings.names() if n not in ("ratio", "target_flops") and
                 values.get(n, getattr(defaults, n)) == getattr(defaults, n) and n != "depth"]
    assert not unchanged, f"add a non-default value for {unchanged}"
    return values


def start_config(log: str) -> dict:
    starts = [json.loads(line) for line in log.splitlines() if line.startswith('{"event": "start"')]
    assert len(starts) == 1, log[-3000:]
    return starts[0]["config"]


def assert_all_arrived(config: dict, sent: dict) -> None:
    for name, value in sent.items():
        assert config[name] == value, f"{name}: sent {value!r}, the trainer has {config[name]!r}"
    assert set(settings.names()) <= set(config)


def test_every_setting_reaches_the_trainer_through_the_local_backend(tmp_path, wandb_offline):
    sent = every_setting_changed(tmp_path)
    config = RunConfig.build(**sent, gpu="cpu")
    task = render(config, RunOptions(master_port=free_port()))
    state = RunState()
    ended = run_task(task, tmp_path / "folder", on_line=state.feed)
    assert outcome(state, ended, tmp_path / "folder" / "train.log").status == "ok", \
        (tmp_path / "folder" / "train.log").read_text()[-3000:]
    assert_all_arrived(state.start["config"], sent)


def test_every_setting_reaches_the_trainer_through_the_rendered_skypilot_task(tmp_path, wandb_offline):
    sent = every_setting_changed(tmp_path)
    config = RunConfig.build(**sent, gpu="H100:1")
    task = yaml.safe_load(yaml.safe_dump(render(config, RunOptions(bucket="nl-test-bucket", master_port=free_port()))))
    assert "file_mounts" in task  # the cloud task, as `sky launch` would get it
    env = {**environment(task, 1), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", task["run"]], cwd=REPO, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_all_arrived(start_config(done.stdout), sent)


@pytest.mark.parametrize("horizon", [{"ratio": 40.0}, {"target_flops": 1e15}, {"iterations": 9}])
def test_each_horizon_round_trips(horizon):
    config = TrainConfig(depth=4, **horizon)
    assert settings.from_sources([], settings.to_env(config)) == config
    flags = [a for k, v in horizon.items() for a in (settings.flag(k), str(v))]
    assert settings.from_sources(["--depth", "4", *flags], {}) == config


def test_environment_then_command_line_over_the_defaults():
    env = {"NL_DEPTH": "6", "NL_RATIO": "40", "NL_DEVICE_BATCH": "8", "NL_SEED": ""}  # empty: not given
    assert settings.from_sources([], env) == TrainConfig(depth=6, ratio=40.0, device_batch=8)
    # a flag wins over its variable; a horizon flag replaces the environment's horizon
    got = settings.from_sources(["--device-batch", "16", "--iterations", "5"], env)
    assert got == TrainConfig(depth=6, iterations=5, device_batch=16)


@pytest.mark.parametrize("argv, env, message", [
    ([], {}, "depth is required"),
    (["--depth", "4", "--device-batch", "0"], {}, "device_batch must be a positive, finite number"),
    (["--depth", "4", "--ratio", "inf"], {}, "--ratio must be a float, got 'inf'"),
    (["--depth", "four"], {}, "--depth must be a whole int"),
    ([], {"NL_DEPTH": "4", "NL_DTYPE": "fp16"}, "dtype must be one of auto, bf16, fp32"),
    (["--depth", "4", "--ratio", "20", "--iterations", "5"], {}, "at most one horizon"),
    (["--depth", "4", "--max-cost", "5"], {}, "max_cost needs price_per_hour"),
    (["--depth", "4", "--shards", "1"], {}, "shards must be at least 2"),
    (["--depth", "5"], {}, "does not split into"),
    (["--depth", "4", "--bogus"], {}, "unrecognized arguments: --bogus"),
])
def test_bad_settings_are_one_line_errors(argv, env, message):
    with pytest.raises(SettingError, match=message) as caught:
        settings.from_sources(argv, env)
    assert "\n" not in str(caught.value)


def test_the_trainer_exits_2_with_one_line_for_bad_settings():
    done = subprocess.run([os.sys.executable, "-m", "trainer.train", "--depth", "4", "--warmup-ratio", "2"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "NL_DEPTH": ""})
    assert done.returncode == 2
    assert done.stderr.strip() == "trainer: error: warmup_ratio must be between 0 and 1, got 2.0"


def test_a_free_machine_has_a_price_of_zero_and_a_budget_that_never_stops_it():
    config = TrainConfig(depth=4, max_cost=1.0, price_per_hour=0.0)  # refused before: the local run crashed
    assert config.price_per_hour == 0.0


def test_the_docs_table_is_the_settings_table():
    doc = (REPO / "docs" / "trainer.md").read_text()
    shown = doc.split("<!-- settings table -->\n", 1)[1].split("\n<!-- end settings table -->", 1)[0]
    assert shown == settings.markdown_table(), "regenerate it with `python -m trainer.settings`"


def test_the_task_template_names_only_settings_and_no_flag_list():
    template = yaml.safe_load(TEMPLATE.read_text())
    for name in template["envs"]:
        assert name == MASTER_PORT_ENV or name[len(settings.ENV_PREFIX):].lower() in settings.names(), name
    assert "--depth" not in template["run"] and "NL_DEPTH" not in template["run"]
    TrainConfig(**settings.from_env(template["envs"]))  # the template's own values are valid settings


def test_presets_and_the_ledger_keep_the_recipe_not_the_run():
    config = RunConfig.build(depth=4, gpu="A100:2").replace(run_dir="/somewhere", probe=3, max_cost=2.0,
                                                             price_per_hour=1.0)
    kept = config.to_dict()
    assert set(kept) == set(settings.names(per_run=False)) | {"gpu", "nodes", "spot", "infra"}
    assert RunConfig.build(**kept) == RunConfig.build(depth=4, gpu="A100:2")
    assert {f.name for f in fields(TrainConfig)} == set(settings.names())
