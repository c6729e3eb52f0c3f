"""RunConfig: the trainer's own TrainConfig plus where it runs (GPU spec, nodes, spot), validated when built.

The GPU spec ("H100:8") is parsed here, once; everything after uses `accelerator` and `gpus_per_node`.
Presets and the ledger store `to_dict()`: the training recipe (trainer/settings.py) and the launcher fields,
flat, as a preset's [config] table reads.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from nanolaunch import gpus
from nanolaunch.errors import NanolaunchError
from trainer import settings
from trainer.arithmetic import ModelShape
from trainer.settings import SettingError, TrainConfig

LAUNCHER_FIELDS = ("gpu", "nodes", "spot", "infra")
SLURM = "slurm"


class ConfigError(NanolaunchError):
    pass


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig
    gpu: str = "H100:1"  # KIND[:COUNT per node], SkyPilot accelerator names, or "cpu"
    nodes: int = 1
    spot: bool = False
    infra: str | None = None  # SkyPilot's infra: None for any enabled cloud, "aws", "slurm/NAME", ...
    accelerator: gpus.GPU = field(init=False, repr=False, compare=False)
    gpus_per_node: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if not isinstance(self.gpu, str):
            raise ConfigError(f"gpu must be text like H100:8, got {self.gpu!r}")
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise ConfigError(f"nodes must be a whole number of at least 1, got {self.nodes!r}")
        if not isinstance(self.spot, bool):
            raise ConfigError(f"spot must be true or false, got {self.spot!r}")
        if self.infra is not None and not re.fullmatch(r"[a-z0-9-]+(/[A-Za-z0-9_.*-]+)*", str(self.infra)):
            raise ConfigError(f"infra must look like slurm/NAME, aws or gcp/REGION, got {self.infra!r}")
        if self.slurm and self.spot:
            raise ConfigError("spot: a Slurm cluster has no spot nodes")
        try:
            kind, per_node = gpus.parse_gpu_spec(self.gpu)
        except NanolaunchError as e:
            raise ConfigError(str(e)) from None
        canonical = gpus.CPU_NAME if kind.name == gpus.CPU_NAME and per_node == 1 else f"{kind.name}:{per_node}"
        object.__setattr__(self, "gpu", canonical)
        object.__setattr__(self, "accelerator", kind)
        object.__setattr__(self, "gpus_per_node", per_node)

    @property
    def slurm(self) -> bool:
        """Runs on a Slurm cluster through SkyPilot: storage is a shared path, not a bucket."""
        return bool(self.infra) and self.infra.split("/")[0] == SLURM

    @property
    def on_cpu(self) -> bool:
        return self.accelerator.name == gpus.CPU_NAME

    @property
    def on_this_cpu(self) -> bool:
        """Runs on this machine's CPU (not a Slurm node's): its speed is this machine's."""
        return self.on_cpu and not self.slurm

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def shape(self) -> ModelShape:
        return self.train.shape

    @property
    def mode(self) -> tuple[str, bool]:
        """(dtype, compile) as the trainer resolves them: bf16 and compiled on CUDA, fp32 and eager on a CPU."""
        t, cuda = self.train, not self.on_cpu
        return (t.dtype if t.dtype != "auto" else "bf16" if cuda else "fp32",
                t.compile if t.compile is not None else cuda)

    def replace(self, **changes: Any) -> "RunConfig":
        """Changes to launcher fields and trainer settings alike, by name."""
        launcher = {k: changes.pop(k) for k in LAUNCHER_FIELDS if k in changes}
        try:
            train = self.train.replace(**changes) if changes else self.train
        except SettingError as e:
            raise ConfigError(str(e)) from None
        except TypeError as e:  # an unknown name
            raise ConfigError(str(e)) from None
        return dataclasses.replace(self, train=train, **launcher)

    def to_dict(self) -> dict:
        """The recipe (no per-run paths or budgets) and the launcher fields, None included."""
        return {**self.train.recipe(), **{k: getattr(self, k) for k in LAUNCHER_FIELDS}}

    @classmethod
    def build(cls, **values: Any) -> "RunConfig":
        """From flat names, as presets, the ledger and the CLI give them."""
        launcher = {k: values.pop(k) for k in LAUNCHER_FIELDS if k in values}
        source, _ = values.pop("data_source", None), values.pop("data_url", None)  # before `data` (ledger rows)
        if source in settings.BUILT_IN_DATA:
            values.setdefault("data", source)
        try:
            return cls(TrainConfig(**values), **launcher)
        except SettingError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def field_names(cls) -> list[str]:
        return [*settings.names(per_run=False), *LAUNCHER_FIELDS]

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
            return cls.build(**mapping)
        except NanolaunchError as e:
            raise ConfigError(f"{where}: {e}") from None
