"""peoples-daily-pos: exact answers from People's Daily's tags, balanced fixed splits, and the
task runs through `lmforge eval` and `lmforge finetune --task classification`."""

import json
import re
from collections import Counter

import pytest

from lmforge.assets import asset_path
from lmforge.cli import main
from lmforge.data.chinese_pos import CHINESE_WORDS, TEMPLATE
from lmforge.data.labelled import load_labelled

pytestmark = pytest.mark.assets
TAG = {"noun": "n", "verb": "v"}


def test_answers_are_the_corpus_tags_and_the_splits_are_fixed():
    splits = {s: load_labelled("peoples-daily-pos", s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1600, "validation": 200, "test": 200}
    for examples in splits.values():
        assert sum(e.label == "noun" for e in examples) == len(examples) // 2
    texts = [e.text for v in splits.values() for e in v]
    assert len(set(texts)) == len(texts)  # no example in two splits
    lines = asset_path("peoples-daily").read_text(encoding="utf-8").split("\n")
    for e in splits["test"][:50]:
        sentence, word = re.fullmatch(r"句子：(.*)\n词语：(.*)", e.text).groups()
        line = lines[int(e.origin.rsplit(":", 1)[1]) - 1]
        assert f"{word}/{TAG[e.label]} " in line + " " and sentence.count(word) == 1
    assert splits["test"] == load_labelled("peoples-daily-pos", "test")


def test_eval_and_finetune_run_the_chinese_task(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_model_dir), "--task", "peoples-daily-pos"]
    assert main([*args, "--limit", "8", "--out", str(out)]) == 0
    rows = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 8 and all(json.loads(r)["target"] in TAG for r in rows)
    run = tmp_path / "ft"
    words = [f"--data.words.{label}={word}" for label, word in CHINESE_WORDS.items()]
    ft = ["finetune", f"--model={tiny_model_dir}", f"--run_dir={run}", "--method=lora"]
    ft += ["--data.source=peoples-daily-pos", f"--data.template={TEMPLATE}", "--data.max_length=48"]
    ft += [*words, "--data.max_train=16", "--data.max_eval=8"]
    ft += ["--train.max_steps=2", "--train.batch_size=4", "--train.warmup_steps=1"]
    assert main(ft) == 0
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    words = {label: word for label, (word, _) in results["label_words"].items()}
    assert words == CHINESE_WORDS and 0.0 <= results["test_accuracy"] <= 1.0


def test_data_build_writes_chinese_instructions(tmp_path):
    out = tmp_path / "pos.jsonl"
    args = ["data", "build", "peoples-daily-pos", "--out", str(out), "--max", "40"]
    assert main([*args, "--phrasings", "heldout"]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 40
    test = {e.text: e.label for e in load_labelled("peoples-daily-pos", "train")}
    for r in records:
        user, reply = r["messages"][0]["content"], r["messages"][-1]["content"]
        label = r["meta"]["label"]
        assert r["meta"]["phrasing"] == "heldout" and reply.endswith(CHINESE_WORDS[label])
        assert "名词" in user and "动词" in user and "noun" not in user + reply
        assert sum(text in user and test[text] == label for text in test) == 1


def test_names_are_people_or_places_from_the_tags_each_asked_twice_at_most():
    splits = {s: load_labelled("peoples-daily-names", s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1600, "validation": 200, "test": 200}
    everything = [e for v in splits.values() for e in v]
    names = [re.fullmatch(r"句子：(.*)\n词语：(.*)", e.text).groups() for e in everything]
    assert max(Counter(name for _, name in names).values()) == 2
    lines = asset_path("peoples-daily").read_text(encoding="utf-8").split("\n")
    tag = {"person": "nr", "place": "ns"}
    for e, (sentence, name) in list(zip(everything, names))[:100]:
        parts = re.findall(rf"(\S+)/{tag[e.label]}", lines[int(e.origin.rsplit(":", 1)[1]) - 1])
        # a place is one tagged word; a person's surname and given name are two in a row
        assert name in parts or any(len(a) == 1 and a + b == name for a, b in zip(parts, parts[1:]))
        assert sentence.count(name) == 1
