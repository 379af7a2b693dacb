"""The command line end to end, on a tiny corpus written by the test (no assets needed)."""

import json

import pytest

from lmforge.cli import VERBS, build_parser, main
from tests.conftest import TEXT, tiny_args


def test_every_verb_has_help(capsys):
    for name in VERBS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(
                [name, "--help"] if name != "tokenizer" else [name, "train", "--help"]
            )
        assert e.value.code == 0
        assert "usage: lmforge" in capsys.readouterr().out


def test_pretrain_help_lists_config_fields_with_their_docs(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--train.lr" in out and "--model.n_kv_head" in out and "--data.corpus" in out
    assert "query heads per attention layer" in out


def test_pretrain_then_generate(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(corpus, run)) == 0
    out = capsys.readouterr().out
    assert "validation loss" in out
    for name in [
        "config.yaml",
        "tokenizer.json",
        "metrics.jsonl",
        "loss.png",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
    ]:
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (
        main(
            [
                "generate",
                "--model",
                str(run / "model"),
                "--prompt",
                "To be",
                "--max-new-tokens",
                "8",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("To be")


def test_pretrain_resumes_and_extends_a_run(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(corpus, run, steps=3)) == 0
    assert main(tiny_args(corpus, run, steps=6)) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_resuming_with_another_model_shape_is_a_clear_error(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(corpus, run, steps=3)) == 0
    capsys.readouterr()
    assert main(tiny_args(corpus, run, steps=6) + ["--model.d_model=96"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "model.d_model: 64 → 96" in err
    assert (run / "checkpoints" / "step-00000003" / "model.safetensors").exists()


def test_unknown_flag_is_answered_with_the_closest_flag(corpus, tmp_path, capsys):
    assert main(tiny_args(corpus, tmp_path / "r") + ["--train.lrr", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag --train.lrr; did you mean --train.lr?" in err
    assert "unrecognized arguments" not in err and not (tmp_path / "r").exists()


def test_config_typo_in_yaml_names_the_field(corpus, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_step: 3\n")
    assert main(["pretrain", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.max_step" in err and "max_steps" in err and "c.yaml" in err


def test_ill_typed_flag_names_the_field(corpus, tmp_path, capsys):
    assert main(tiny_args(corpus, tmp_path / "r") + ["--train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_empty_corpus_and_bad_utf8_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(tiny_args(empty, tmp_path / "r1")) == 2
    assert "empty" in capsys.readouterr().err.lower()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(TEXT.encode() + b"\xff")
    assert main(tiny_args(bad, tmp_path / "r2")) == 2
    err = capsys.readouterr().err
    assert "bad.txt" in err and f"byte offset {len(TEXT.encode())}" in err


def test_tokenizer_train(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(out)]) == 0
    assert out.exists() and "300 tokens" in capsys.readouterr().out


def test_lab_list_and_unknown_experiment(capsys):
    assert main(["lab", "list"]) == 0
    assert "warmup" in capsys.readouterr().out
    assert main(["lab", "nonesuch"]) == 2
    assert "registered: " in capsys.readouterr().err


def test_assets_lists_every_asset(capsys):
    main(["assets"])
    out = capsys.readouterr().out
    for name in ["smollm2-135m-instruct", "shakespeare", "peoples-daily", "bbc-news"]:
        assert name in out


def test_chat_repl_streams_keeps_history_and_resets(tiny_model_dir, monkeypatch, capsys):
    import io

    from lmforge.recipes.chat import ChatConfig, run_chat

    cfg = ChatConfig(
        model=str(tiny_model_dir), max_new_tokens=4, temperature=0.0, system="Be brief."
    )
    out = io.StringIO()
    history = run_chat(
        cfg, stdin=io.StringIO("hello\nagain\n/reset\nto be\n/exit\nignored\n"), stdout=out
    )
    text = out.getvalue()
    assert text.count("assistant> ") == 3 and "(conversation cleared)" in text
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == "to be"
    # through the real CLI and stdin, ending at end of input
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 1


def test_generate_unknown_model_and_overlong_prompt(tiny_model_dir, capsys):
    assert main(["generate", "--model", "no-such-model", "--prompt", "x"]) == 2
    assert "embedded" in capsys.readouterr().err
    long_prompt = "To be, or not to be " * 200
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model_dir),
                "--prompt",
                long_prompt,
                "--max-new-tokens",
                "4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--truncate to keep its last" in err and "--max_new_tokens" in err
    assert "truncate=True" not in err
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model_dir),
                "--prompt",
                long_prompt,
                "--max-new-tokens",
                "4",
                "--truncate",
                "--no-stream",
            ]
        )
        == 0
    )
