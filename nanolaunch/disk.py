"""The disk a cloud node needs for one run, term by term; the task asks SkyPilot for it.

On a cloud node: the image, the trainer's environment, the shards streamed onto the node's own disk (the
window ahead of the reader and the validation file; every training file when the run repeats its data),
and the bucket mount's local cache, which holds the checkpoints until they are uploaded and is bounded to
the checkpoints kept plus the one being written. Then a margin, rounded up to 10 GB, and never less than
SkyPilot's default disk: the environment's size is assumed, not yet measured on a node, and a disk that fills
up mid-run costs more than the extra gigabytes.
"""
from __future__ import annotations

import math

from nanolaunch.config import RunConfig

GB = 1e9  # SkyPilot's disk_size and rclone's cache size are in GB
IMAGE_GB = 45  # SkyPilot's own GPU image (sky/clouds/aws.py DEFAULT_AMI_GB)
ENVIRONMENT_GB = 15  # assumed: the trainer's venv with CUDA torch and uv's cache (not yet measured on a node)
STORE_FILES_GB = 2  # the listing and tokenizers in the bucket cache
MARGIN = 0.2
FLOOR_GB = 256  # SkyPilot's default disk_size (sky/resources.py DEFAULT_DISK_SIZE_GB)


def checkpoint_bytes(config: RunConfig) -> float:
    """One checkpoint: fp32 weights, Muon's momentum of the matrices, AdamW's two moments of the embedding
    and head (every rank's share together)."""
    s = config.shape
    return 4 * s.params + 4 * s.matrix_params + 8 * (s.embedding_params + s.head_params)


def plan(config: RunConfig, data: dict) -> dict:
    """The disk terms in GB, the disk_size to ask for and the bucket cache's bound; `data` is the plan's data
    part (shards, epochs, bytes per shard). Shards of unknown size count as nothing and the plan says so."""
    t = config.train
    per_shard = data.get("bytes_per_shard") or 0.0
    repeats = (data.get("epochs") or 0) > 1
    if data.get("shards"):  # the tokenizer reads its files one at a time: never more than the window
        held = (data["shards"] - 1) if repeats or t.keep_data else min(t.fetch_ahead + 1, data["shards"] - 1)
        shards = held + 1  # + validation
    else:
        held = shards = 0
    keep = t.keep_checkpoints or 1  # 0 keeps all: the plan can only count one
    ckpt = checkpoint_bytes(config)
    cache_gb = math.ceil(((keep + 1) * ckpt) / GB + STORE_FILES_GB)
    terms = [
        {"term": "image", "gb": IMAGE_GB, "source": "SkyPilot's GPU image (DEFAULT_AMI_GB)"},
        {"term": "environment", "gb": ENVIRONMENT_GB, "source": "assumed: venv with CUDA torch + uv cache"},
        {"term": "shards", "gb": shards * per_shard / GB,
         "source": (f"{shards} files × {per_shard / 1e6:,.0f} MB ({data.get('bytes_from')}): "
                    + ("every training file (the data repeats) + validation" if repeats or t.keep_data else
                       f"{held} being read or fetched ahead + validation")
                    if per_shard else "no data to stream, or its size is unknown")},
        {"term": "bucket cache", "gb": cache_gb,
         "source": f"{keep} kept + 1 being written × {ckpt / GB:,.1f} GB checkpoints + {STORE_FILES_GB} GB"},
    ]
    need = sum(x["gb"] for x in terms)
    disk_gb = max(FLOOR_GB, int(math.ceil(need * (1 + MARGIN) / 10) * 10))
    return {"terms": terms, "need_gb": need, "margin": MARGIN, "disk_size_gb": disk_gb, "cache_gb": cache_gb,
            "checkpoint_gb": ckpt / GB, "asked": not (config.on_cpu or config.slurm)}
