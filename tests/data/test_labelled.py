import pytest

from lmforge.data.labelled import (
    DATASETS,
    Example,
    labelled_splits,
    load_labelled,
    stratified_split,
)
from lmforge.errors import DataError


def test_jsonl_examples_and_errors(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "hi", "label": "x"}\n\n{"text": "yo", "label": "y"}\n')
    assert load_labelled(str(good)) == []
    ex = load_labelled(str(good), "test")
    assert [(e.text, e.label, e.origin) for e in ex] == [
        ("hi", "x", f"{good}:1"),  # one per class: the first of each class is for testing
        ("yo", "y", f"{good}:3"),
    ]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "hi", "label": "x"}\n{"text": "no label"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: needs a string field 'label'"):
        load_labelled(str(bad))
    with pytest.raises(DataError, match="bbc-news"):
        load_labelled("nonesuch")
    with pytest.raises(DataError, match="unknown split"):
        load_labelled(str(good), "dev")


@pytest.mark.assets
def test_bbc_split_is_fixed_disjoint_and_complete():
    splits = {s: load_labelled("bbc-news", s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1777, "validation": 223, "test": 225}
    origins = [e.origin for v in splits.values() for e in v]
    assert len(set(origins)) == 2225
    assert {e.label for e in splits["test"]} == {
        "business",
        "entertainment",
        "politics",
        "sport",
        "tech",
    }
    assert "bbc-news" in DATASETS


def examples(n_per_label: int) -> list[Example]:
    return [
        Example(f"{label} text {i}", label, f"f:{i}")
        for i in range(n_per_label)
        for label in ("pos", "neg", "neutral")
    ]


def test_a_file_is_split_stratified_deterministic_and_disjoint():
    data = examples(40)
    parts = {s: stratified_split(data, s, seed=0) for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == len(data)
    assert {e.origin + e.label for p in parts.values() for e in p} == {
        e.origin + e.label for e in data
    }
    for split, share in (("test", 4), ("validation", 4), ("train", 32)):
        for label in ("pos", "neg", "neutral"):
            assert sum(e.label == label for e in parts[split]) == share
    assert parts["test"] == stratified_split(data, "test", seed=0)  # the same every time
    assert parts["test"] != stratified_split(data, "test", seed=1)


def test_test_examples_seen_in_training_are_dropped_and_counted(tmp_path):
    source = tmp_path / "train.jsonl"
    source.write_text("".join(f'{{"text": "t{i}", "label": "{i % 2}"}}\n' for i in range(20)))
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "t3", "label": "1"}\n{"text": "new", "label": "0"}\n')
    splits = labelled_splits(str(source), test=str(test))
    train_texts = {e.text for e in splits.train}
    assert "t3" in train_texts and [e.text for e in splits.test] == ["new"]
    assert splits.describe()["test_overlap_removed"] == 1
    link = tmp_path / "same.jsonl"
    link.hardlink_to(source)
    with pytest.raises(DataError, match="training source as well"):
        labelled_splits(str(source), test=str(link))
