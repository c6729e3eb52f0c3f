"""Text datasets on the Hugging Face Hub: the files a run reads, fetched by huggingface_hub and verified.

A source is a dataset id plus config, split, text column and revision. `datasets` resolves them to files as
load_dataset would (README configs, split patterns). Parquet files are read directly; other formats (json,
csv, txt, …) are read once by `datasets` and kept as parquet shards with one `text` column. Downloads resume
from huggingface_hub's .incomplete files; each file is checked against the Hub's sha256 and read through
before use, and fetched again if it fails. The token is HF_TOKEN from the environment, never written.

The listing, with characters per shard, is kept as `dataset.json` in the data folder: the planner and the
trainer count shards from the same facts. Characters per shard come from, in order: nanolaunch's record of
the default dataset (trainer/fineweb.py), the dataset card's split size, or a measurement of the first shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer import fineweb

LISTING_FILE = "dataset.json"
CONVERTED = "converted"  # subfolder of parquet shards made from other formats
ROW_GROUP_DOCS = 1024  # documents per row group of a converted shard: the loader's unit of reading
ATTEMPTS = 3  # a dropped connection is resumed from the bytes already on disk


class DataError(ValueError):
    """Data that cannot be fetched, read or split as asked; the message is one line and says why."""


def _datasets():
    """`datasets`, with no usage counts: it would HEAD an S3 URL (not HF_ENDPOINT) for each dataset loaded."""
    import datasets
    from huggingface_hub import constants

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    constants.HF_HUB_DISABLE_TELEMETRY = True
    return datasets


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@dataclass(frozen=True)
class Source:
    repo: str
    config: str | None = None
    split: str = "train"
    column: str = "text"
    revision: str | None = None

    @classmethod
    def of(cls, cfg) -> "Source":
        """The source a TrainConfig names (its `data` must be a dataset id)."""
        return cls(cfg.data, cfg.data_config, cfg.data_split, cfg.text_column, cfg.data_revision)

    def describe(self, revision: str | None = None) -> str:
        rev = revision or self.revision
        return (self.repo + (f":{self.config}" if self.config else "") + (f"@{rev}" if rev else "") +
                (f" split {self.split}" if self.split != "train" else "") +
                (f" column {self.column}" if self.column != "text" else ""))


@dataclass
class Listing:
    """A source at one commit: its training files in order, the validation file, and what is known of size."""
    source: Source
    revision: str
    train: list[str]
    val: str
    val_from: str  # why that file: "the validation split" or "held out: the split's last file"
    format: str  # `datasets`' reader for the files (parquet, json, csv, text, …): parquet is read directly
    sha256: dict[str, str | None]
    chars_per_shard: float | None = None
    chars_from: str | None = None
    val_index: int | None = None  # the val_shard setting this listing was made with
    bytes_per_shard: float | None = None  # the training files' mean size on the Hub (the disk a shard takes)

    @property
    def parquet(self) -> bool:
        return self.format == "parquet"

    @property
    def describe(self) -> str:
        return self.source.describe(self.revision)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Listing":
        d = json.loads(text)
        return cls(**{**d, "source": Source(**d["source"])})


def _hub_error(e: BaseException, source: Source) -> DataError:
    """One line saying which dataset and what to do, for the Hub's refusals."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{constants.ENDPOINT}/datasets/{source.repo}"
    chain, cause = [], e
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    token = bool(os.environ.get("HF_TOKEN"))
    # GatedRepoError is a RepositoryNotFoundError; `datasets` says it in words ("… is a gated dataset on the Hub")
    if any(isinstance(c, GatedRepoError) for c in chain) or "is a gated dataset" in str(e):
        if token:
            return DataError(f"dataset {source.repo} is gated and HF_TOKEN was refused: accept its terms at {where} "
                             "with the account the token belongs to")
        return DataError(f"dataset {source.repo} is gated: accept its terms at {where} and set HF_TOKEN "
                         "in the environment (cloud runs pass it on as a SkyPilot secret)")
    if any(isinstance(c, RevisionNotFoundError) for c in chain):
        return DataError(f"dataset {source.repo} has no revision {source.revision!r} at {where}")
    if any(isinstance(c, RepositoryNotFoundError) for c in chain) or "doesn't exist on the Hub" in str(e):
        return DataError(f"dataset {source.repo} not found at {where}" +
                         ("" if token else " (if it is private, set HF_TOKEN)"))
    return DataError(f"dataset {source.repo}: {_one_line(e)}")


