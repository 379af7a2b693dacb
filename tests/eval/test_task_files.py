"""`lmforge eval --task FILE`: a task defined in a YAML file or by a JSONL of records, without
touching the package; validated with file:line and field errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.errors import ConfigError, DataError
from lmforge.eval import EvalSettings, evaluate, get_task
from lmforge.hub import load_model, load_tokenizer

REVIEWS = [(f"好看的电影 {i}", "正面") for i in range(10)] + [
    (f"无聊 {i}", "负面") for i in range(10)
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture
def task_file(tmp_path) -> Path:
    write_jsonl(tmp_path / "reviews.jsonl", [{"text": t, "label": lab} for t, lab in REVIEWS])
    path = tmp_path / "reviews.yaml"
    path.write_text(
        'kind: choice\ndata: reviews.jsonl\ntemplate: "影评：{text}\\n情感："\n'
        "labels: {正面: [好], 负面: [坏]}\n",
        encoding="utf-8",
    )
    return path


def test_a_yaml_task_keeps_its_pool_out_of_the_test_set(task_file):
    task = get_task(str(task_file))
    assert task.name == "reviews" and task.kind == "choice"
    test, pool = task.test(), task.pool()
    assert len(test) == 16 and len(pool) == 4  # a fifth of each label for demonstrations
    assert not {s.origin for s in test} & {s.origin for s in pool}
    assert {s.target for s in pool} == {"正面", "负面"}
    assert task.verbalizer.words == {"正面": ("好",), "负面": ("坏",)}
    assert task.format.template.render(test[0].fields) == f"影评：{test[0].fields['text']}\n情感："


def test_the_cli_scores_a_task_file(task_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--task", str(task_file), "--shots", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert result["task"] == "reviews" and result["n"] == 16
    assert result["example_prompt"].endswith("影评：好看的电影 0\n情感：")
    assert main(["eval", "--task", "list"]) == 0
    assert "--task FILE.yaml" in capsys.readouterr().out


@pytest.mark.parametrize(
    "row, kind",
    [
        ({"text": "a", "label": "x"}, "choice"),
        ({"question": "1 + 1?", "answer": "2"}, "generate"),
        ({"text": "plain text"}, "perplexity"),
    ],
)
def test_a_jsonl_of_records_is_a_task_of_its_kind(tmp_path, row, kind):
    path = write_jsonl(tmp_path / "records.jsonl", [row] * 6)
    assert get_task(str(path)).kind == kind


def test_a_generation_task_from_records_is_scored(tmp_path, tiny_model_dir):
    rows = [{"question": f"{i} + 1?", "answer": str(i + 1)} for i in range(6)]
    path = write_jsonl(tmp_path / "sums.jsonl", rows)
    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    result = evaluate(model, tokenizer, str(path), EvalSettings.from_fields(shots=1))
    assert result.n == 5 and 0.0 <= result.metrics["accuracy"] <= 1.0


def test_mistakes_name_the_file_line_and_field(tmp_path, task_file):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, {"label": "y"}])
    spec = tmp_path / "bad.yaml"
    spec.write_text("data: bad.jsonl\ntemplate: '{text}'\n")
    with pytest.raises(DataError, match=rf"{bad}:2: the record has no field 'text'"):
        get_task(str(spec))
    spec.write_text("data: bad.jsonl\ntemplat: '{text}'\n")
    with pytest.raises(ConfigError, match="unknown field 'templat'"):
        get_task(str(spec))
    spec.write_text("data: reviews.jsonl\nkind: ranking\n")
    with pytest.raises(ConfigError, match="kind 'ranking' is unknown"):
        get_task(str(spec))
    spec.write_text("data: reviews.jsonl\nlabels: {正面: [好]}\n")
    (tmp_path / "reviews.jsonl").write_text(task_file.with_suffix(".jsonl").read_text())
    with pytest.raises(ConfigError, match="label '负面' of the data is not in labels"):
        get_task(str(spec))
    with pytest.raises(ConfigError, match="does not exist"):
        get_task(str(tmp_path / "none.yaml"))
