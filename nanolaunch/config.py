"""RunConfig: everything that defines a training run, typed and validated when it is built."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any

from nanolaunch.errors import NanolaunchError
from trainer.arithmetic import (
    DEFAULT_HEAD_DIM, DEFAULT_SEQ_LEN, DEFAULT_TOTAL_BATCH, DEFAULT_VOCAB, ModelShape, ShapeError,
)

DEFAULT_RATIO = 20.0  # Chinchilla-style tokens:params, nanochat's default
DATA_SOURCES = ("hf", "stdlib", "local", "synthetic")  # synthetic: smoke tests, no data
DTYPES = ("auto", "bf16", "fp32")


class ConfigError(NanolaunchError):
    pass


@dataclass(frozen=True)
class RunConfig:
    depth: int
    vocab_size: int = DEFAULT_VOCAB
    seq_len: int = DEFAULT_SEQ_LEN
    head_dim: int = DEFAULT_HEAD_DIM
    total_batch: int = DEFAULT_TOTAL_BATCH
    device_batch: int = 32
    gpu: str = "H100:1"  # KIND[:COUNT per node], SkyPilot accelerator names, or "cpu"
    nodes: int = 1
    ratio: float | None = None
    iterations: int | None = None
    target_flops: float | None = None
    shards: int | None = None  # data shards to fetch (train + 1 validation); None: as many as one epoch needs
    eval_every: int = 250
    eval_tokens: int = 20 * DEFAULT_TOTAL_BATCH
    spot: bool = False
    data_source: str = "hf"
    dtype: str = "auto"
    compile: bool | None = None  # None: on for CUDA, off for CPU
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        for name in ("nodes", "total_batch", "device_batch", "eval_every", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.data_source not in DATA_SOURCES:
            raise ConfigError(f"data_source must be one of {', '.join(DATA_SOURCES)}, got {self.data_source!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.shards is not None and self.shards < 2:
            raise ConfigError(f"shards must be at least 2 (one is held out for validation), got {self.shards}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+(:\d+)?", self.gpu):
            raise ConfigError(f"gpu must look like KIND or KIND:COUNT (e.g. H100:8), got {self.gpu!r}")
        horizons = [x is not None for x in (self.ratio, self.iterations, self.target_flops)]
        if sum(horizons) > 1:
            raise ConfigError("give only one of ratio, iterations or target_flops")
        for name in ("ratio", "iterations", "target_flops"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        try:
            self.shape  # a shape the model cannot have is refused here, not later
        except ShapeError as e:
            raise ConfigError(str(e)) from None

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.depth, self.vocab_size, self.seq_len, self.head_dim)

    @property
    def mode(self) -> tuple[str, bool]:
        """(dtype, compile) as the trainer resolves them: bf16 and compiled on CUDA, fp32 and eager on a CPU."""
        cuda = self.gpu.split(":")[0].lower() != "cpu"
        return (self.dtype if self.dtype != "auto" else "bf16" if cuda else "fp32",
                self.compile if self.compile is not None else cuda)

    @property
    def horizon(self) -> dict:
        """Exactly one horizon for iterations_for(); ratio 20 when none is given."""
        if self.iterations is not None:
            return {"iterations": self.iterations}
        if self.target_flops is not None:
            return {"target_flops": self.target_flops}
        return {"ratio": self.ratio if self.ratio is not None else DEFAULT_RATIO}

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field, None included: what presets and the ledger store."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: dict, where: str) -> "RunConfig":
        """Build from a preset's [config] table; `where` names the file in every error."""
        known = set(cls.field_names())
        for key in mapping:
            if key not in known:
                raise ConfigError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(known))})")
        if "depth" not in mapping:
            raise ConfigError(f"{where}: field 'depth' is required")
        try:
            return cls(**mapping)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Checks one field against its annotation string ('int', 'float | None', ...)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    if value is None:
        if "None" in parts:
            return
        raise ConfigError(f"field {name!r} must not be empty")
    allowed = tuple(t for p in parts if p != "None" for t in _TYPES[p])
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"field {name!r} must be {' or '.join(p for p in parts if p != 'None')}, got {value!r}")
    if not isinstance(value, allowed):
        raise ConfigError(f"field {name!r} must be {' or '.join(p for p in parts if p != 'None')}, got {value!r}")
