"""Tool calls through lmforge serve: the OpenAI `tools` / `tool_choice` fields, calls
generated under their schema, replies parsed into `tool_calls`, refusals as 400s."""

from __future__ import annotations

import json

import pytest

from lmforge.model.generate import generate
from lmforge.serve.limits import Limits
from lmforge.serve.submit import ApiError
from lmforge.serve.tool_calls import ToolCalls, chosen_tools
from lmforge.tools.formats import ToolPrompt
from tests.serve.helpers import LiveServer, greedy, model, server_state, tokenizer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("outlines_core")


def spec(name: str, params: dict) -> dict:
    schema = {"type": "object", "properties": params, "required": list(params)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


WEATHER = spec("get_weather", {"city": {"type": "string", "maxLength": 6}})
ADD = spec("add", {"a": {"type": "integer"}, "b": {"type": "integer"}})
ASK = [{"role": "user", "content": "北京天气怎么样？"}]


@pytest.fixture(scope="module")
def served():
    tok = tokenizer()
    lm = model(tok.vocab_size, context=1024)
    state = server_state(lm, tok, limits=Limits(max_tokens=200))
    state.extensions = ToolCalls(tok, state.chat_eos)
    with LiveServer(state) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        yield client, state, lm, tok


def ask(client, max_tokens: int = 150, **kw):
    return client.chat.completions.create(model="tiny", messages=ASK, max_tokens=max_tokens, **kw)


def test_a_required_call_is_one_valid_call_of_a_given_tool(served):
    client, *_ = served
    reply = ask(client, tools=[WEATHER, ADD], tool_choice="required", temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city"} and isinstance(args["city"], str) and len(args["city"]) <= 6
    else:
        assert call.function.name == "add" and {type(args["a"]), type(args["b"])} == {int}


def test_a_named_tool_is_the_one_called(served):
    client, *_ = served
    choice = {"type": "function", "function": {"name": "add"}}
    reply = ask(client, tools=[WEATHER, ADD], tool_choice=choice, temperature=0.8, seed=3)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "add"
    assert sorted(json.loads(call.function.arguments)) == ["a", "b"]


def test_auto_answers_as_generate_does_on_the_tools_prompt(served):
    client, state, lm, tok = served
    reply = ask(client, tools=[WEATHER], temperature=0)
    prompt = tok.encode(ToolPrompt(tok).render(ASK, [WEATHER]))
    expected = generate(lm, [prompt], greedy(150), eos_token_id=state.chat_eos)[0]
    parsed = state.extensions.parse(tok.decode(expected.token_ids), [WEATHER])
    assert (reply.choices[0].message.content or "") == (parsed.content or "")


def test_what_cannot_be_constrained_is_refused(served):
    client, *_ = served
    with pytest.raises(openai.BadRequestError, match="response_format 'json_object'"):
        ask(client, response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="'nope', which is not in tools"):
        ask(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="a tool call needs at least"):
        ask(client, tools=[WEATHER], tool_choice="required", max_tokens=3)


def test_replies_parse_into_openai_tool_calls():
    ext = ToolCalls(tokenizer(), [0])
    text = 'Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    parsed = ext.parse(text, [ADD])
    assert parsed.content == "Sure."
    assert parsed.tool_calls == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
        }
    ]
    assert ext.parse("只是文字", [ADD]).tool_calls == []
    assert chosen_tools([ADD], "none") is None and chosen_tools([ADD], "required") == [ADD]
    with pytest.raises(ApiError, match="tool_choice"):
        chosen_tools([ADD], "sometimes")
