"""Every trainer setting, defined once: name, type, default, check and help (torch-free).

`TrainConfig` is what the trainer consumes. It is built from three layers, each over the one before:
the defaults below, `NL_<NAME>` environment variables (the one hop from a SkyPilot task's `envs`, so
`sky launch --env NL_DEPTH=20` works with no flag list in between), and the command line
(`--<name-with-dashes>`). The launcher's RunConfig holds one of these and renders it back to the same
`NL_*` variables (`to_env`); docs/trainer.md's settings table is `markdown_table()`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from trainer import fineweb
from trainer.arithmetic import (DEFAULT_HEAD_DIM, DEFAULT_SEQ_LEN, DEFAULT_TOTAL_BATCH, DEFAULT_VOCAB, ModelShape,
                                ShapeError)

ENV_PREFIX = "NL_"
DEFAULT_RATIO = 20.0  # Chinchilla-style tokens:params when no horizon is given (nanochat's default)
HORIZONS = ("iterations", "ratio", "target_flops")
DATASET_ID = r"[\w.-]+(?:/[\w.-]+)?"  # a Hub dataset id: owner/name, or a bare canonical name
BUILT_IN_DATA = ("stdlib", "synthetic")


class SettingError(ValueError):
    """A setting that cannot run; the message is one line and names the setting."""


# Checks: each returns None when the value is fine, else what it must be.
def positive(v):
    return None if 0 < v < float("inf") else "must be a positive, finite number"


def at_least_zero(v):
    return None if v >= 0 else "must be 0 or more"


def fraction(v):
    return None if 0 <= v <= 1 else "must be between 0 and 1"


TOKENIZER_MIN_VOCAB = 257  # a byte-level BPE's 256 bytes + BOS (trainer/tokenizer.py)


def ratio(v):
    return None if 0 < v <= 10_000 else "must be positive and at most 10,000 tokens per parameter"


def at_least_two(v):
    return None if v >= 2 else "must be at least 2 (one shard is held out for validation)"


def data_value(v):
    if v in BUILT_IN_DATA or v.startswith("/") or re.fullmatch(DATASET_ID, v):
        return None
    return "must be a dataset id (owner/name), an absolute folder path, stdlib or synthetic"


def data_kind(value: str) -> str:
    """hub, local, stdlib or synthetic: what `data` names."""
    return value if value in BUILT_IN_DATA else "local" if value.startswith("/") else "hub"


def parse_data(spec: str) -> dict:
    """What a user writes for the data (`--data`), as settings: a built-in name, a folder as its absolute path,
    or a Hub dataset ID[:CONFIG][@REVISION] split into data, data_config and data_revision. The one parser of
    it; `data_kind` is the one classifier of the result."""
    import os

    if spec in BUILT_IN_DATA:
        return {"data": spec}
    if spec.startswith(("/", ".", "~")) or os.path.isdir(spec):
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isdir(path):
            raise SettingError(f"{spec}: no such folder")
        return {"data": path}
    m = re.fullmatch(rf"({DATASET_ID})(?::([\w.-]+))?(?:@([\w./-]+))?", spec)
    if not m:
        raise SettingError(f"{spec!r}: give a dataset as OWNER/NAME[:CONFIG][@REVISION], a folder, stdlib or "
                           "synthetic")
    return {"data": m[1], "data_config": m[2], "data_revision": m[3]}


def data_slug(cfg) -> str:
    """A folder name for a config's data cache: one per Hub dataset and config, per local folder, per built-in."""
    kind = data_kind(cfg.data)
    if kind == "hub":
        return "--".join([cfg.data.replace("/", "--")] + ([cfg.data_config] if cfg.data_config else []))
    if kind == "local":
        import hashlib
        return "local--" + hashlib.sha1(cfg.data.encode()).hexdigest()[:12]
    return kind


def tokenizer_name(cfg, commit: str | None = None) -> str:
    """The folder in the store of the tokenizer a config trains: one per dataset commit (Hub data), vocabulary and
    character budget, so a later run on the same data reuses it."""
    return "_".join(["tokenizer", *([commit[:12]] if commit else []), f"v{cfg.vocab_size}", f"c{cfg.tokenizer_chars}"])


