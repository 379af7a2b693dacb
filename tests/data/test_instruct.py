"""Instruction data: formats × file types, errors with their place, skip/dedup/stats, the
FLAN and self-instruct builders and the `lmforge data` verb."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data.flan import FlanConfig, build_flan, load_task
from lmforge.data.instruct import (
    FORMATS,
    Conversation,
    deduplicate,
    read_instructions,
    stats,
    write_instructions,
)
from lmforge.data.labelled import Example
from lmforge.data.self_instruct import (
    FILTERS,
    SelfInstructConfig,
    load_seed_tasks,
    parse_tasks,
    self_instruct,
    self_instruct_prompt,
)
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer

SYSTEM = "Be brief."
# The conversations every format below holds, as the reader must return them.
EXPECTED = [
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Add the numbers.\n\n2, 3"},
        {"role": "assistant", "content": "5"},
    ],
    [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ],
]


def _sharegpt(messages: list[dict]) -> dict:
    names = {"user": "human", "assistant": "gpt"}
    head = {"system": messages[0]["content"]} if messages[0]["role"] == "system" else {}
    turns = [{"from": names[m["role"]], "value": m["content"]} for m in messages[len(head) :]]
    return {**head, "conversations": turns}


SOURCES = {
    "openai": [{"messages": m} for m in EXPECTED],
    "sharegpt": [_sharegpt(m) for m in EXPECTED],
    # Alpaca holds one exchange: the third record is a different, single-turn one.
    "alpaca": [
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5", "system": SYSTEM},
        {"instruction": "Capital of France?", "output": "Paris."},
    ],
}
ALPACA_EXPECTED = EXPECTED[:2] + [EXPECTED[2][:2]]


def _cells(record: dict) -> dict:
    return {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in record.items()}


def write_source(records: list[dict], path: Path) -> None:
    """Write raw records the way people's files hold them (not through lmforge)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif path.suffix == ".csv":
        columns = sorted({k for r in records for k in r})
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(_cells(r) for r in records)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = sorted({k for r in records for k in r})  # from_pylist reads row 0's keys only
        pq.write_table(
            pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in records]), path
        )


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai"])
def test_every_format_and_file_type_round_trips(tmp_path: Path, fmt: str, suffix: str) -> None:
    src = tmp_path / f"src{suffix}"
    write_source(SOURCES[fmt], src)
    data = read_instructions(src)
    expected = ALPACA_EXPECTED if fmt == "alpaca" else EXPECTED
    assert [c.messages for c in data] == expected
    assert data.formats == {fmt: 3} and not data.skipped
    assert all(c.meta["source"] == "import" and c.meta["format"] == fmt for c in data)
    assert read_instructions(src, format=fmt).formats == {fmt: 3}  # forced, same result
    for out_suffix in (".json", ".jsonl", ".csv", ".parquet"):
        out = write_instructions(data.records, tmp_path / f"out{out_suffix}")
        again = read_instructions(out)
        assert [c.to_json() for c in again] == [c.to_json() for c in data]
        assert again.formats == {"openai": 3}


def test_places_name_the_line_or_row(tmp_path: Path) -> None:
    lines = [json.dumps({"messages": m}) for m in EXPECTED]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(lines[0] + "\n\n" + lines[1] + "\n", encoding="utf-8")
    assert [c.meta["origin"] for c in read_instructions(jsonl)] == [f"{jsonl}:1", f"{jsonl}:3"]
    js = tmp_path / "a.json"
    write_source(SOURCES["openai"], js)  # indent=2: elements start on lines 2, 14, 27
    starts = [int(c.meta["origin"].rsplit(":", 1)[1]) for c in read_instructions(js)]
    text = js.read_text().split("\n")
    assert [text[n - 1].strip() for n in starts] == ["{"] * 3 and starts[0] == 2
    csv_path = tmp_path / "a.csv"  # a quoted multi-line cell: the next row starts later
    csv_path.write_text('instruction,output\n"two\nlines",x\ny,z\n', encoding="utf-8")
    assert [c.meta["origin"] for c in read_instructions(csv_path)] == [
        f"{csv_path}:2",
        f"{csv_path}:4",
    ]


