"""The command line's flags: generated from config dataclasses, suggested when misspelt,
listing the registries in --help, spelling each error's fix as the verb's own flag."""

import json

import pytest
import yaml

from lmforge import peft
from lmforge.cli import VERBS, build_parser, main
from lmforge.eval import TASKS, ChoiceTask
from lmforge.flags import find_command
from lmforge.peft.lora import Lora
from lmforge.recipes.finetune_tasks import FINETUNE_TASKS, FinetuneTask

# verb → (arguments with one misspelt flag, the suggestion expected)
TYPOS = {
    "pretrain": (["pretrain", "--train.lrr", "1"], "did you mean --train.lr?"),
    "finetune": (["finetune", "--data.templat={text}"], "did you mean --data.template={text}?"),
    "eval": (["eval", "--shot", "2"], "did you mean --shots?"),
    "generate": (["generate", "hello", "--max-new-token", "3"], "did you mean --max-new-tokens?"),
    "chat": (["chat", "--sytem", "Be brief."], "did you mean --system?"),
    "agent": (["agent", "x", "--max_step", "2"], "did you mean --max_steps?"),
    "tokenizer": (["tokenizer", "train", "x.txt", "--vocab_sise=9"], "--vocab_size=9?"),
    "data": (["data", "stats", "x.jsonl", "--skip_bd"], "did you mean --skip_bad?"),
    "assets": (["assets", "--verbose"], "unknown flag --verbose; `lmforge assets --help`"),
    "quickstart": (["quickstart", "--step", "3"], "did you mean --steps?"),
    "lab": (["lab", "list", "--quik"], "did you mean --quick?"),
    "moefy": (["moefy", "runs/x/model", "--expert", "4"], "did you mean --experts?"),
    "rag": (["rag", "ask", "--qustion", "x"], "unknown flag --qustion; `lmforge rag ask --help`"),
    "align": (["align", "dpo", "--dpo.bta", "0.1"], "did you mean --dpo.beta?"),
    "scaling": (["scaling", "fit", "--bootstap", "9"], "did you mean --bootstrap?"),
    "export": (["export", "runs/ft", "--formt", "gguf"], "did you mean --format?"),
    "serve": (["serve", "--adaptr", "sql=runs/ft"], "did you mean --adapter?"),
}
GROUPS = ("data", "tokenizer", "rag", "align", "scaling")  # verbs whose errors name an action


def test_every_verb_is_covered():
    assert set(TYPOS) == set(VERBS.names())


@pytest.mark.parametrize("verb", sorted(TYPOS))
def test_an_unknown_flag_is_answered_with_the_closest_one(verb, capsys):
    argv, expected = TYPOS[verb]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmforge {' '.join(argv[:2]) if verb in GROUPS else verb}")
    assert expected in err and "unrecognized arguments" not in err


def test_flags_accept_both_spellings_and_a_lone_bool_means_true():
    parser = build_parser(["data"])
    args = parser.parse_args(["data", "stats", "a.jsonl", "--skip-bad=true", "--json", "false"])
    assert vars(args)["cfg:skip_bad"] == "true" and vars(args)["cfg:json"] == "false"
    leaf, named = find_command(parser, ["data", "stats"])
    assert named == 2 and leaf.spell("skip_bad", "true") == "--skip_bad"
    assert leaf.spell("format", "openai") == "--format=openai"
    assert leaf.spell("no_such_field", "true") == "no_such_field=True"  # not this verb's


def test_a_fix_names_the_setting_as_each_verb_calls_it():
    parser = build_parser(["pretrain", "finetune", "generate"])
    spelt = {}  # the loader's fix names {batch_size} and {seq_len|max_length}
    for verb in ("pretrain", "finetune"):
        leaf, _ = find_command(parser, [verb])
        spelt[verb] = [leaf.spell(name, None) for name in ("batch_size", "seq_len|max_length")]
    assert spelt == {
        "pretrain": ["--train.batch_size", "--data.seq_len"],
        "finetune": ["--train.batch_size", "--data.max_length"],
    }
    leaf, _ = find_command(parser, ["generate"])
    assert leaf.spell("truncate", "true") == "--truncate"  # a bool: the flag alone
    assert leaf.spell("max_new_tokens", "8") == "--max_new_tokens=8"


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


class Toy(Lora):
    name = "toy-delta"