def setting(default: Any, help: str, group: str, *, check=None, choices: tuple = (), per_run: bool = False):
    """A field of TrainConfig. `per_run`: where and how this one run happens (paths, probe, budget,
    logging), set by the launcher for each run; the rest is the recipe that presets and the ledger keep."""
    return field(default=default, metadata={"help": help, "group": group, "check": check, "choices": choices,
                                            "per_run": per_run})


@dataclass(frozen=True)
class TrainConfig:
    # model
    depth: int | None = setting(None, "layers; model_dim = 64·depth (required)", "model", check=positive)
    vocab_size: int = setting(DEFAULT_VOCAB, "tokenizer and model vocabulary, special tokens included", "model",
                              check=positive)
    seq_len: int = setting(DEFAULT_SEQ_LEN, "tokens per sequence", "model", check=positive)
    head_dim: int = setting(DEFAULT_HEAD_DIM, "head width; heads = ⌈model_dim / head_dim⌉", "model", check=positive)
    value_embeddings: bool = setting(False, "nanochat's value embeddings: a gated (vocab × d) table added to v on "
                                     "every other layer, the last included (off: the records' shape)", "model")
    # batch and horizon
    device_batch: int = setting(32, "sequences per device per micro-step", "batch", check=positive)
    total_batch: int = setting(DEFAULT_TOTAL_BATCH, "tokens per optimizer step (all ranks, all micro-steps)",
                               "batch", check=positive)
    iterations: int | None = setting(None, "horizon: optimizer steps (at most one horizon)", "batch", check=positive)
    ratio: float | None = setting(None, f"horizon: tokens = ratio × params ({DEFAULT_RATIO:g} when none is given)",
                                  "batch", check=ratio)
    target_flops: float | None = setting(None, "horizon: training FLOPs = flops_per_token × tokens", "batch",
                                         check=positive)
    # optimizer
    matrix_lr: float = setting(0.02, "Muon learning rate (block matrices)", "optimizer", check=positive)
    embedding_lr: float = setting(0.2, "AdamW embedding learning rate, × (d/768)^-0.5", "optimizer", check=positive)
    unembedding_lr: float = setting(0.004, "AdamW head learning rate, × (d/768)^-0.5", "optimizer", check=positive)
    warmup_ratio: float = setting(0.0, "share of steps warming the LR up", "optimizer", check=fraction)
    warmdown_ratio: float = setting(0.2, "share of steps decaying the LR at the end", "optimizer", check=fraction)
    final_lr_frac: float = setting(0.0, "LR multiplier at the last step", "optimizer", check=fraction)
    # evaluation
    eval_every: int = setting(250, "steps between val_bpb evaluations (≤0: only at the end)", "evaluation")
    eval_tokens: int = setting(20 * DEFAULT_TOTAL_BATCH, "validation tokens per evaluation, all ranks together",
                               "evaluation", check=positive)
    # checkpoints and seed
    checkpoint_every: int = setting(500, "steps between checkpoints (≤0: only at the end)", "run")
    keep_checkpoints: int = setting(2, "newest complete checkpoints kept (0: all)", "run", check=at_least_zero)
    seed: int = setting(0, "init and data order", "run")
    # system
    device: str = setting("auto", "auto: CUDA when available", "system", choices=("auto", "cpu", "cuda"))
    dtype: str = setting("auto", "auto: bf16 autocast where bf16 matrix products are native and faster (compute "
                         "capability ≥ 8.0; a CPU with AVX512-BF16/AMX, measured once), else fp32", "system",
                         choices=("auto", "bf16", "fp32"))
    compile: bool | None = setting(None, "torch.compile the model and Newton–Schulz (unset: on for CUDA, off for CPU)",
                                   "system")
    fused_loss: bool | None = setting(None, "chunked head+softcap+loss (unset: on for CPU, off for CUDA)", "system")
    threads: int | None = setting(None, "torch threads per process (unset: cores / local processes)", "system",
                                  check=positive)
    # data
    data: str = setting(fineweb.REPO, "a Hugging Face dataset id, a local folder of *.parquet or *.txt files "
                        "(absolute path; the last file is validation), stdlib (the Python standard-library corpus) or "
                        "synthetic (arithmetic sequences: tests, probes)", "data", check=data_value)
    data_config: str | None = setting(None, "Hub dataset: its config (subset), as load_dataset's name", "data")
    data_split: str = setting("train", "Hub dataset: the split to train on", "data")
    text_column: str = setting("text", "Hub dataset: the column holding the text", "data")
    data_revision: str | None = setting(None, "Hub dataset: branch, tag or commit (unset: main, pinned to its "
                                        "commit on first use)", "data")
    shards: int | None = setting(None, "Hub dataset: files to fetch, validation included (unset: as one epoch "
                                 "needs)", "data", check=at_least_two)
    val_shard: int | None = setting(None, "Hub dataset: index of the held-out file (unset: the validation split, "
                                    "else the last file)", "data", check=at_least_zero)
    tokenizer_chars: int = setting(2_000_000_000, "characters for tokenizer training (the first training files, in "
                                   "order)", "data", check=positive)
    fetch_ahead: int = setting(4, "Hub dataset: shards fetched ahead of the one being read", "data", check=positive)
    # this run: set by the launcher for each run
    run_dir: str = setting("run", "checkpoints, result.json", "run", per_run=True)
    data_dir: str = setting("data", "fetched or built shards go here (a node's own disk)", "data", per_run=True)
    store_dir: str | None = setting(None, "kept across runs: the dataset listing and tokenizers (unset: DATA_DIR)",
                                    "data", per_run=True)
    keep_data: bool = setting(False, "Hub dataset: keep shards once read (off: deleted when every rank of the "
                              "node is past them, unless the run repeats its data)", "data", per_run=True)
    tokenizer_dir: str | None = setting(None, "unset: STORE_DIR/tokenizer_<commit>_v<VOCAB>_c<CHARS>; trained there "
                                        "if missing", "data", per_run=True)
    resume: bool = setting(False, "continue from the newest complete checkpoint in run_dir, if any", "run",
                           per_run=True)
    probe: int | None = setting(None, "time N steps: no eval, no checkpoints", "run", check=positive, per_run=True)
    probe_data: str = setting("synthetic", "probe batches: synthetic (no data needed) or real", "run",
                              choices=("synthetic", "real"), per_run=True)
    max_cost: float | None = setting(None, "USD; stop (checkpoint, over_budget) when reached", "run", check=positive,
                                     per_run=True)
    price_per_hour: float | None = setting(None, "USD per hour of this process group (0: free, never over budget)",
                                           "run", check=at_least_zero, per_run=True)
    memory_limit_gib: float | None = setting(None, "cap memory: RLIMIT_AS on CPU, the allocator's share on CUDA",
                                             "system", check=positive, per_run=True)
    wandb_project: str | None = setting(None, "log to this W&B project (key: WANDB_API_KEY)", "run", per_run=True)
    run_name: str | None = setting(None, "W&B run name", "run", per_run=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, f.type)
            if value is None:
                continue
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                raise SettingError(f"{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
            problem = f.metadata["check"] and f.metadata["check"](value)
            if problem:
                raise SettingError(f"{f.name} {problem}, got {value!r}")
        if self.depth is None:
            raise SettingError(f"depth is required (--depth or {env_name('depth')})")
        given = [h for h in HORIZONS if getattr(self, h) is not None]
        if len(given) > 1:
            raise SettingError(f"give at most one horizon of iterations, ratio or target_flops, got {', '.join(given)}")
        if self.max_cost is not None and self.price_per_hour is None:
            raise SettingError("max_cost needs price_per_hour")
        if self.vocab_size < TOKENIZER_MIN_VOCAB and data_kind(self.data) != "synthetic":
            raise SettingError(f"vocab_size must be at least {TOKENIZER_MIN_VOCAB} (256 bytes + the BOS token) for a "
                               f"tokenizer of real text, got {self.vocab_size}")
        try:
            self.shape  # a shape the model cannot have is refused here, not later
        except ShapeError as e:
            raise SettingError(str(e)) from None

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.depth, self.vocab_size, self.seq_len, self.head_dim, self.value_embeddings)

    @property
    def horizon(self) -> dict:
        """Exactly one horizon, as arithmetic.iterations_for takes it; ratio 20 when none is given."""
        for h in HORIZONS:
            if getattr(self, h) is not None:
                return {h: getattr(self, h)}
        return {"ratio": DEFAULT_RATIO}

    def replace(self, **changes: Any) -> "TrainConfig":
        if any(h in changes for h in HORIZONS):  # a new horizon replaces the old one
            changes = {**{h: None for h in HORIZONS}, **changes}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recipe(self) -> dict:
        """The settings that define the training, without where and how this one run happens."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata["per_run"]}


def names(per_run: bool | None = None) -> list[str]:
    return [f.name for f in fields(TrainConfig) if per_run is None or f.metadata["per_run"] == per_run]


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- text <-> values (environment variables and flags are text) -------------------------------------------
def _kinds(annotation: str) -> list[str]:
    return [p.strip() for p in str(annotation).split("|") if p.strip() != "None"]


def _parse(name: str, text: str, annotation: str):
    kind = _kinds(annotation)[0]
    try:
        if kind == "bool":
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            value = float(text) if "e" in text.lower() else int(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise SettingError(f"{name} must be {'a' if kind != 'int' else 'a whole'} {kind}, got {text!r}") from None
    return text


def _text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def to_env(config: TrainConfig) -> dict[str, str]:
    """Every setting that has a value, as the NL_* variables `from_sources` reads back unchanged."""
    return {env_name(k): _text(v) for k, v in config.to_dict().items() if v is not None}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as NL_* variables; an empty one counts as not given."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    return {n: _parse(env_name(n), environ[env_name(n)], types[n])
            for n in types if environ.get(env_name(n), "").strip()}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line (argparse prints the whole usage and exits otherwise)
        raise SettingError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainer.train", argument_default=argparse.SUPPRESS,
                description=f"Pretrain a nanochat-style GPT. Every flag can also be given as {ENV_PREFIX}<NAME>.")
    groups: dict[str, Any] = {}
    for f in fields(TrainConfig):
        group = groups.setdefault(f.metadata["group"], p.add_argument_group(f.metadata["group"]))
        kind = _kinds(f.type)[0]
        extra: dict[str, Any] = {"help": f"{f.metadata['help']} [{env_name(f.name)}]"}
        if kind == "bool":
            extra["action"] = argparse.BooleanOptionalAction
        else:
            extra["type"] = str  # parsed and checked by TrainConfig, as environment variables are
            extra["metavar"] = f.name.upper()
        group.add_argument(flag(f.name), dest=f.name, **extra)
    return p


def from_sources(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Defaults < NL_* environment < command line. A horizon on the command line replaces the environment's."""
    import os
    import sys

    environ = os.environ if environ is None else environ
    given = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    types = {f.name: f.type for f in fields(TrainConfig)}
    cli = {k: v if isinstance(v, bool) else _parse(flag(k), v, types[k]) for k, v in given.items()}
    values = from_env(environ)
    if any(h in cli for h in HORIZONS):
        values = {k: v for k, v in values.items() if k not in HORIZONS}
    return TrainConfig(**{**values, **cli})