BAD_RECORDS = [
    ('{"messages": [{"role": "user", "content": "a"}', "malformed JSON"),
    (
        json.dumps({"messages": [{"role": "user", "content": "a"}] * 2}),
        r"messages\[1\]\.role: expected 'assistant', got 'user'",
    ),
    (
        json.dumps(
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]}
        ),
        r"conversations\[1\]\.value: the assistant turn is empty",
    ),
    (
        json.dumps({"conversations": [{"from": "robot", "value": "a"}]}),
        r"conversations\[0\]\.from: 'robot' is not one of",
    ),
    (json.dumps({"instruction": "a", "output": "  "}), "output: the assistant turn is empty"),
    (json.dumps({"instruction": "a", "output": 3}), "output: must be a string"),
    (
        json.dumps({"messages": [{"role": "user", "content": "a"}]}),
        r"messages\[0\]\.role: the conversation must end with an assistant turn",
    ),
    (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                ]
            }
        ),
        r"messages\[1\]\.role: a system message may only come first",
    ),
    (json.dumps({"prompt": "a", "completion": "b"}), "cannot tell the format"),
    (json.dumps({"messages": EXPECTED[0], "meta": 3}), "meta: must be an object"),
]


@pytest.mark.parametrize("line, message", BAD_RECORDS)
def test_each_error_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": EXPECTED[0]}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: {message}.*skip_bad=True"):
        read_instructions(path)


