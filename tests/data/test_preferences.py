"""Preference records: three formats in four file types, file:line errors, the loss mask on
the reply only, and pair batches that resume exactly."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.data.preferences import (
    PairBatches,
    PreferencePair,
    encode_pair,
    read_preferences,
    read_prompts,
    write_preferences,
)
from lmforge.data.sft import IGNORE_INDEX
from lmforge.errors import CheckpointError, DataError
from tests.align.helpers import chat_tokenizer

STANDARD = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "system": "Be brief."}
CONVERSATIONAL = {
    "prompt": [{"role": "user", "content": "你好吗?"}],
    "chosen": [{"role": "assistant", "content": "很好，谢谢。"}],
    "rejected": "不好。",
}
IMPLICIT = {
    "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
    "meta": {"source": "test"},
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def test_three_formats_become_the_same_kind_of_pair(tmp_path):
    pairs = read_preferences(
        write_jsonl(tmp_path / "p.jsonl", [STANDARD, CONVERSATIONAL, IMPLICIT])
    )
    a, b, c = pairs.items
    assert a.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    assert (a.chosen, a.rejected) == ("4", "5")
    assert (b.prompt[0]["content"], b.chosen, b.rejected) == ("你好吗?", "很好，谢谢。", "不好。")
    assert c.prompt == [{"role": "user", "content": "Hi"}] and c.chosen == "Hello!"
    assert c.meta == {"source": "test", "origin": f"{tmp_path / 'p.jsonl'}:3"}


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "q", "chosen": "a"}, ":2: rejected: missing"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, ":2: chosen/rejected: the two replies"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, ":2: chosen: the reply is empty"),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            ":2: chosen[0].role: must be 'assistant'",
        ),
        (
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            ":2: prompt[0].role: a prompt must end with a user turn",
        ),
        (
            {"chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
            ":2: rejected: must be a non-empty list",
        ),
    ],
)
def test_bad_records_are_named_by_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "p.jsonl", [STANDARD, record])
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert f"{path}{message}" in str(e.value) and "{skip_bad=true}" in e.value.fix
    kept = read_preferences(path, skip_bad=True)
    assert len(kept) == 1 and kept.skipped[0].origin == f"{path}:2"


def test_json_parquet_and_csv_files(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.json").write_text(json.dumps([STANDARD, CONVERSATIONAL], ensure_ascii=False))
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "q", "chosen": "a", "rejected": "b"}]),
        tmp_path / "p.parquet",
    )
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\nq,a,b\n")
    got = read_preferences([tmp_path / "p.json", tmp_path / "p.parquet", tmp_path / "p.csv"])
    assert [p.chosen for p in got.items] == ["4", "很好，谢谢。", "a", "a"]
    assert got.items[2].meta["origin"].endswith("p.parquet:row 1")


def test_written_pairs_read_back(tmp_path):
    pairs = read_preferences(write_jsonl(tmp_path / "p.jsonl", [STANDARD, CONVERSATIONAL])).items
    back = read_preferences(write_preferences(pairs, tmp_path / "out.jsonl")).items
    assert [(p.prompt, p.chosen, p.rejected) for p in back] == [
        (p.prompt, p.chosen, p.rejected) for p in pairs
    ]
    with pytest.raises(DataError, match="written as .jsonl or .json"):
        write_preferences(pairs, tmp_path / "out.csv")


def test_prompt_records_keep_their_fields_for_the_judge(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "1+1?", "answer": 2}, {"x": 1}])
    with pytest.raises(DataError, match=r"q.jsonl:2: prompt: missing"):
        read_prompts(path)
    (record,) = read_prompts(path, skip_bad=True).items
    assert record.messages == [{"role": "user", "content": "1+1?"}]
    assert record.meta["answer"] == 2 and record.meta["origin"].endswith("q.jsonl:1")


def test_encoded_pair_scores_the_reply_and_its_end_of_turn_only():
    tok = chat_tokenizer()
    pair = PreferencePair([{"role": "user", "content": "你好"}], "很好", "不好")
    enc = encode_pair(pair, tok, template="chatml")
    for side, reply in ((enc.chosen, "很好"), (enc.rejected, "不好")):
        scored = [t for t, label in zip(side.input_ids, side.labels) if label != IGNORE_INDEX]
        assert tok.decode(scored) == reply + "<|im_end|>"
    prompt = [t for t, label in zip(enc.chosen.input_ids, enc.chosen.labels) if label == -100]
    # Both sides share the prompt; a BPE token may straddle the prompt/reply boundary.
    assert prompt[:-1] == enc.rejected.input_ids[: len(prompt) - 1]


def test_pair_batches_stack_chosen_first_and_resume():
    tok = chat_tokenizer()
    pairs = [
        encode_pair(PreferencePair([{"role": "user", "content": f"q{i}"}], "yes" * i, "no"), tok)
        for i in range(1, 6)
    ]
    source = PairBatches(pairs, batch_size=2, pad_id=0, seed=3)
    first = source.next_batch()
    assert first["input_ids"].shape[0] == 4
    chosen_lengths = first["attention_mask"][:2].sum(1).tolist()
    state = source.state_dict()
    want = [source.next_batch() for _ in range(4)]
    again = PairBatches(pairs, batch_size=2, pad_id=0, seed=0)
    again.load_state_dict(json.loads(json.dumps(state)))
    for a, b in zip(want, [again.next_batch() for _ in range(4)]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(chosen_lengths) != sorted(first["attention_mask"][2:].sum(1).tolist())
    with pytest.raises(CheckpointError, match="for 5 pairs"):
        PairBatches(pairs[:4], 2, 0).load_state_dict(state)
    with pytest.raises(DataError, match="cannot fill one batch"):
        PairBatches(pairs[:1], 2, 0)