def _toy_task(cfg, tokenizer, run_dir):  # never run: --help only lists it
    raise AssertionError


def test_help_lists_the_registries_including_new_entries(monkeypatch, capsys):
    monkeypatch.setitem(peft.METHODS._items, "toy-delta", Toy)
    monkeypatch.setitem(FINETUNE_TASKS._items, "toy-task", FinetuneTask(_toy_task))
    text = _help(capsys, "finetune")
    assert "--method STR a delta method, full or none (evaluate) (registered: adapter," in text
    assert all(name in text for name in ("lora, named, none", "qlora", "toy-delta", "full"))
    assert "(registered: causal-lm, classification, sft, toy-task)" in text
    monkeypatch.setitem(TASKS._items, "toy-eval", ChoiceTask("toy-eval", "a toy"))
    text = _help(capsys, "eval")
    assert "a task, a task file (.yaml/.jsonl) or list (registered: arithmetic," in text
    assert "bbc-news" in text and "toy-eval)" in text
    labs = "alignment, inheritance, instruct, knowledge, moe, moefication, objectives, "
    labs += "peft-compare, prompting, qlora, retnet, scaling, stacking, tools, warmup"
    assert f"(registered: {labs})" in _help(capsys, "lab")
    text = _help(capsys, "data")
    builders = "builders: bbc-news, peoples-daily-pos, flan, self-instruct"
    assert f"formats: alpaca, openai, sharegpt; {builders}" in text
    assert "--format STR one format for all (default: detect) (registered: alpaca" in (
        _help(capsys, "data", "stats")
    )
    text = _help(capsys, "data", "build")
    assert "BUILDER bbc-news FLAN-style templates over bbc-news peoples-daily-pos" in text
    assert "FLAN-style templates over peoples-daily-pos flan FLAN-style" in text
    assert "self-instruct the model writes new tasks" in text


# ── fixes are spelt as the flags of the verb that raised the error ──────────────────────────


def test_data_stats_hints_its_own_flag_and_refuses_an_empty_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n', encoding="utf-8")
    assert main(["data", "stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "or pass --skip_bad to skip it" in err and "data.skip_bad" not in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert main(["data", "stats", str(empty)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"lmforge data stats: error: instruction file {empty} is empty: it holds no records\n"
    )


def test_one_corpus_error_is_spelt_per_verb(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("一二三 text".encode() + b"\xff")
    assert main(["tokenizer", "train", str(bad), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "or pass --skip_bad to skip it" in err and "skip_bad=True" not in err
    assert main(["pretrain", f"--data.corpus={bad}", f"--run_dir={tmp_path / 'r'}"]) == 2
    assert "or pass --data.skip_bad to skip it" in capsys.readouterr().err
    assert main(["tokenizer", "train", str(bad), "--skip-bad", "--out", str(tmp_path / "t")]) == 2
    assert "is empty" in capsys.readouterr().err  # skipped, and then nothing is left


# ── text flags as typed ─────────────────────────────────────────────────────────────────────

LINES = {"be": "To be or not to be, 生存还是毁灭 🙂", "the": "The slings and arrows"}


def test_a_template_flag_reaches_the_run_as_typed(tiny_model_dir, tmp_path):
    data = tmp_path / "labelled.jsonl"
    rows = [{"text": t, "label": label} for label, t in LINES.items()] * 6
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    template = 'Review: "{text}"\\n评论 {not: yaml}：'
    run = tmp_path / "run"
    argv = ["finetune", f"--model={tiny_model_dir}", f"--run_dir={run}", "--method", "none"]
    argv += [f"--data.source={data}", "--data.template", template, "--data.max_length=32"]
    assert main([*argv, "--train.batch_size=4"]) == 0
    saved = (run / "config.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(saved)["data"]["template"] == 'Review: "{text}"\n评论 {not: yaml}：'
    assert json.loads((run / "results.json").read_text())["labels"] == ["be", "the"]


def test_the_prompt_is_a_positional_as_typed(tiny_model_dir, capsys):
    argv = ["generate", "--model", str(tiny_model_dir), "--max_new_tokens", "2", "--temperature"]
    assert main([*argv, "0", "To be,\\nor: {not}"]) == 0
    assert capsys.readouterr().out.startswith("To be,\nor: {not}")
    assert main([*argv, "0", "--prompt", "That is"]) == 0  # the flag spelling still works
    assert capsys.readouterr().out.startswith("That is")