def from_mapping(mapping: Mapping[str, Any], where: str) -> TrainConfig:
    """From a preset's or ledger row's table; `where` names it in every error."""
    known = set(names())
    unknown = [k for k in mapping if k not in known]
    if unknown:
        raise SettingError(f"{where}: unknown setting {unknown[0]!r}")
    try:
        return TrainConfig(**mapping)
    except SettingError as e:
        raise SettingError(f"{where}: {e}") from None


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """One value against its annotation string ('int', 'float | None', ...)."""
    kinds = _kinds(annotation)
    if value is None:
        return  # an unset optional; a required one (depth) is checked by name
    allowed = tuple(t for k in kinds for t in _TYPES[k])
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise SettingError(f"{name} must be {' or '.join(kinds)}, got {value!r}")


def markdown_table() -> str:
    """docs/trainer.md's settings table (tests/test_settings.py keeps the doc equal to this)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(TrainConfig):
        default = "required" if f.name == "depth" else "unset" if f.default is None else _text(f.default)
        meaning = f.metadata["help"] + (f" ({' / '.join(f.metadata['choices'])})" if f.metadata["choices"] else "")
        kind = _kinds(f.type)[0]
        shown = f"`{flag(f.name)}` / `--no-{f.name.replace('_', '-')}`" if kind == "bool" else f"`{flag(f.name)}`"
        rows.append(f"| {shown} | `{env_name(f.name)}` | {default} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m trainer.settings > table: what docs/trainer.md shows
    print(markdown_table())