def list_files(source: Source, *, val_index: int | None = None) -> Listing:
    """Resolve the source on the Hub: `datasets` picks the split's files; the sha256 of each comes from the tree."""
    from huggingface_hub import HfApi

    datasets = _datasets()
    try:
        sha = HfApi().dataset_info(source.repo, revision=source.revision).sha
        builder = datasets.load_dataset_builder(source.repo, source.config, revision=sha)
        prefix = f"hf://datasets/{source.repo}@{sha}/"
        files = {str(k): [str(u).removeprefix(prefix) for u in v] for k, v in builder.config.data_files.items()}
        if source.split not in files:
            raise DataError(f"dataset {source.describe()} has no split {source.split!r} (splits: {', '.join(files)})")
        train = list(files[source.split])
        infos = HfApi().get_paths_info(source.repo, sorted({*train, *files.get("validation", [])}),
                                       revision=sha, repo_type="dataset")
    except DataError:
        raise
    except Exception as e:
        raise _hub_error(e, source) from None
    if val_index is not None:
        if not 0 <= val_index < len(train):
            raise DataError(f"val_shard {val_index} is outside {source.describe()}'s {len(train)} files")
        val, val_from = train.pop(val_index), f"held out: file {val_index} of the split"
    elif source.split != "validation" and files.get("validation"):
        val, val_from = files["validation"][0], "the validation split"
    else:
        val, val_from = train.pop(), "held out: the split's last file"
    if not train:
        raise DataError(f"dataset {source.describe()} has one file in split {source.split!r}: nothing left to "
                        "train on after holding one out for validation")
    sizes = [i.size for i in infos if i.path in set(train) and i.size]
    listing = Listing(source, sha, train, val, val_from, format=builder.info.builder_name,
                      sha256={i.path: i.lfs.sha256 if i.lfs else None for i in infos}, val_index=val_index,
                      bytes_per_shard=sum(sizes) / len(sizes) if sizes else None)
    split = (builder.info.splits or {}).get(source.split)
    if fineweb.is_default(source.repo, source.config):
        listing.chars_per_shard, listing.chars_from = fineweb.CHARS_PER_SHARD, fineweb.CHARS_FROM
    elif split is not None and split.num_bytes:
        listing.chars_per_shard = split.num_bytes / len(files[source.split])
        listing.chars_from = "the dataset card's split size"
    return listing


# -- fetching -------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _mark_path(local: Path) -> Path:
    return local.with_name(f".{local.name}.checked")


def _checked(local: Path) -> str | None:
    """The sha256 `local` was found to have, if it has not changed (size, mtime) since."""
    try:
        digest, size, mtime = _mark_path(local).read_text().split()
        st = local.stat()
        return digest if (int(size), int(mtime)) == (st.st_size, st.st_mtime_ns) else None
    except (OSError, ValueError):
        return None


def _mark_checked(local: Path, digest: str | None) -> None:
    if digest:
        st, mark = local.stat(), _mark_path(local)
        tmp = mark.with_name(f"{mark.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n")
        os.replace(tmp, mark)