def test_errors_in_other_file_types(tmp_path: Path) -> None:
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_text('messages\n"[{""role"": ""user""}"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.csv:2: messages: the cell is not valid JSON"):
        read_instructions(bad_csv)
    pq_path = tmp_path / "b.parquet"
    write_source([SOURCES["alpaca"][0], {"instruction": "x", "output": ""}], pq_path)
    with pytest.raises(DataError, match=r"b\.parquet:row 2: output: the assistant turn is empty"):
        read_instructions(pq_path)
    broken = tmp_path / "b.json"
    broken.write_text('[\n {"messages": []},\n {"messages": [}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.json:2: messages: the conversation has no messages"):
        read_instructions(broken)
    with pytest.raises(DataError, match=r"b\.json:3: malformed JSON"):
        read_instructions(broken, skip_bad=True)  # the file is unreadable past the damage
    with pytest.raises(DataError, match=r"unknown instruction file type '\.txt'"):
        (tmp_path / "a.txt").write_text("x")
        read_instructions(tmp_path / "a.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_instructions(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match=r"instruction: missing \(the alpaca format needs"):
        (tmp_path / "f.jsonl").write_text(json.dumps({"messages": EXPECTED[0]}) + "\n")
        read_instructions(tmp_path / "f.jsonl", format="alpaca")
    assert set(FORMATS.names()) == {"alpaca", "openai", "sharegpt"}


def test_skip_bad_counts_and_dedup(tmp_path: Path) -> None:
    good = [json.dumps({"messages": m}) for m in EXPECTED]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good[0], "{oops", good[1], BAD_RECORDS[1][0], good[0]]) + "\n")
    data = read_instructions(path, skip_bad=True)
    assert len(data) == 3
    assert [s.origin for s in data.skipped] == [f"{path}:2", f"{path}:4"]
    assert "malformed JSON" in data.skipped[0].reason
    deduped = read_instructions(path, skip_bad=True, dedup=True)
    assert len(deduped) == 2 and deduped.duplicates == 1
    kept, removed = deduplicate([Conversation(EXPECTED[0], {"a": 1}), Conversation(EXPECTED[0])])
    assert removed == 1 and kept[0].meta == {"a": 1}  # the first one stays, meta not compared


def test_stats_figures_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_source(SOURCES["openai"] + [SOURCES["alpaca"][0]], path)
    path.write_text(path.read_text() + "{bad\n")
    data = read_instructions(path, skip_bad=True)
    tok = Tokenizer.train(["Say hi. Add the numbers. Capital of France? Paris. Rome."] * 5, 300)
    figures = stats(data, tok)
    roles = figures.pop("roles")
    assert figures == {
        "records": 4,
        "messages": 11,
        "turns": 5,
        "multi_turn": 1,
        "with_system": 1,
        "duplicates": 1,
        "formats": {"alpaca": 1, "openai": 3},
        "skipped": 1,
    }
    assert {r: (v["messages"], v["chars"]) for r, v in roles.items()} == {
        "system": (1, 9),
        "user": (5, 7 + 22 + 18 + 13 + 7),
        "assistant": (5, 3 + 1 + 6 + 5 + 3),
    }
    users = [m["content"] for c in data for m in c.messages if m["role"] == "user"]
    assert roles["user"]["tokens"] == sum(len(tok.encode(u)) for u in users)


# ── FLAN ──────────────────────────────────────────────────────────────────────────────────

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
FAKE = [
    Example(f"story number {i} " * 30, LABELS[i % 5], f"/data/{LABELS[i % 5]}/{i}.txt")
    for i in range(40)
]


def test_bbc_templates_split_into_disjoint_seen_and_heldout_phrasings() -> None:
    task = load_task("bbc-news")
    seen, heldout = task.phrasings("seen"), task.phrasings("heldout")
    assert len(seen) >= 6 and len(heldout) >= 3 and len(task.phrasings("all")) >= 8
    assert not {t.id for t in seen} & {t.id for t in heldout}
    assert len({t.answer for t in task.templates}) >= 3  # answer formats vary too


def test_flan_is_deterministic_and_keeps_provenance() -> None:
    config = FlanConfig(max_records=25, seed=3, max_chars=120)
    first, again = build_flan(config, FAKE), build_flan(config, FAKE)
    assert [c.to_json() for c in first] == [c.to_json() for c in again]
    other = build_flan(FlanConfig(max_records=25, seed=4, max_chars=120), FAKE)
    assert [c.to_json() for c in other] != [c.to_json() for c in first]
    seen_ids = {t.id for t in load_task("bbc-news").phrasings("seen")}
    for c in first:
        meta = c.meta
        assert set(meta) >= {"source", "task", "template_id", "split", "example_id"}
        assert meta["source"] == "flan" and meta["template_id"] in seen_ids
        assert meta["label"] in c.messages[1]["content"]
        assert meta["example_id"].startswith(meta["label"] + "/")
        assert len(c.messages[0]["content"]) < 120 + 300  # text clipped, template around it
    assert len({c.meta["template_id"] for c in first}) >= 4
    heldout = build_flan(FlanConfig(phrasings="heldout", seed=3), FAKE)
    assert len(heldout) == 40 and {c.meta["phrasing"] for c in heldout} == {"heldout"}


def test_bad_task_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "task: t\ndataset: d\nlabels: [a]\ntemplates:\n"
        "  - {id: x, phrasing: seen, prompt: '{text} {colour}', answer: '{label}'}\n"
    )
    with pytest.raises(ConfigError, match=r"templates\[0\] \(x\)\.prompt: bad placeholder"):
        load_task(path)
    with pytest.raises(ConfigError, match="neither a registered task"):
        load_task("no-such-task")


# ── Self-Instruct ─────────────────────────────────────────────────────────────────────────


def _fake_generator(outputs: list[str]):
    prompts: list[str] = []

    def generate_fn(prompt: str) -> str:
        prompts.append(prompt)
        return outputs[len(prompts) - 1] if len(prompts) <= len(outputs) else ""

    return generate_fn, prompts


