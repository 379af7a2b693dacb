"""`lmforge agent`: the verb end to end on a tiny model, and its errors."""

from __future__ import annotations

import json

from lmforge.cli import main
from lmforge.knowledge.index import KnowledgeIndex
from tests.knowledge.helpers import CountingEmbedder, write_corpus


def test_agent_prints_the_transcript_and_saves_it(tiny_model_dir, tmp_path, capsys):
    transcript = tmp_path / "t.json"
    args = ["agent", "--model", str(tiny_model_dir), "--tools", "calculator,python",
            "--tool_choice", "required", "--max_steps", "2", "--max_new_tokens", "100",
            "--transcript", str(transcript), "What is 2 + 2? 二加二"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "question: What is 2 + 2? 二加二"
    assert lines[1].startswith(("[1] action: calculator(", "[1] action: python("))
    saved = json.loads(transcript.read_text())
    assert saved["question"] == "What is 2 + 2? 二加二" and saved["steps"] in (1, 2)
    assert [e["kind"] for e in saved["events"]][:2] == ["question", "action"]
    tools = {e["text"].split("(")[0] for e in saved["events"] if e["kind"] == "action"}
    assert tools <= {"calculator", "python"}
    assert lines[-1].startswith(("answer: ", "no answer (budget)"))


def test_agent_errors_name_the_fix(tiny_model_dir, capsys):
    assert main(["agent", "--model", str(tiny_model_dir), "--tools", "calculator,shell", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown tool 'shell'; choose from calculator, python, read_file, search" in err
    assert "name them with commas: --tools=calculator,python" in err
    assert main(["agent", "--model", str(tiny_model_dir)]) == 2
    assert 'no question given; give one: lmforge agent --tools calculator "' in (
        capsys.readouterr().err
    )
    assert main(["agent", "--tool_choice", "always", "x"]) == 2
    err = capsys.readouterr().err
    assert "tool_choice 'always' is unknown; choose --tool_choice from auto, required" in err
    assert main(["agent", "--tools", "search", "x"]) == 2
    assert "pass --index=runs/index" in capsys.readouterr().err


def test_agent_plan_mode_runs_planner_steps_and_solver(tiny_model_dir, capsys):
    args = ["agent", "--model", str(tiny_model_dir), "--mode", "plan", "--max_steps", "1",
            "--max_new_tokens", "12", "--constrain", "false", "Add 2 and 2."]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "question: Add 2 and 2." and lines[1].startswith("plan: ")
    assert any(line.startswith("[1] result: ") for line in lines)
    assert lines[-2].startswith("answer: ") and lines[-1].startswith("answer: ")


def test_agent_searches_a_knowledge_index(tiny_model_dir, tmp_path, capsys):
    index = KnowledgeIndex.create(tmp_path / "index", embedder=CountingEmbedder())
    index.add([write_corpus(tmp_path / "docs")])
    args = ["agent", "--model", str(tiny_model_dir), "--tools", "search", "--index",
            str(tmp_path / "index"), "--search_mode", "bm25", "--tool_choice", "required",
            "--max_steps", "1", "--max_new_tokens", "100", "--temperature", "0",
            "--transcript", str(tmp_path / "t.json"), "长城在哪里?"]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("[1] action: search(")
    events = json.loads((tmp_path / "t.json").read_text())["events"]
    seen = [e["text"] for e in events if e["kind"] in ("observation", "error")][0]
    assert seen == "no passage found" or seen.startswith("[1] ")
