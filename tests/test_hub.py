"""Hub datasets through the real huggingface_hub and datasets code, against the Hub served on loopback
(tests/hub_server.py; HF_ENDPOINT is set in conftest): listing, download, resume, corruption, gated access,
formats other than parquet, and the planner's data line for datasets of different sizes."""
import hashlib
import io
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loopback_guard
from conftest import nl
from trainer import hub as hub_data
from trainer.data import TokenLoader, iter_documents
from trainer.hub import DataError, Source


@pytest.fixture(autouse=True)
def loopback_only(tmp_path, monkeypatch):
    """Here and in every process a test starts: connections beyond loopback fail, and are logged to fail the test."""
    log = tmp_path / "network.log"
    monkeypatch.setenv("NL_TEST_NETWORK_LOG", str(log))
    for name in ("HF_UPDATE_DOWNLOAD_COUNTS", "HF_HUB_DISABLE_TELEMETRY"):  # trainer/hub.py's own settings count
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent / "loopback_only"),
                                                      os.environ.get("PYTHONPATH", "")]))
    loopback_guard.install(monkeypatch.setattr)
    yield
    assert not log.exists(), log.read_text()


def parquet(texts, column="text", row_group=50) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), out, row_group_size=row_group)
    return out.getvalue()


def docs(shard: int, n: int = 200) -> list[str]:
    return [f"document {j} of shard {shard}: " + "the quick brown fox jumps over the lazy dog. " * (1 + j % 5)
            for j in range(n)]


def add_parquet(hub, repo, n_files=4, **kw):
    return hub.add(repo, {f"data/train-{i:05d}-of-{n_files:05d}.parquet": parquet(docs(i)) for i in range(n_files)},
                   **kw)


def test_listing_download_and_the_kept_facts(hub, tmp_path):
    repo = add_parquet(hub, "tests/listing")
    listing = hub_data.facts(Source("tests/listing"), tmp_path)
    assert listing.revision == repo.sha and listing.parquet
    assert listing.train == [f"data/train-{i:05d}-of-00004.parquet" for i in range(3)]
    assert listing.val == "data/train-00003-of-00004.parquet" and "held out" in listing.val_from
    first = tmp_path / listing.train[0]
    assert listing.chars_from == f"measured on {listing.train[0]}"
    assert listing.chars_per_shard == hub_data.shard_chars(first, "text") > 0
    assert listing.sha256[listing.val] == hashlib.sha256(repo.files[listing.val]).hexdigest()
    # kept: the same facts again without asking the Hub
    asked = len(hub.log)
    assert hub_data.facts(Source("tests/listing"), tmp_path) == listing and len(hub.log) == asked
    paths = hub_data.fetch(listing, listing.train + [listing.val], tmp_path)
    assert [p.read_bytes() for p in paths] == [repo.files[p] for p in listing.train + [listing.val]]
    # fetched files are neither fetched nor read through again (a rerun on 1,775 shards would read them all)
    asked = sum(len(hub.gets("tests/listing", p)) for p in repo.files)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hub_data, "_sha256", lambda path: pytest.fail(f"{path} hashed again"))
        hub_data.fetch(listing, listing.train, tmp_path)
    assert sum(len(hub.gets("tests/listing", p)) for p in repo.files) == asked


