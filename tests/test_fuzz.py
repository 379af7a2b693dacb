"""Property-based tests of everything that parses what people type or bring: instruction
files in every format and file type, chat-template rendering, the command-line override
parser and the tokenizer. Whatever the input, only lmforge's own errors may escape (never a
traceback of another kind), and the tokenizer's round trip is exact."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.chat import TEMPLATES, chat_format
from lmforge.config import decode_escapes, load
from lmforge.data.instruct import read_instructions
from lmforge.errors import LmforgeError
from lmforge.recipes.pretrain import PretrainConfig, load_config
from lmforge.tokenizer import Tokenizer

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

# Text of every kind: any code point (surrogates excluded: not encodable), Chinese, emoji.
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from("北京是中国的首都🙂\n\t{}\"'"),
    max_size=40,
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "human", "gpt", "", "User"])
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": TEXT}) | st.dictionaries(
    st.sampled_from(["role", "content", "from", "value", "text"]), JSON_VALUE, max_size=3
)
RECORD = st.one_of(
    st.fixed_dictionaries(  # alpaca-like
        {"instruction": TEXT, "output": TEXT}, optional={"input": JSON_VALUE, "meta": JSON_VALUE}
    ),
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4)}),  # openai-like
    st.fixed_dictionaries({"conversations": st.lists(MESSAGE, max_size=4)}),  # sharegpt-like
    JSON_VALUE,
)


def only_lmforge_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except LmforgeError:
        return None


@FAST
@given(records=st.lists(RECORD, max_size=5), skip_bad=st.booleans())
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_instruction_files_in_json(suffix, records, skip_bad):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        text = (
            "\n".join(json.dumps(r) for r in records) if suffix == ".jsonl" else json.dumps(records)
        )
        path.write_text(text, encoding="utf-8")
        only_lmforge_errors(read_instructions, path, skip_bad=skip_bad)


@FAST
@given(raw=st.binary(max_size=200) | TEXT.map(lambda t: t.encode("utf-8")))
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_any_bytes_in_any_file_type(suffix, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(raw)
        only_lmforge_errors(read_instructions, path, skip_bad=True)


@FAST
@given(rows=st.lists(st.lists(TEXT, min_size=1, max_size=4), max_size=5))
def test_csv_rows(rows):
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows([["instruction", "input", "output"], *rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8")
        only_lmforge_errors(read_instructions, path, skip_bad=False)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(["hello world 北京 🙂 <|im_start|>user"] * 20, vocab_size=300)


@FAST
@given(messages=st.lists(MESSAGE, max_size=5), generation=st.booleans())
@pytest.mark.parametrize("template", sorted(TEMPLATES.names()))
def test_chat_rendering(tokenizer, template, messages, generation):
    text = only_lmforge_errors(
        chat_format, messages, tokenizer, add_generation_prompt=generation, template=template
    )
    assert text is None or isinstance(text, str)


@FAST
@given(key=st.text(min_size=1, max_size=20), value=TEXT)
def test_override_parser(key, value):
    only_lmforge_errors(load_config, None, [f"{key}={value}"])


@FAST
@given(
    field=st.sampled_from(["data.corpus", "train.lr", "train.max_steps", "model.preset",
                           "train.compile", "sample_prompt", "train.optimizer_options.x"]),
    value=TEXT,
)  # fmt: skip
def test_override_values_for_every_field_type(field, value):
    cfg = only_lmforge_errors(load_config, None, [f"{field}={value}"])
    if cfg is not None and field in ("data.corpus", "sample_prompt"):  # text stays verbatim
        typed = cfg.data.corpus if field == "data.corpus" else cfg.sample_prompt
        assert typed == decode_escapes(value)
        if "\\" not in value:
            assert typed == value


@FAST
@given(text=TEXT | st.text(max_size=200))
def test_tokenizer_round_trip_is_exact(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@FAST
@given(text=TEXT)
def test_yaml_config_files(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        only_lmforge_errors(load, PretrainConfig, path)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Tokenizer, object]:
    from lmforge.hub import load_tokenizer, resolve

    transformers = pytest.importorskip("transformers")
    try:
        ours = load_tokenizer("smollm2-135m-instruct")
    except LmforgeError as e:
        pytest.skip(f"the embedded model is not installed ({e})")
    return ours, transformers.AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))


@pytest.mark.assets
@FAST
@given(text=TEXT | st.text(max_size=200), messages=st.lists(MESSAGE, max_size=4))
def test_a_real_tokenizer_and_template(smollm2, text, messages):
    """A checkpoint's vocabulary may lack some bytes (SmolLM2 has no symbol for 0xF1): its
    round trip is what transformers makes of it, token for token."""
    ours, reference = smollm2
    ids = ours.encode(text)
    assert ids == reference(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == reference.decode(ids)
    only_lmforge_errors(chat_format, messages, ours)
