import itertools
import re

import pytest
from hypothesis import given, settings, strategies as st

from trainer.data import iter_documents, split_shards
from trainer.tokenizer import BOS, META_FILE, RANKS_FILE, SPLIT_PATTERN, Tokenizer, TokenizerError, \
    chars_per_token, train_tokenizer

SAMPLES = [
    "",
    "def f(x):\n    return x ** 2  # square\r\n\ttabs\n\n\n",
    "Grüße, 東京! naïve café — “quotes” 🚀👩‍👩‍👧 e\u0301 \u00a0nbsp",
    "pi = 3.14159265358979, year 2024, 1234567 and 000 and ٣٤٥٦ arabic digits",
    "<|bos|> is just text inside a document",
]


def test_vocab_and_bos(tokenizer):
    assert tokenizer.vocab_size == 1024
    assert tokenizer.bos_id == 1023
    assert tokenizer.decode([tokenizer.bos_id]) == BOS
    # BOS is special: the same characters inside a document are ordinary text
    assert tokenizer.bos_id not in tokenizer.encode("x " + BOS + " y")
    assert tokenizer.pattern == SPLIT_PATTERN


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_and_bytes(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    tb = tokenizer.token_bytes()
    assert sum(tb[i] for i in ids) == len(text.encode("utf-8"))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_any_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    tb = tokenizer.token_bytes()
    assert sum(tb[i] for i in ids) == len(text.encode("utf-8"))


def test_token_bytes(tokenizer):
    tb = tokenizer.token_bytes()
    assert len(tb) == tokenizer.vocab_size
    assert tb[tokenizer.bos_id] == 0
    assert tb[:256] == [1] * 256  # the byte tokens
    assert all(n >= 2 for n in tb[256:tokenizer.bos_id])  # merges are at least two bytes


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(SAMPLES) == [tokenizer.encode(t) for t in SAMPLES]


def test_numbers_split_one_or_two_digits(corpus):
    # digit-heavy text makes a 1-3 digit pattern learn 3-digit tokens; ours must not
    train, _ = split_shards(corpus)
    digits = ["31415926 2024 1999 271828 " * 40] * 50
    tok = train_tokenizer(itertools.chain(digits, iter_documents(train)), 512)
    assert [tok.decode([i]) for i in tok.encode("31415926")] == ["31", "41", "59", "26"]
    vocab = [tok.enc.decode_single_token_bytes(i) for i in range(tok.bos_id)]
    assert not [t for t in vocab if re.search(rb"\d{3}", t)]


def test_save_load_identical(tokenizer, tmp_path, corpus):
    tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == sorted([META_FILE, RANKS_FILE])
    _, val = split_shards(corpus)
    docs = list(iter_documents(val))[:50] + SAMPLES
    assert loaded.encode_batch(docs) == tokenizer.encode_batch(docs)
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.bos_id == tokenizer.bos_id
    assert loaded.token_bytes() == tokenizer.token_bytes()
    tokenizer.save(tmp_path / "tok")  # saving over an existing one works
    assert Tokenizer.load(tmp_path / "tok").encode(SAMPLES[2]) == tokenizer.encode(SAMPLES[2])


def _error(directory) -> str:
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(directory)
    msg = str(e.value)
    assert "\n" not in msg and str(directory) in msg
    return msg


def test_load_missing_or_incomplete(tokenizer, tmp_path):
    assert "no tokenizer" in _error(tmp_path / "nothing")
    tokenizer.save(tmp_path / "a")
    (tmp_path / "a" / META_FILE).unlink()  # as if save() was interrupted before its marker
    assert "incomplete" in _error(tmp_path / "a")
    tokenizer.save(tmp_path / "b")
    ranks = tmp_path / "b" / RANKS_FILE
    ranks.write_bytes(ranks.read_bytes()[:-20])  # truncated ranks behind a complete marker
    assert "corrupt" in _error(tmp_path / "b")


def test_chars_per_token(tokenizer, corpus):
    _, val = split_shards(corpus)
    docs = list(iter_documents(val))
    cpt = chars_per_token(tokenizer, docs)
    assert 2.0 < cpt < 5.0, cpt  # Python source at a 1,024 vocab
    assert chars_per_token(tokenizer, ["aaaa"]) == 4 / len(tokenizer.encode("aaaa"))
    with pytest.raises(TokenizerError):
        chars_per_token(tokenizer, [""])


def test_train_caps_and_errors():
    # doc_cap: only "abcd" is seen, which allows 3 merges -> 256 + 3 + BOS = 260 tokens, not 300
    with pytest.raises(TokenizerError, match="only supports 260 tokens, not 300"):
        train_tokenizer(["abcdefgh" * 1000], 300, doc_cap=4)
    # max_chars: an endless iterator stops after the cap
    words = itertools.cycle(["alpha beta gamma delta ", "epsilon zeta eta theta 12 345 "])
    tok = train_tokenizer(words, 270, max_chars=10_000)
    assert tok.vocab_size == 270
    with pytest.raises(TokenizerError, match="at least 257"):
        train_tokenizer(["abc"], 256)