def test_self_instruct_filters_and_provenance() -> None:
    seeds = load_seed_tasks()
    assert len(seeds) >= 10
    outputs = [
        " Name three rivers that flow through Germany.\nInput: <noinput>\nOutput: Rhine, Elbe"
        "\n\nTask 8\nInstruction: Describe the image in two sentences.\nInput: <noinput>\n"
        "Output: A cat.\n\nTask 9\nInstruction: Rewrite this sentence in the passive voice.\n"
        "Input: The dog bit him.\nOutput: He was bitten by the dog.",
        " Hi.\nInput: <noinput>\nOutput: Hello",  # too short an instruction
        " Give a synonym for the word.\nInput: happy\nOutput:",  # empty output
        " this has no fields at all",  # unparseable
        " Name three rivers that flow through Germany.\nInput: <noinput>\nOutput: Rhine",  # dup
        " Convert the temperature from Celsius to Fahrenheit.\nInput: 20 C\nOutput: 68 F",
    ]
    generate_fn, prompts = _fake_generator(outputs)
    config = SelfInstructConfig(n=2, k=4, k_machine=1, seed=0)
    result = self_instruct(generate_fn, seeds, config)
    assert [c.messages[0]["content"] for c in result.records] == [
        "Name three rivers that flow through Germany.",
        "Convert the temperature from Celsius to Fahrenheit.\n\n20 C",
    ]
    assert dict(result.rejected) == {"format": 1, "rouge": 2, "length": 1, "empty": 1, "parse": 1}
    assert result.prompts == 6 and prompts[0].count("Instruction:") == 5
    first, second = (c.meta for c in result.records)
    assert first["source"] == "self-instruct" and first["round"] == 1 and second["round"] == 6
    assert len(first["prompt_ids"]) == 4 and all(i.startswith("seed-") for i in first["prompt_ids"])
    assert "si-00001" in second["prompt_ids"]  # machine tasks join the pool
    assert 0 <= second["rouge_max"] < 0.7
    assert set(FILTERS.names()) == {"format", "length"}


def test_self_instruct_parsing_and_prompt() -> None:
    seeds = load_seed_tasks()[:2]
    prompt = self_instruct_prompt(seeds)
    assert prompt.endswith("Task 3\nInstruction:") and "Input: <noinput>" in prompt
    assert parse_tasks(" Do X.\nInput: <noinput>\nOutput: done\n") == [
        {"instruction": "Do X.", "input": "", "output": "done"}
    ]
    assert parse_tasks(" nothing here") == [None]


# ── the `lmforge data` verb ───────────────────────────────────────────────────────────────


def test_cli_stats_and_import(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.jsonl"
    write_source(SOURCES["sharegpt"] + SOURCES["alpaca"][:1], src)
    src.write_text(src.read_text() + "{broken\n")
    assert main(["data", "stats", str(src), "--skip-bad", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["records"], figures["duplicates"], figures["skipped"]) == (4, 1, 1)
    assert main(["data", "stats", str(src)]) == 2
    assert f"{src}:5: malformed JSON" in capsys.readouterr().err
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(src), "--out", str(out), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 bad, dropped 1 dup" in printed and "out.rejected.jsonl" in printed
    assert [c.messages for c in read_instructions(out)] == EXPECTED
    rejected = [json.loads(line) for line in (tmp_path / "out.rejected.jsonl").open()]
    assert (
        rejected == [{"origin": f"{src}:5", "reason": rejected[0]["reason"], "record": "{broken"}]
        and "malformed JSON" in rejected[0]["reason"]
    )


def test_import_never_writes_over_its_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.jsonl"
    write_source(SOURCES["alpaca"], src)
    before = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.hardlink_to(src)
    for out in (src, link):
        assert main(["data", "import", str(src), "--out", str(out), "--skip-bad"]) == 2
        assert "is also an input" in capsys.readouterr().err
    assert src.read_bytes() == before


@pytest.mark.assets
def test_cli_build_bbc_news(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bbc.jsonl"
    argv = ["data", "build", "bbc-news", "--out", str(out), "--max", "12", "--seed", "1"]
    assert main(argv + ["--phrasings", "heldout", "--split", "test"]) == 0
    assert "wrote 12 records" in capsys.readouterr().out
    records = read_instructions(out).records
    heldout = {t.id for t in load_task("bbc-news").phrasings("heldout")}
    assert {r.meta["template_id"] for r in records} <= heldout
    assert {r.meta["split"] for r in records} == {"test"}
    assert all(r.meta["label"] in r.messages[1]["content"] for r in records)
