import json
from pathlib import Path

import pytest

from lmforge.data.labelled import load_labelled
from lmforge.lab import LABS, run_experiment
from lmforge.lab.objectives import extra_head_flops, pos_task
from lmforge.lab.pretraining import first_reach, reach_row
from lmforge.lab.stacking import cumulative_flops, saving

HEADERS = {  # each report's main table
    "objectives": "| objective | next-token val loss | training FLOPs | tuned accuracy |",
    "stacking": "| run | final val loss | update reaching scratch's final loss |",
    "inheritance": "| student | final val loss | update reaching scratch's final loss |",
    "scaling": "| rung | N | D (tokens) | C (FLOPs) | val loss | L(C) fit |",
}
PRETRAINING_LABS = tuple(HEADERS)
PD = "peoples-daily-pos"


def test_the_pretraining_labs_are_registered():
    for name in PRETRAINING_LABS:
        assert LABS.get(name).claim and LABS.get(name).minutes <= 60


def test_compute_is_summed_over_the_stages():
    # 10 updates at 2 FLOPs, then 20 at 5: step 5 → 10, step 10 → 20, step 30 → 20 + 100
    assert cumulative_flops([5, 10, 30], [(10, 2.0), (30, 5.0)]) == [10.0, 20.0, 120.0]


def test_the_saving_is_read_where_each_curve_first_reaches_the_target():
    assert first_reach([10, 20, 30], [3.0, 2.5, 2.0], 2.5) == 20
    assert first_reach([10, 20], [3.0, 2.6], 2.5) is None
    scratch = ([10, 20, 30], [3.0, 2.5, 2.0], [100.0, 200.0, 300.0])
    grown = ([10, 20, 30], [2.8, 2.0, 1.9], [50.0, 150.0, 250.0])
    assert saving(scratch, grown, 2.0) == pytest.approx(1 - 150.0 / 300.0)
    assert saving(scratch, ([10], [2.9], [1.0]), 2.0) is None


def test_multi_token_heads_are_charged_their_unembeddings():
    assert extra_head_flops("multi-token", 64, 300) == 6.0 * 64 * 300 * 3
    assert extra_head_flops("ul2", 64, 300) == 0.0


@pytest.mark.assets
def test_the_chinese_tuning_task_puts_the_word_before_its_sentence(tmp_path):
    data = pos_task(tmp_path)
    assert data["words"] == {"noun": "名词", "verb": "动词"}
    original = [e for s in ("train", "validation", "test") for e in load_labelled(PD, s)]
    moved = [e for s in ("train", "validation", "test") for e in load_labelled(data["source"], s)]
    assert len(moved) == len(original)
    sentence, word = original[0].text.split("\n")
    first = json.loads(Path(data["source"]).read_text(encoding="utf-8").splitlines()[0])
    assert first == {"text": f"{word}\n{sentence}", "label": original[0].label}
    assert all(e.text.startswith("词语：") for e in moved)


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("name", PRETRAINING_LABS)
def test_a_pretraining_lab_quick_writes_its_report(tmp_path, name):
    path = run_experiment(name, tmp_path / "lab", quick=True)
    text = path.read_text()
    assert HEADERS[name] in text
    assert list((tmp_path / "lab").glob("*.png"))
    assert all(p.stat().st_size > 1000 for p in (tmp_path / "lab").glob("*.png"))
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert results


def test_a_report_row_reads_the_first_update_at_the_target():
    curve = ([10, 20, 30], [3.0, 2.0, 1.5], [1e9, 2e9, 3e9])
    assert reach_row("grown", curve, 2.5) == ["grown", "1.5000", 20, "2e+09"]
    assert reach_row("grown", curve, 1.0) == ["grown", "1.5000", "never", "—"]
