"""Tokenizer: byte-level BPE training, exact round trips, save/load, special ids, errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.assets import asset_path
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import DEFAULT_SPECIALS, Tokenizer, _byte_of_symbol, splits_a_character

ENGLISH = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
)
CHINESE = "迈向充满希望的新世纪。中国人民决心继承遗志，继续把建设有中国特色社会主义事业推向前进。"
TEXTS = [ENGLISH * 8, CHINESE * 8, (ENGLISH + CHINESE) * 4]  # ~6 KB

HARD = [
    "Hello, world!",
    "你好，世界！今天天气很好。",
    "emoji 🙂🚀👩‍👩‍👧 and ZWJ",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nnewlines\n\n\nend",
    "unseen bytes: ÆØÅ ß ĳ Ω ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=400)


def test_round_trip_is_exact_for_any_text(tok: Tokenizer) -> None:
    for s in HARD + [ENGLISH, CHINESE]:
        assert tok.decode(tok.encode(s)) == s


def test_vocab_size_is_respected(tok: Tokenizer) -> None:
    # 6 KB of repetitive English holds far more than 400 - 260 frequent pairs: exactly full.
    assert Tokenizer.train([ENGLISH * 16], vocab_size=300).vocab_size == 300
    # The Chinese repeats run out of merges that keep characters whole a little earlier.
    assert 360 < tok.vocab_size <= 400
    assert max(tok.encode(ENGLISH + CHINESE)) < 400
    small = Tokenizer.train(["ab ab ab"], vocab_size=1000)
    assert 256 + len(DEFAULT_SPECIALS) <= small.vocab_size < 1000  # merges ran out


def test_training_compresses(tok: Tokenizer) -> None:
    assert len(tok.encode(ENGLISH)) < len(ENGLISH.encode("utf-8")) / 2


def test_vocab_too_small_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vocab_size=100 is too small.*260"):
        Tokenizer.train(TEXTS, vocab_size=100)


def test_special_tokens(tok: Tokenizer) -> None:
    assert [tok.token_to_id(t) for t in DEFAULT_SPECIALS] == [0, 1, 2, 3]
    assert tok.eos_id == 0 and tok.pad_id == 1
    assert tok.id_to_token(0) == "<|endoftext|>"
    assert tok.token_to_id("no such token") is None
    # Nothing is added implicitly.
    assert 0 not in tok.encode(ENGLISH)
    # Specials written in the text are matched (chat templates rely on it) and decode back.
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 2 and ids[-1] == 3
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(HARD) == [tok.encode(s) for s in HARD]


def test_save_load_identical(tok: Tokenizer, tmp_path: Path) -> None:
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(path)
    assert [loaded.encode(s) for s in HARD] == [tok.encode(s) for s in HARD]
    assert loaded.vocab_size == tok.vocab_size
    assert (loaded.eos_id, loaded.pad_id) == (tok.eos_id, tok.pad_id)
    assert loaded.fingerprint == tok.fingerprint
    assert Tokenizer.from_file(tmp_path).fingerprint == tok.fingerprint  # folder works too
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fingerprint_differs_between_tokenizers(tok: Tokenizer) -> None:
    other = Tokenizer.train(TEXTS, vocab_size=380)
    assert len(tok.fingerprint) == 16
    assert other.fingerprint != tok.fingerprint
    assert Tokenizer.train(TEXTS, vocab_size=400).fingerprint == tok.fingerprint  # deterministic


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.json does not exist"):
        Tokenizer.from_file(tmp_path / "nope.json")


def test_corrupt_file_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": "this is not a tokenizer"', encoding="utf-8")
    with pytest.raises(DataError, match=r"tokenizer\.json is not a valid tokenizer"):
        Tokenizer.from_file(bad)


def test_no_eos_falls_back_to_none() -> None:
    bare = Tokenizer.train(TEXTS, vocab_size=300, special_tokens=[])
    assert bare.eos_id is None and bare.pad_id is None
    chat = Tokenizer.train(TEXTS, vocab_size=300, special_tokens=["<|endoftext|>"])
    assert chat.pad_id == chat.eos_id == 0  # pad falls back to eos


@pytest.mark.assets
def test_loads_a_real_hf_tokenizer_json() -> None:
    tok = Tokenizer.from_file(asset_path("all-minilm-l6-v2") / "tokenizer.json")
    assert tok.vocab_size == 30522
    ids = tok.encode("Hello world")
    assert ids == [7592, 2088]  # no [CLS]/[SEP], no padding to 128 from the file's settings
    assert tok.decode(ids) == "hello world"
    assert tok.pad_id == tok.token_to_id("[PAD]") == 0
    assert tok.eos_id == tok.token_to_id("[SEP]") == 102


def test_no_token_splits_a_character_the_vocabulary_holds() -> None:
    assert not splits_a_character("中国".encode())  # whole characters
    assert not splits_a_character("中".encode()[:2]) and not splits_a_character(b"\xb8\xad")
    assert splits_a_character("中国".encode()[2:4])  # end of 中 + start of 国
    assert splits_a_character(b"a" + "国".encode()[:1])
    # Chinese run together without spaces, as it is written: 120 random words of 1-3 characters
    rng = random.Random(0)
    chars = sorted(set(CHINESE) - set("，。"))
    words = ["".join(rng.choices(chars, k=rng.randint(1, 3))) for _ in range(120)]
    text = "".join(rng.choice(words) + ("，" if rng.random() < 0.1 else "") for _ in range(6000))
    tok = Tokenizer.train([text], vocab_size=600)
    byte_of = _byte_of_symbol()
    pieces = [t for t in tok.hf.get_vocab() if t not in DEFAULT_SPECIALS]
    assert not any(splits_a_character(bytes(byte_of[c] for c in t)) for t in pieces)
    assert any(len(tok.decode([i])) == 2 for i in tok.encode(text))  # words are still learnt
    # every character of the training text is whole; "。" never occurs there, so only its
    # bytes are in the vocabulary and it alone is split
    broken = [i for i in tok.encode(CHINESE) if "\ufffd" in tok.decode([i])]
    assert tok.decode(broken) == "。。"  # CHINESE holds two
    assert tok.decode(tok.encode(CHINESE)) == CHINESE
