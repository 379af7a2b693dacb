"""Tool calls in chat formats: parity with transformers on real templates, the default format,
and parsing of malformed replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from lmforge.chat import chat_format
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer
from lmforge.tools import ToolCall, calculator
from lmforge.tools.formats import CALL_FORMATS, ToolPrompt, native_format, template_messages

TEMPLATES = Path(__file__).parent / "templates"
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>",
]  # fmt: skip
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "城市, e.g. 北京"}},
            "required": ["city"],
        },
    },
}
TOOLS = [calculator.spec(), WEATHER]


def calls(*pairs: tuple[str, dict]) -> list[dict]:
    return [
        ToolCall(n, json.dumps(a, ensure_ascii=False), f"call_{i}").to_openai()
        for i, (n, a) in enumerate(pairs)
    ]


def conversation(two_calls: bool) -> list[dict]:
    asked = [("calculator", {"expression": "4732 - 1298"})]
    answers = [{"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "3434"}]
    if two_calls:
        asked.append(("weather", {"city": "北京"}))
        answers.append(
            {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "晴, 25°C"}
        )
    return [
        {"role": "system", "content": "You are careful. 请简短回答。"},
        {"role": "user", "content": "What is 4732 - 1298? 北京天气如何?"},
        {"role": "assistant", "content": "", "tool_calls": calls(*asked)},
        *answers,
        {"role": "assistant", "content": "3434, 晴."},
        {"role": "user", "content": "Thanks!"},
    ]


@pytest.fixture(scope="module")
def hf_tokenizer():
    text = "the weather today is calculated by tools and functions; 北京 晴 " * 40
    return Tokenizer.train([text], vocab_size=400, special_tokens=SPECIALS).hf


def pair(
    hf_tokenizer, name: str, bos: str | None, eos: str
) -> tuple[Tokenizer, PreTrainedTokenizerFast]:
    source = (TEMPLATES / f"{name}.jinja").read_text()
    ours = Tokenizer(hf_tokenizer, eos_token=eos, bos_token=bos, chat_template=source)
    theirs = PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer, bos_token=bos, eos_token=eos, chat_template=source
    )
    return ours, theirs


@pytest.mark.parametrize(
    ("name", "bos", "eos", "two_calls", "fmt"),
    [
        ("qwen2.5", None, "<|im_end|>", True, "hermes"),
        ("llama3.2", "<|begin_of_text|>", "<|eot_id|>", False, "llama3"),  # one call per turn
    ],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_transformers_apply_chat_template(
    hf_tokenizer, name, bos, eos, two_calls, fmt, add_generation_prompt
):
    ours, theirs = pair(hf_tokenizer, name, bos, eos)
    prompt = ToolPrompt(ours)
    assert prompt.native == fmt
    messages = conversation(two_calls)
    extra = {"date_string": "26 Jul 2024"}
    expected = theirs.apply_chat_template(
        template_messages(messages),
        tools=TOOLS,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **extra,
    )
    got = prompt.render(messages, TOOLS, add_generation_prompt=add_generation_prompt, **extra)
    assert got == expected
    assert "北京" in got and "4732 - 1298" in got and "3434" in got
    no_tools = theirs.apply_chat_template(messages[:2], tokenize=False, **extra)
    assert chat_format(messages[:2], ours, add_generation_prompt=False, **extra) == no_tools


def test_qwen_rendering_exact(hf_tokenizer):
    ours, _ = pair(hf_tokenizer, "qwen2.5", None, "<|im_end|>")
    text = ToolPrompt(ours).render(conversation(True)[1:4], [WEATHER], add_generation_prompt=False)
    spec = json.dumps(WEATHER, ensure_ascii=False)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{spec}\n</tools>\n\nFor each function call, return a json object with function name and "
        'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": '
        '<function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is 4732 - 1298? 北京天气如何?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": '
        '{"expression": "4732 - 1298"}}\n</tool_call>\n<tool_call>\n{"name": "weather", '
        '"arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n3434\n</tool_response><|im_end|>\n"
    )


def test_smollm2_gets_the_default_format(hf_tokenizer):
    ours, _ = pair(hf_tokenizer, "smollm2", None, "<|im_end|>")
    prompt = ToolPrompt(ours)
    assert prompt.native is None and prompt.format is CALL_FORMATS.get("hermes")
    text = prompt.render(conversation(True), [calculator.spec()])
    spec = json.dumps(calculator.spec(), ensure_ascii=False)
    assert text == (
        "<|im_start|>system\nYou are careful. 请简短回答。\n\nYou can use tools. "
        f"Their descriptions, one JSON object per line:\n<tools>\n{spec}\n</tools>\n"
        "To use a tool, reply with one "
        'block per call:\n<tool_call>\n{"name": "TOOL NAME", "arguments": {ARGUMENTS AS JSON}}\n'
        "</tool_call>\nEach result comes back in <tool_response></tool_response>. When you know "
        "the answer, reply with it and no tool call.<|im_end|>\n"
        "<|im_start|>user\nWhat is 4732 - 1298? 北京天气如何?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": '
        '"4732 - 1298"}}\n</tool_call>\n<tool_call>\n{"name": "weather", "arguments": {"city": '
        '"北京"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n3434\n</tool_response>\n<tool_response>\n晴, 25°C\n"
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n3434, 晴.<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_templates_without_tools_and_validation():
    assert native_format("{% for m in messages %}{{ m['content'] }}{% endfor %}") is None
    assert native_format((TEMPLATES / "smollm2.jinja").read_text()) is None
    with pytest.raises(
        DataError, match=r"messages\[0\]\.tool_calls must be a list on an assistant"
    ):
        chat_format(
            [{"role": "user", "content": "x", "tool_calls": []}], Tokenizer.train(["ab"] * 9, 300)
        )


# ------------------------------------------------------------------------------- parsing

HERMES = CALL_FORMATS.get("hermes")
LLAMA3 = CALL_FORMATS.get("llama3")


def test_hermes_parses_several_calls_among_text():
    text = (
        'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n'
        '</tool_call>\n<tool_call>{"name": "weather", "arguments": "{\\"city\\": \\"北京\\"}"}'
        "</tool_call>"
    )
    reply = HERMES.parse(text)
    assert reply.content == "Let me compute." and reply.errors == []
    assert [(c.name, c.parsed()[0], c.id) for c in reply.calls] == [
        ("calculator", {"expression": "2+2"}, "call_0"),
        ("weather", {"city": "北京"}, "call_1"),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}</tool_call>',
            "tool call 0 is not valid JSON (Expecting ',' delimiter at character 57): "
            '{"name": "calculator", "arguments": {"expression": "2+2"}',
        ),
        (
            "<tool_call>calculator(2+2)</tool_call>",
            "tool call 0 is not valid JSON (Expecting value",
        ),
        ('<tool_call>{"arguments": {}}</tool_call>', 'tool call 0 must be {"name": ...'),
        ('<tool_call>["calculator"]</tool_call>', 'tool call 0 must be {"name": ...'),
        ('<tool_call>{"name": "calc', "tool call 0 is not valid JSON (Unterminated string"),
    ],
)
def test_hermes_reports_malformed_calls(text, error):
    reply = HERMES.parse("I will call. " + text)
    assert reply.calls == [] and reply.content == "I will call."
    assert len(reply.errors) == 1 and reply.errors[0].startswith(error)


def test_hermes_keeps_good_calls_beside_bad_ones():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{oops}</tool_call>'
    reply = HERMES.parse(text)
    assert [c.name for c in reply.calls] == ["a"] and reply.errors[0].startswith("tool call 1 ")
    assert HERMES.parse("The answer is 42.").calls == []


def test_llama3_parses_json_replies():
    reply = LLAMA3.parse(
        '<|python_tag|>{"name": "weather", "parameters": {"city": "北京"}}; '
        '{"name": "b", "parameters": {}}'
    )
    assert [(c.name, c.parsed()[0]) for c in reply.calls] == [
        ("weather", {"city": "北京"}),
        ("b", {}),
    ]
    assert LLAMA3.parse("The answer is 42.").content == "The answer is 42."
    bad = LLAMA3.parse('{"name": "weather", "parameters": {"city": }')
    assert bad.calls == [] and bad.errors[0].startswith("tool call 0 is not valid JSON")


def test_written_calls_parse_back():
    call = ToolCall("calculator", '{"expression": "3 × 4"}')
    for fmt in (HERMES, LLAMA3):
        back = fmt.parse(fmt.write(call)).calls[0]
        assert (back.name, back.parsed()[0]) == ("calculator", {"expression": "3 × 4"})
