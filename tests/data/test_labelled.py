import pytest

from lmforge.data.labelled import DATASETS, load_labelled
from lmforge.errors import DataError


def test_jsonl_examples_and_errors(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "hi", "label": "x"}\n\n{"text": "yo", "label": "y"}\n')
    ex = load_labelled(str(good))
    assert [(e.text, e.label, e.origin) for e in ex] == [
        ("hi", "x", f"{good}:1"),
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
