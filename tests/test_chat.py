"""Chat templates: built-in formats, parity with transformers, template files, validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge import hub
from lmforge.chat import (
    TEMPLATES,
    chat_format,
    chat_stop_strings,
    chat_stop_tokens,
    render,
)
from lmforge.errors import AssetError, ConfigError, DataError
from lmforge.tokenizer import Tokenizer

TEXT = (
    "User: what is the weather like today? Assistant: it is sunny and warm, with a light "
    "breeze from the west. System: you are a helpful assistant who answers briefly. "
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2+2?"},
]
CHATML_CHAT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\n2+2?<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT * 20], vocab_size=320)  # specials 0..3, as DEFAULT_SPECIALS


# ------------------------------------------------------------------------- built-in formats


def test_registry_holds_the_builtin_templates() -> None:
    assert {"chatml", "plain"} <= set(TEMPLATES.names())


def test_chatml_is_the_default_for_native_tokenizers(tok: Tokenizer) -> None:
    assert tok.chat_template is None
    assert chat_format(CHAT, tok) == CHATML_CHAT + "<|im_start|>assistant\n"
    assert chat_format(CHAT, tok, add_generation_prompt=False) == CHATML_CHAT
    assert render("chatml", CHAT, add_generation_prompt=False) == CHATML_CHAT


def test_chatml_markers_encode_as_one_token_each(tok: Tokenizer) -> None:
    ids = tok.encode(chat_format(CHAT, tok))
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert (start, end) == (2, 3)
    assert ids.count(start) == 5 and ids.count(end) == 4  # 4 messages + the generation prompt
    assert ids[0] == start and tok.decode(ids[:1]) == "<|im_start|>"
    assert tok.decode(ids) == chat_format(CHAT, tok)


def test_plain_template_exact(tok: Tokenizer) -> None:
    expected = "System: Be brief.\n\nUser: Hi!\nAssistant: Hello.\nUser: 2+2?\nAssistant:"
    assert chat_format(CHAT, tok, template="plain") == expected
    tool = [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}]
    assert render("plain", tool, add_generation_prompt=False) == "User: x\nTool: 42\n"


def test_template_argument_is_the_fallback_for_tokenizers_without_one(tok: Tokenizer) -> None:
    source = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert chat_format(CHAT[1:2], tok, template=source) == "<user>Hi!"
    own = Tokenizer(tok.hf, chat_template=source)
    assert chat_format(CHAT[1:2], own, template="plain") == "<user>Hi!"  # the model's own wins
    with pytest.raises(ConfigError, match=r"unknown chat template 'chatm'.*chatml, plain"):
        chat_format(CHAT, tok, template="chatm")


def test_render_passes_special_tokens_and_extra_variables() -> None:
    source = "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}|{{ who }}"
    msgs = [{"role": "user", "content": "a", "name": None}]  # None-valued keys are dropped
    assert render(source, msgs, bos_token="<s>", eos_token="</s>", who="me") == "<s>a</s>|me"
    assert render("{{ messages[0] | length }}", msgs) == "2"
    # tools/documents are None unless given, as transformers passes them.
    has_tools = "{% if tools is not none %}{{ tools | tojson }}{% else %}none{% endif %}"
    assert render(has_tools, msgs) == "none"
    assert render(has_tools, msgs, tools=[{"name": "f"}]) == '[{"name": "f"}]'


# ---------------------------------------------------------------------------- stop tokens


def test_stop_tokens_and_strings(tok: Tokenizer) -> None:
    assert chat_stop_tokens(tok) == [0, 3]  # <|endoftext|>, <|im_end|>
    assert chat_stop_strings(tok) == ["<|endoftext|>", "<|im_end|>"]
    assert chat_stop_strings(tok, template="plain") == ["<|endoftext|>", "<|im_end|>", "\nUser:"]
    bare = Tokenizer.train([TEXT], vocab_size=300, special_tokens=[])
    assert chat_stop_tokens(bare) == [] and chat_stop_strings(bare, template="plain") == ["\nUser:"]


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", r"messages must be a list"),
        ([], r"messages is empty"),
        ([{"role": "user", "content": "a"}, "b"], r"messages\[1\] must be a mapping"),
        ([{"content": "a"}], r"messages\[0\]\.role is None"),
        ([{"role": "bot", "content": "a"}], r"messages\[0\]\.role is 'bot'; use one of system"),
        (CHAT[1:] + CHAT[:1], r"messages\[3\]\.role is 'system'; .* only be first"),
        ([CHAT[0], {"role": "user"}], r"messages\[1\]\.content must be a string, got NoneType"),
        ([{"role": "user", "content": ["a"]}], r"messages\[0\]\.content must be a string"),
    ],
)
def test_invalid_messages_name_index_and_field(
    tok: Tokenizer, messages: object, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        chat_format(messages, tok)  # type: ignore[arg-type]


def test_template_errors() -> None:
    with pytest.raises(ConfigError, match=r"chat template line 2: .*endfor"):
        render("{% for m in messages %}\n{{ m }}", CHAT)
    rejecting = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    )
    with pytest.raises(DataError, match="rejects this conversation: no system"):
        render(rejecting, CHAT)
    assert render(rejecting, CHAT[1:]) == ""
    with pytest.raises(ConfigError, match="failed to render"):
        render("{{ nothing.here }}", CHAT)
    with pytest.raises(ConfigError, match="failed to render"):  # the sandbox holds
        render("{{ messages.__class__.__mro__ }}", CHAT)


# ---------------------------------------------------------------------- template files


def test_chat_template_survives_save_and_from_file(tok: Tokenizer, tmp_path: Path) -> None:
    source = TEMPLATES.get("plain").source
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 512}', encoding="utf-8")
    (tmp_path / "chat_template.jinja").write_text("stale", encoding="utf-8")
    Tokenizer(tok.hf, bos_token="<|im_start|>", chat_template=source).save(tmp_path)
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.chat_template == source and loaded.bos_token == "<|im_start|>"
    assert (loaded.eos_id, loaded.pad_id) == (tok.eos_id, tok.pad_id)
    assert chat_format(CHAT, loaded) == chat_format(CHAT, tok, template="plain")
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["model_max_length"] == 512 and cfg["chat_template"] == source  # merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok.save(tmp_path)  # no template: the key goes
    assert Tokenizer.from_file(tmp_path).chat_template is None


def test_chat_template_jinja_file_wins_over_the_key(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert Tokenizer.from_file(tmp_path).chat_template == "D"
    (tmp_path / "chat_template.jinja").write_text("J{{ 1 }}\n", encoding="utf-8")
    assert Tokenizer.from_file(tmp_path).chat_template == "J{{ 1 }}\n"


# ------------------------------------------------------------------- parity with transformers

RICH = """{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for m in messages %}
    {% if m['role'] == 'tool' %}{% continue %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
    [{{ m['role'] | upper }}] {{ m['content'] | tojson }}
{% endfor %}
{% if add_generation_prompt %}
    {% generation %}[ASSISTANT]{% endgeneration %}
{% endif %}
{{ eos_token }} turns={{ ns.turns }} {{ tools | tojson }}
"""


def test_rendering_matches_transformers_apply_chat_template(tok: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer(tok.hf, bos_token="<|im_start|>", chat_template=RICH)
    ours.save(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = [
        {"role": "system", "content": "<b> & 'quoted' 你好"},
        {"role": "user", "content": "line one\nline two"},
        {"role": "tool", "content": "skipped"},
        {"role": "assistant", "content": "ok"},
    ]
    for gen in (True, False):
        expected = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert chat_format(msgs, ours, add_generation_prompt=gen) == expected
        assert "turns=3" in expected and "你好" in expected


# ------------------------------------------------------------------------- load_tokenizer


def test_load_tokenizer_from_a_directory_or_file(tok: Tokenizer, tmp_path: Path) -> None:
    Tokenizer(tok.hf, chat_template="X{{ 1 }}").save(tmp_path)
    for where in (tmp_path, str(tmp_path / "tokenizer.json")):
        loaded = hub.load_tokenizer(where)
        assert loaded.fingerprint == tok.fingerprint and loaded.chat_template == "X{{ 1 }}"


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"no-such-model is neither an embedded model"):
        hub.load_tokenizer("no-such-model")
    with pytest.raises(AssetError, match="holds no tokenizer.json"):
        hub.load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------- the real model

SMOL_CONVERSATIONS = {
    "system+user": CHAT[:2],
    "multi-turn": CHAT,
    "no system": CHAT[1:],
}


@pytest.fixture(scope="module")
def smol() -> tuple[Path, Tokenizer, object]:
    transformers = pytest.importorskip("transformers")
    cache = hub.ensure_converted("smollm2-135m-instruct")
    return (
        cache,
        hub.load_tokenizer("smollm2-135m-instruct"),
        transformers.AutoTokenizer.from_pretrained(str(cache)),
    )


@pytest.mark.assets
@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("name", list(SMOL_CONVERSATIONS))
def test_smollm2_chat_format_matches_transformers(smol: tuple, name: str, gen: bool) -> None:
    _, tok, ref = smol
    msgs = SMOL_CONVERSATIONS[name]
    expected = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert chat_format(msgs, tok, add_generation_prompt=gen) == expected
    assert tok.encode(expected) == ref.encode(expected, add_special_tokens=False)


@pytest.mark.assets
def test_smollm2_tokenizer_by_name_and_directory(smol: tuple, tmp_path: Path) -> None:
    cache, tok, _ = smol
    assert tok.chat_template is not None and "SmolLM" in tok.chat_template
    assert tok.eos_id == tok.token_to_id("<|im_end|>") == 2 and tok.bos_token == "<|im_start|>"
    assert chat_stop_tokens(tok) == [2] and chat_stop_strings(tok) == ["<|im_end|>"]
    # A model directory elsewhere (a copy without the weights) loads the same tokenizer.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(cache / name, tmp_path / name)
    copy = hub.load_tokenizer(tmp_path)
    assert copy.fingerprint == tok.fingerprint and copy.chat_template == tok.chat_template
    assert chat_format(CHAT[1:], copy) == chat_format(CHAT[1:], tok)
    assert "You are a helpful AI assistant named SmolLM" in chat_format(CHAT[1:], copy)
