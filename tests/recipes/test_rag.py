"""`lmforge rag` end to end: index (then add), ask with citations, eval, and its errors."""

import json

import pytest

from lmforge.cli import main
from tests.knowledge.helpers import DOCS, write_corpus


def test_ask_against_a_missing_index_names_the_path_and_the_command(tmp_path, capsys):
    assert main(["rag", "ask", str(tmp_path / "nowhere"), "Why?"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err
    assert f"lmforge rag index DOCS... --out {tmp_path / 'nowhere'}" in err


def test_index_without_documents_says_what_to_type(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["rag", "index", "--out", "x"])
    assert exit.value.code == 2
    assert "lmforge rag index [-h]" in capsys.readouterr().err  # the usage, and DOCS required


@pytest.mark.assets
def test_index_add_ask_and_eval(tmp_path, tiny_model_dir, capsys):
    docs = write_corpus(tmp_path / "docs", {"faq.rst": DOCS["faq.rst"]})
    (docs / "bad.txt").write_bytes(b"\x00\x01")
    index = str(tmp_path / "index")
    chunking = ["--chunking.size", "30", "--chunking.overlap", "4"]
    assert main(["rag", "index", str(docs), "--out", index, *chunking]) == 0
    out = capsys.readouterr().out
    assert "1 added" in out and "skipped" in out and "binary file" in out
    write_corpus(docs, {"zh.txt": DOCS["zh.txt"]})
    assert main(["rag", "index", str(docs), "--out", index]) == 0
    out = capsys.readouterr().out
    assert "1 added, 0 changed, 1 unchanged" in out

    ask = ["rag", "ask", index, "长城在哪里?", "--model", str(tiny_model_dir),
           "--max_new_tokens", "4", "--k", "2", "--system", "Cite."]  # fmt: skip
    assert main(ask) == 0
    out = capsys.readouterr().out
    assert "sources (* = cited):" in out and "zh.txt:2-3" in out

    qa = tmp_path / "qa.jsonl"
    source = str(docs / "faq.rst")
    start = DOCS["faq.rst"].index("Rayleigh")
    item = {"id": "faq-1", "question": "Why is the sky blue?", "answer": "Rayleigh scattering",
            "source": source, "start": start, "end": start + 19, "split": "test"}  # fmt: skip
    qa.write_text(json.dumps(item) + "\n")
    out_dir = tmp_path / "eval"
    args = ["rag", "eval", index, "--qa", str(qa), "--model", str(tiny_model_dir),
            "--max_new_tokens", "4", "--out", str(out_dir), "--mode", "bm25",
            "--system", "Cite."]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["retrieval"]["mrr"] == 1.0 and results["retrieval"]["recall@5"] == 1.0
    assert results["n"] == 1
    assert set(results) == {"n", "retrieval", "missing_gold", "rag", "closed_book"}
    assert 0.0 <= results["rag"]["faithfulness"] <= 1.0