def verify_parquet(path, column: str = "text", *, full: bool = True) -> int:
    """Raise DataError unless `path` is parquet with a string column `column`; return its row count.
    full=True also decodes every page, which catches damage inside the file, not just truncation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        field = pf.schema_arrow.field(column) if column in names else None
        if field is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise DataError(f"{path.name} has no string column {column!r} (columns: {', '.join(names)}); "
                            "name the text column with --text-column")
        if full:
            for i in range(pf.num_row_groups):
                pf.read_row_group(i, columns=[column])
        return pf.metadata.num_rows
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path.name} is not a readable parquet file: {_one_line(e)}") from None


def _download(listing: Listing, path: str, data_dir: Path) -> Path:
    """One file into data_dir (huggingface_hub's local-dir layout), resumed and checked; fetched afresh
    if what is on disk does not match the Hub's sha256 or cannot be read."""
    import httpx
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    src, force, last = listing.source, False, None
    for attempt in range(ATTEMPTS + 1):
        try:
            local = Path(hf_hub_download(src.repo, path, repo_type="dataset", revision=listing.revision,
                                         local_dir=data_dir, force_download=force))
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise _hub_error(e, src) from None
            last = e
            continue
        except (OSError, httpx.TransportError) as e:  # dropped connection, short file: resume next attempt
            last = e
            continue
        want = listing.sha256.get(path)
        if _checked(local) == want and want:
            return local  # checked before, untouched since: a rerun does not read every shard again
        problem = None
        if want and _sha256(local) != want:
            problem = f"sha256 differs from the Hub's {want[:12]}…"
        elif path.endswith(".parquet"):
            try:
                verify_parquet(local, src.column)
            except DataError as e:
                if not want:
                    problem = str(e)
                else:
                    raise  # the Hub's own bytes: fetching again will not help
        if problem is None:
            _mark_checked(local, want)
            return local
        last, force = DataError(f"{path}: {problem}"), True  # damaged copy: fetch it again from scratch
        local.unlink(missing_ok=True)
    raise DataError(f"{src.repo}/{path}: download failed after {ATTEMPTS + 1} attempts: {_one_line(last)}")


def _convert(listing: Listing, raw: Path, path: str, data_dir: Path) -> Path:
    """A non-parquet file as a parquet shard of its text column, read by `datasets`; written atomically."""
    import pyarrow.parquet as pq

    datasets = _datasets()
    out = shard_path(listing, path, data_dir)
    if out.exists():
        return out
    kind = listing.format
    try:
        ds = datasets.load_dataset(kind, data_files=str(raw), split="train",
                                   cache_dir=str(data_dir / ".datasets-cache"))
    except Exception as e:
        raise DataError(f"{listing.source.repo}/{path}: `datasets` cannot read it as {kind}: {_one_line(e)}") from None
    column = listing.source.column
    if column not in ds.column_names:
        raise DataError(f"{listing.source.repo}/{path} has no column {column!r} (columns: "
                        f"{', '.join(ds.column_names)}); name the text column with --text-column")
    table = ds.data.table.select([column]).rename_columns(["text"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_DOCS)
    os.replace(tmp, out)
    return out


def fetch(listing: Listing, paths: list[str], data_dir, *, workers: int = 4) -> list[Path]:
    """The given repo files as readable shards in data_dir, in parallel; the first failure is raised."""
    data_dir = Path(data_dir)

    def one(path: str) -> Path:
        local = _download(listing, path, data_dir)
        return local if listing.parquet else _convert(listing, local, path, data_dir)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hub-dl") as pool:
        return list(pool.map(one, paths))


def shard_path(listing: Listing, path: str, data_dir) -> Path:
    """Where the readable shard of repo file `path` lies: the file itself, or its converted parquet."""
    if listing.parquet:
        return Path(data_dir) / path
    return Path(data_dir) / CONVERTED / listing.revision[:12] / (path + ".parquet")


def text_column(listing: Listing) -> str:
    """The column the shards carry text in: the source's own for parquet, `text` for converted shards."""
    return listing.source.column if listing.parquet else "text"


def shard_chars(path, column: str) -> int:
    """Characters (≈ UTF-8 bytes) of text in a parquet shard, from its metadata: no pages decoded."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    col = md.schema.names.index(column) if column in md.schema.names else 0
    return sum(md.row_group(i).column(col).total_uncompressed_size for i in range(md.num_row_groups))


def facts(source: Source, store_dir, *, val_index: int | None = None, data_dir=None) -> Listing:
    """The listing with characters per shard, from store_dir/dataset.json when it is for this source, else
    from the Hub (measuring the first training shard, fetched into data_dir, if nothing says its size), then
    kept there."""
    store_dir = Path(store_dir)
    data_dir = Path(data_dir) if data_dir is not None else store_dir
    kept = store_dir / LISTING_FILE
    if kept.is_file():
        try:
            listing = Listing.from_json(kept.read_text())
            if listing.source == source and listing.val_index == val_index:
                return listing
        except (ValueError, TypeError, KeyError):
            pass  # an older or damaged record: resolve again
    listing = list_files(source, val_index=val_index)
    if listing.chars_per_shard is None:
        [first] = fetch(listing, listing.train[:1], data_dir)
        listing.chars_per_shard = float(shard_chars(first, text_column(listing)))
        listing.chars_from = f"measured on {listing.train[0]}"
    store_dir.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
    tmp.write_text(listing.to_json())
    os.replace(tmp, kept)
    return listing

