"""LocalChatModel on tiny models: real Qwen2.5 / Llama 3.2 templates, constrained calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lmforge.agents import LocalChatModel, react, react_many
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig
from lmforge.tokenizer import Tokenizer
from lmforge.tools import Toolbox, ToolCall, calculator

pytest.importorskip("outlines_core")
TEMPLATES = Path(__file__).parent.parent / "tools" / "templates"
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>",
]  # fmt: skip
TEXT = 'the calculator "expression": "2 + 2" tool_call 北京 parameters arguments name ' * 40


def tiny_hf(family: str, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config_cls, model_cls = {"qwen2.5": (Qwen2Config, Qwen2ForCausalLM),
                             "llama3.2": (LlamaConfig, LlamaForCausalLM)}[family]  # fmt: skip
    config = config_cls(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    )  # fmt: skip
    return model_cls(config).eval()


@pytest.mark.parametrize(
    ("family", "eos", "bos", "opening", "result_marker"),
    [
        ("qwen2.5", "<|im_end|>", None, '<tool_call>\n{"name": "calculator", "arguments": {',
         "<tool_response>\n"),
        ("llama3.2", "<|eot_id|>", "<|begin_of_text|>", '{"name": "calculator", "parameters": {',
         "<|start_header_id|>ipython<|end_header_id|>\n\n"),
    ],
)  # fmt: skip
def test_required_calls_through_real_templates(family, eos, bos, opening, result_marker):
    hf = Tokenizer.train([TEXT], vocab_size=400, special_tokens=SPECIALS).hf
    source = (TEMPLATES / f"{family}.jinja").read_text()
    tokenizer = Tokenizer(hf, eos_token=eos, bos_token=bos, chat_template=source)
    model = tiny_hf(family, tokenizer.vocab_size)
    sampling = SamplingConfig(max_new_tokens=80, temperature=1.0, seed=0)
    chat = LocalChatModel(model, tokenizer, sampling)
    box = Toolbox([calculator])
    log = react(chat, box, "What is 2 + 2? 北京", system=None, max_steps=2, tool_choice="required")
    replies = [m for m in log.messages if m["role"] == "assistant"]
    assert log.stop_reason == "budget" and log.calls() == 2 and len(replies) == 2
    for reply in replies:  # each is one call the toolbox accepts
        (entry,) = reply["tool_calls"]
        assert box.check(ToolCall.from_openai(entry))[2] is None
    texts = [e.text for e in log.events if e.kind in ("observation", "error")]
    assert len(texts) == 2 and all(not t.startswith("tool call") for t in texts)
    prompt = chat.prompt.render(log.messages, box.specs())
    shown = json.dumps(texts[0], ensure_ascii=False) if family == "llama3.2" else texts[0]
    assert result_marker + shown in prompt and opening in prompt  # Llama 3.2 JSON-encodes it


def bigram_model(vocab: int, chain: list[int]) -> CausalLM:
    """Greedy decoding follows `chain` (token → next token); every block writes nothing, so
    the last hidden state is the current token's one-hot embedding (as in test_generate);
    the width is the vocabulary rounded up to whole heads, the extra dimensions unused."""
    width = -(-vocab // 8) * 8  # 4 heads of an even width (RoPE)
    model = CausalLM(preset("tiny", vocab_size=vocab, d_model=width, n_head=4,
                            tie_embeddings=False, max_seq_len=2048)).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, width))
        head = torch.zeros(vocab, width)
        for a, b in zip(chain, chain[1:]):
            head[b, a] = 10.0
        model.lm_head.weight.copy_(head)
    return model


def test_auto_mode_writes_free_text_then_a_constrained_call():
    tokenizer = Tokenizer.train([TEXT + " Sure <tool_call>!"], vocab_size=400)
    said = tokenizer.encode("\nSure <tool_call>!") + [tokenizer.token_to_id("<|im_end|>")]
    model = bigram_model(tokenizer.vocab_size, said)  # says "Sure <tool_call>!" after "\n"
    box = Toolbox([calculator])
    sampling = SamplingConfig(max_new_tokens=60, temperature=0.0)
    messages = [{"role": "user", "content": "2 + 2?"}]
    free = LocalChatModel(model, tokenizer, sampling, constrain=False).reply(messages, box.specs())
    assert free.text == "Sure <tool_call>!" and free.calls == [] and len(free.errors) == 1
    loose = LocalChatModel(model, tokenizer, sampling, constrain=False)
    prefilled = loose.reply(messages, box.specs(), tool_choice="required")
    assert prefilled.text == "<tool_call>\nSure <tool_call>!" and len(prefilled.errors) == 1
    reply = LocalChatModel(model, tokenizer, sampling).reply(messages, box.specs())
    assert reply.text.startswith("Sure <tool_call>\n{") and reply.text.endswith("}\n</tool_call>")
    assert reply.content == "Sure" and reply.errors == [] and len(reply.calls) == 1
    assert box.check(reply.calls[0])[2] is None


def test_react_many_equals_one_question_at_a_time():
    tokenizer = Tokenizer.train([TEXT], vocab_size=400)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=2048)).eval()
    chat = LocalChatModel(model, tokenizer, SamplingConfig(max_new_tokens=60, temperature=0.0),
                          batch=2)  # fmt: skip
    box, questions = Toolbox([calculator]), ["2 + 2?", "北京 3 * 3?"]
    settings = dict(max_steps=1, first_tool_choice="required", system=None)
    together = react_many(chat, box, questions, **settings)
    alone = [react(chat, box, q, **settings) for q in questions]
    assert [t.messages for t in together] == [t.messages for t in alone]
    assert all(t.calls() >= 1 for t in together)