def test_an_interrupted_download_resumes_from_where_it_stopped(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # 10 MiB chunks: this file would be one
    noise = [random.Random(i).randbytes(300).hex() for i in range(1000)]  # ~600 kB that does not compress
    repo = hub.add("tests/resume", {"a.parquet": parquet(noise), "b.parquet": parquet(docs(1))})
    listing = hub_data.list_files(Source("tests/resume"))
    name = listing.train[0]
    half = len(repo.files[name]) // 2
    hub.cut_after[name] = half  # the first GET is cut off after half the file
    [path] = hub_data.fetch(listing, [name], tmp_path)
    assert path.read_bytes() == repo.files[name]
    ranges = hub.gets(listing.source.repo, name)
    assert ranges[0] is None and len(ranges) == 2, ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= half  # the second asks for the rest only (from the last whole chunk received)


def test_a_download_cut_off_in_a_killed_process_resumes_in_the_next(hub, tmp_path, monkeypatch):
    """No second attempt in the first process (as when it is killed): the next fetch continues the bytes on disk."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    noise = [random.Random(i).randbytes(300).hex() for i in range(1000)]
    repo = hub.add("tests/killed", {"a.parquet": parquet(noise), "b.parquet": parquet(docs(1))})
    listing = hub_data.list_files(Source("tests/killed"))
    hub.cut_after["a.parquet"] = len(repo.files["a.parquet"]) // 2
    monkeypatch.setattr(hub_data, "ATTEMPTS", 0)
    with pytest.raises(DataError, match="a.parquet: download failed after 1 attempts"):
        hub_data.fetch(listing, ["a.parquet"], tmp_path)
    assert not (tmp_path / "a.parquet").exists()  # never a half file under the real name
    [path] = hub_data.fetch(listing, ["a.parquet"], tmp_path)
    assert path.read_bytes() == repo.files["a.parquet"]
    first, second = hub.gets("tests/killed", "a.parquet")
    assert first is None and second.startswith("bytes=") and second != "bytes=0-"


def test_a_corrupted_download_is_detected_and_fetched_again(hub, tmp_path):
    repo = add_parquet(hub, "tests/corrupt", n_files=2)
    listing = hub_data.list_files(Source("tests/corrupt"))
    name = listing.train[0]
    hub.damage("tests/corrupt", name, times=1)  # same size, one byte flipped: only the sha256 tells
    [path] = hub_data.fetch(listing, [name], tmp_path)
    assert path.read_bytes() == repo.files[name]
    assert len(hub.gets(listing.source.repo, name)) == 2
    # damaged on disk later (the download's metadata still matches): checked, and fetched again
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    [path] = hub_data.fetch(listing, [name], tmp_path)
    assert path.read_bytes() == repo.files[name] and len(hub.gets(listing.source.repo, name)) == 3


def test_a_file_damaged_on_the_hub_itself_fails_with_one_line(hub, tmp_path):
    add_parquet(hub, "tests/always-bad", n_files=2)
    listing = hub_data.list_files(Source("tests/always-bad"))
    hub.damage("tests/always-bad", listing.train[0], times=100)
    with pytest.raises(DataError, match=r"download failed after \d attempts: .*sha256") as e:
        hub_data.fetch(listing, listing.train[:1], tmp_path)
    assert "\n" not in str(e.value)


def test_a_gated_dataset_is_refused_without_a_token_and_served_with_one(hub, tmp_path, monkeypatch):
    add_parquet(hub, "tests/gated", n_files=2, gated=True)
    with pytest.raises(DataError) as e:
        hub_data.facts(Source("tests/gated"), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "tests/gated is gated" in msg and "set HF_TOKEN" in msg
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(DataError, match="HF_TOKEN was refused"):
        hub_data.facts(Source("tests/gated"), tmp_path)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    listing = hub_data.facts(Source("tests/gated"), tmp_path)
    assert (tmp_path / listing.train[0]).is_file()
    assert hub.token not in (tmp_path / hub_data.LISTING_FILE).read_text()


def test_unknown_datasets_revisions_splits_and_columns_are_one_line_errors(hub, tmp_path):
    add_parquet(hub, "tests/errors", n_files=2)
    for source, words in [(Source("tests/no-such-dataset"), "not found"),
                          (Source("tests/errors", revision="v9"), "has no revision 'v9'"),
                          (Source("tests/errors", split="test"), r"has no split 'test' \(splits: train\)")]:
        with pytest.raises(DataError, match=words) as e:
            hub_data.facts(source, tmp_path / "x")
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no string column 'body'.*--text-column"):
        hub_data.facts(Source("tests/errors", column="body"), tmp_path / "y")


def test_a_json_lines_dataset_with_a_validation_split_becomes_parquet_shards(hub, tmp_path):
    def lines(prefix, n):
        return "".join(json.dumps({"content": f"{prefix} {i}: " + "some words " * i, "n": i}) + "\n"
                       for i in range(n)).encode()
    hub.add("tests/jsonl", {"data/train-0.jsonl": lines("a", 300), "data/train-1.jsonl": lines("b", 300),
                            "data/validation-0.jsonl": lines("v", 40), "README.md": b"# a json lines dataset\n"})
    listing = hub_data.facts(Source("tests/jsonl", column="content"), tmp_path)
    assert not listing.parquet and listing.format == "json"
    assert listing.val == "data/validation-0.jsonl" and listing.val_from == "the validation split"
    assert listing.train == ["data/train-0.jsonl", "data/train-1.jsonl"]
    shards = hub_data.fetch(listing, listing.train + [listing.val], tmp_path)
    assert [s.suffix for s in shards] == [".parquet"] * 3
    assert list(iter_documents(shards[2:], column="text")) == [f"v {i}: " + "some words " * i for i in range(40)]
    assert pq.ParquetFile(shards[0]).num_row_groups == 1  # 300 documents: one row group of ≤1,024


def test_a_plain_text_dataset_reads_one_document_per_line(hub, tmp_path, tokenizer):
    text = "\n".join(f"line {i} of a text file with a few words" for i in range(500)).encode()
    hub.add("tests/txt", {"train/a.txt": text, "train/b.txt": text, "train/c.txt": text})
    listing = hub_data.facts(Source("tests/txt"), tmp_path)
    shards = hub_data.fetch(listing, listing.train + [listing.val], tmp_path)
    loader = TokenLoader(shards[:-1], tokenizer, 2, 16, column=hub_data.text_column(listing))
    x, y = loader.next_batch()
    assert x.shape == (2, 16)
    loader.close()


def test_the_card_says_the_split_size(hub, tmp_path):
    card = b"---\ndataset_info:\n  splits:\n  - name: train\n    num_bytes: 400000000\n    num_examples: 1000\n---\n"
    hub.add("tests/carded", {"README.md": card, **{f"data/train-{i}.parquet": parquet(docs(i)) for i in range(4)}})
    listing = hub_data.facts(Source("tests/carded"), tmp_path)
    assert listing.chars_per_shard == 100_000_000 and listing.chars_from == "the dataset card's split size"
    assert not any((tmp_path / p).exists() for p in listing.train)  # nothing had to be measured


def plan_json(home, *args):
    r = nl(home, "plan", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_plan_data_lines_for_the_default_and_two_more_datasets(hub, tmp_path):
    home = tmp_path / "home"
    seed = plan_json(home, "--preset", "a100_d10")
    assert (seed["shards"], seed["dataset_files"], seed["train_shards"]) == (18, 1823, 16)
    assert seed["repeat_above_chars_per_token"] > 5.0 and seed["epochs"] < 1  # one epoch at up to 5 chars/token
    text = nl(home, "plan", "--preset", "a100_d10").stdout
    assert "18 of 1,823 shards (17 train + 1 val) of karpathy/fineweb-edu-100b-shuffle" in text
    # a dataset whose card gives 100M characters per file: a100_d10's 786M tokens need 40 of its 50 files
    card = b"---\ndataset_info:\n  splits:\n  - name: train\n    num_bytes: 5000000000\n---\n"
    hub.add("tests/fifty", {"README.md": card, **{f"s{i:02d}.parquet": parquet(docs(i, 20)) for i in range(50)}})
    fifty = plan_json(home, "--preset", "a100_d10", "--data", "tests/fifty")
    assert (fifty["shards"], fifty["dataset_files"], fifty["train_shards"]) == (41, 50, 40)
    assert fifty["chars_per_shard"] == 100_000_000 and fifty["epochs"] <= 1
    # a small one, measured: all of it is fetched, and the plan says the data repeats
    add_parquet(hub, "tests/small", n_files=3)
    small = plan_json(home, "--preset", "a100_d10", "--data", "tests/small")
    assert small["shards"] == 3 and small["epochs"] > 1000
    assert small["chars_from"].startswith("measured on data/train-00000")
    text = nl(home, "plan", "--preset", "a100_d10", "--data", "tests/small").stdout
    assert "the data repeats" in text and "3 of 3 shards (2 train + 1 val) of tests/small" in text


def test_plan_measures_a_local_folder(tmp_path, corpus):
    folder = plan_json(tmp_path / "home", "--preset", "a100_d10", "--data", str(corpus[0].parent))
    assert (folder["shards"], folder["dataset_files"]) == (4, 4) and folder["epochs"] > 100
    assert folder["chars_from"] == "measured on the folder's files"
    text = nl(tmp_path / "home", "plan", "--preset", "a100_d10", "--data", str(corpus[0].parent)).stdout
    assert "the data repeats" in text


def test_plan_names_a_dataset_it_cannot_reach(hub, tmp_path):
    r = nl(tmp_path / "home", "plan", "--preset", "a100_d10", "--data", "tests/not-there")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: dataset tests/not-there not found at http://127.0.0.1")


def test_a_cpu_run_trains_on_a_hub_dataset_end_to_end(hub, tmp_path, corpus):
    """The trainer, started by `nanolaunch run`, lists and streams a dataset from the loopback Hub, trains on
    it, and the ledger records the dataset with its commit; the tokenizer is trained once for that commit,
    vocabulary and character budget; a run on other data says so; a promoted preset pins it."""
    from conftest import tiny_preset

    repo = hub.add("tests/e2e", {f"data/train-{i}.parquet": p.read_bytes() for i, p in enumerate(corpus)})
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    (home / "presets" / "tiny.toml").write_text(tiny_preset(10, tokenizer_chars=300_000))
    r = nl(home, "run", "--preset", "tiny", "--data", "tests/e2e", "--title", "hub", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["val_bpb"] is not None
    assert row["data"] == f"tests/e2e@{repo.sha}"
    cache = home / "cache" / "data" / "tests--e2e"
    # ten steps of 512 tokens need one training file of the three (the tokenizer's 300,000 characters come from
    # the first); the last file is held out for validation
    assert sorted(p.name for p in (cache / "data").glob("*.parquet")) == ["train-0.parquet", "train-3.parquet"]
    tokenizer = cache / f"tokenizer_{repo.sha[:12]}_v512_c300000"
    assert "tokenizer: trained 512 tokens" in (home / "runs" / f"{row['id']:05d}" / "train.log").read_text()
    assert (tokenizer / "tokenizer.json").is_file()
    planned = json.loads(nl(home, "plan", "--preset", "tiny", "--data", "tests/e2e", "--json").stdout)["tokenizer"]
    assert planned["reused"] and planned["path"] == str(tokenizer)  # the plan says which
    again = nl(home, "run", "--preset", "tiny", "--data", "tests/e2e", "--iterations", "2", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    log = (home / "runs" / f"{json.loads(again.stdout)['id']:05d}" / "train.log").read_text()
    assert "tokenizer: trained" not in log
    assert f"tokenizer: {tokenizer} (trained by an earlier run on this data)" in log
    assert nl(home, "run", "--preset", "tiny", "--title", "stdlib", "--json").returncode == 0
    table = nl(home, "ledger").stdout
    assert f"e2e@{repo.sha[:7]}" in table and "stdlib" in table
    show = nl(home, "show", str(row["id"])).stdout
    assert f"data      tests/e2e@{repo.sha}" in show
    promoted = nl(home, "preset", "promote", str(row["id"]), "--name", "tiny_e2e", "--json")
    assert promoted.returncode == 0, promoted.stderr
    config = json.loads(promoted.stdout)["config"]
    assert (config["data"], config["data_revision"]) == ("tests/e2e", repo.sha)


def test_the_data_flag(tmp_path, monkeypatch):
    from nanolaunch.commands.common import data_settings, resolve
    from nanolaunch.config import RunConfig
    from nanolaunch.errors import NanolaunchError
    from nanolaunch.task import placement

    assert data_settings("HuggingFaceFW/fineweb-edu:sample-10BT@v1.2") == {
        "data": "HuggingFaceFW/fineweb-edu", "data_config": "sample-10BT", "data_revision": "v1.2"}
    assert data_settings("stdlib") == {"data": "stdlib"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    assert data_settings("./texts") == data_settings("texts") == {"data": str(tmp_path / "texts")}
    with pytest.raises(NanolaunchError, match="no such folder"):
        data_settings("./missing")
    with pytest.raises(NanolaunchError, match="OWNER/NAME"):
        data_settings("a/b/c d")
    # a new dataset drops what the preset chose for its own (a100_d10 fetches 18 FineWeb-EDU shards)
    config, _ = resolve(None, "a100_d10", data="tests/other@abc")
    assert (config.train.data, config.train.data_revision, config.train.shards) == ("tests/other", "abc", None)
    local = RunConfig.build(depth=2, gpu="H100:1", data=str(tmp_path / "texts"))
    with pytest.raises(NanolaunchError, match="a cloud node cannot read"):
        placement(local, "x", bucket="b")
    # ledger rows and promoted presets written before `data` replaced data_source still read
    old = RunConfig.build(depth=2, data_source="stdlib", data_url=None)
    assert old.train.data == "stdlib"
