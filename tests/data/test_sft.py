"""SFT encoding: loss on assistant tokens only, truncation from the prompt side, packing
without attention across examples (packed loss == unpacked loss), resumable batches."""

from __future__ import annotations

import pytest
import torch

from lmforge.data.instruct import Conversation
from lmforge.data.sft import (
    IGNORE_INDEX,
    SFTBatches,
    collate_packed,
    collate_padded,
    encode_conversation,
    encode_conversations,
    pack_examples,
    packed_attention_mask,
)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.model import CausalLM, preset
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
    {"role": "assistant", "content": "4"},
]
SHORT = [
    CHAT[1:3],
    [{"role": "user", "content": "what is the weather"}, {"role": "assistant", "content": "sunny"}],
    CHAT,
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT * 20], vocab_size=320)


def loss_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The maximal runs of tokens that carry loss."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    return runs


@pytest.mark.parametrize(
    "template, replies",
    [("chatml", ["Hello.<|im_end|>", "4<|im_end|>"]), ("plain", [" Hello.\n", " 4\n"])],
)
def test_loss_only_on_assistant_tokens(tok: Tokenizer, template: str, replies: list[str]) -> None:
    ex = encode_conversation(Conversation(CHAT), tok, template)
    assert [tok.decode(run) for run in loss_runs(ex.input_ids, ex.labels)] == replies
    assert ex.truncated is None and ex.num_loss_tokens == sum(
        len(r) for r in loss_runs(ex.input_ids, ex.labels)
    )


@pytest.mark.assets
def test_loss_only_on_assistant_tokens_with_smollm2_template() -> None:
    from lmforge.hub import load_tokenizer

    smol = load_tokenizer("smollm2-135m-instruct")
    ex = encode_conversation(CHAT[1:], smol, max_length=None)
    text = smol.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert [smol.decode(r) for r in loss_runs(ex.input_ids, ex.labels)] == [
        "Hello.<|im_end|>",
        "4<|im_end|>",
    ]


def test_bad_conversations_and_templates_are_refused(tok: Tokenizer) -> None:
    with pytest.raises(DataError, match=r"messages\[2\]\.role: expected 'assistant'"):
        encode_conversation(CHAT[:2] + [CHAT[3]], tok)
    empty = CHAT[:2] + [{"role": "assistant", "content": " "}]
    with pytest.raises(DataError, match=r"messages\[2\]\.content: the assistant turn is empty"):
        encode_conversation(empty, tok)
    last_marked = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}<END>{% endif %}{% endfor %}"
    )
    with pytest.raises(ConfigError, match="prefix by prefix"):
        encode_conversation(CHAT, tok, last_marked)


def test_truncation_cuts_the_prompt_side_and_is_counted(tok: Tokenizer) -> None:
    full = encode_conversation(CHAT, tok)
    turns = encode_conversation(CHAT, tok, max_length=len(full) - 1)
    assert turns.truncated == "turns"
    text = tok.decode(turns.input_ids)
    assert "Be brief." in text and "Hi!" not in text and text.endswith("4<|im_end|>\n")
    long_user = [{"role": "user", "content": "what is the weather like " * 8}, CHAT[2]]
    whole = encode_conversation(long_user, tok)
    cut = encode_conversation(long_user, tok, max_length=len(whole) - 10)
    assert cut.truncated == "prompt" and len(cut) <= len(whole) - 10
    assert [tok.decode(r) for r in loss_runs(cut.input_ids, cut.labels)] == ["Hello.<|im_end|>"]
    tail = encode_conversation(CHAT, tok, max_length=6)
    assert tail.truncated == "tail" and len(tail) == 6 and tail.num_loss_tokens > 0
    with pytest.warns(UserWarning, match=r"3 of 4 examples were longer than max_length") as w:
        examples, report = encode_conversations(
            [CHAT, long_user, CHAT, SHORT[0]], tok, max_length=len(full) - 1
        )
    assert "2 lost their earliest exchanges" in str(w[0].message)
    assert len(examples) == 4 and dict(report.counts) == {"turns": 2, "prompt": 1}
    assert all(len(e) <= len(full) - 1 for e in examples)  # shortened, never dropped


def test_packing_positions_segments_and_mask(tok: Tokenizer) -> None:
    examples = [encode_conversation(c, tok) for c in SHORT[:2] + SHORT[:1]]
    sizes = [len(e) for e in examples]
    rows = pack_examples(examples, sizes[0] + sizes[1])
    assert len(rows) == 2 and len(rows[0].input_ids) == sizes[0] + sizes[1]
    assert rows[1].input_ids == examples[2].input_ids and rows[1].segment_ids == [1] * sizes[2]
    assert rows[0].position_ids == list(range(sizes[0])) + list(range(sizes[1]))
    assert rows[0].segment_ids == [1] * sizes[0] + [2] * sizes[1]
    assert rows[0].labels[sizes[0]] == IGNORE_INDEX
    mask = packed_attention_mask(torch.tensor([[1, 1, 2, 2, 0]]))
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.bool
    expected = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ]
    assert mask[0, 0].int().tolist() == expected
    additive = packed_attention_mask(torch.tensor([[1, 1, 2, 2, 0]]), torch.float32)
    assert torch.equal(additive[0, 0] == 0, mask[0, 0])
    with pytest.raises(DataError, match="cannot be packed"):
        pack_examples(examples, sizes[0] - 1)


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_packed_loss_equals_unpacked_loss(tok: Tokenizer, attention: str) -> None:
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tok.vocab_size, attention=attention)).eval()
    examples = [encode_conversation(c, tok) for c in SHORT]
    rows = pack_examples(examples, 128)
    assert len(rows) == 1  # all three in one row, padded to 128
    with torch.no_grad():
        unpacked = model(**collate_padded(examples, tok.pad_id)).loss
        packed = model(**collate_packed(rows, tok.pad_id, 128)).loss
        one_by_one = [model(**collate_padded([e], tok.pad_id)).loss for e in examples]
    n = [e.num_loss_tokens - (e.labels[0] != IGNORE_INDEX) for e in examples]
    token_mean = sum(loss * k for loss, k in zip(one_by_one, n)) / sum(n)
    assert abs(packed.item() - unpacked.item()) < 1e-5
    assert abs(packed.item() - token_mean.item()) < 1e-5


@pytest.mark.parametrize("impl, mask_dtype", [("sdpa", None), ("eager", torch.float32)])
def test_packed_loss_equals_unpacked_on_a_transformers_model(
    tok: Tokenizer, impl: str, mask_dtype: torch.dtype | None
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=impl,  # eager attention adds the mask: it needs the additive form
    )
    model = LlamaForCausalLM(config).eval()
    examples = [encode_conversation(c, tok) for c in SHORT]
    with torch.no_grad():
        unpacked = model(**collate_padded(examples, tok.pad_id)).loss
        packed = model(**collate_packed(pack_examples(examples, 128), tok.pad_id, 128, mask_dtype))
    assert abs(packed.loss.item() - unpacked.item()) < 1e-5


@pytest.mark.parametrize("pack", [False, True])
def test_sft_batches_resume_exactly(tok: Tokenizer, pack: bool) -> None:
    convs = [
        [
            {"role": "user", "content": f"what is {i} and {i}?"},
            {"role": "assistant", "content": f"{2 * i}"},
        ]
        for i in range(13)
    ]
    examples, _ = encode_conversations(convs, tok)
    kwargs = dict(pack=pack, max_length=64 if pack else None, seed=7)
    source = SFTBatches(examples, 2, tok.pad_id, **kwargs)
    for _ in range(3):
        source.next_batch()
    state = source.state_dict()
    expected = [source.next_batch() for _ in range(6)]  # crosses an epoch boundary
    assert source.epoch >= 1
    resumed = SFTBatches(examples, 2, tok.pad_id, **kwargs)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (resumed.next_batch() for _ in range(6))):
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    batch = expected[0]
    if pack:
        assert batch["attention_mask"].shape == (2, 1, 64, 64)
        assert batch["position_ids"].shape == (2, 64)
    else:
        assert batch["attention_mask"].dim() == 2
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with pytest.raises(CheckpointError, match="pack="):
        SFTBatches(examples, 2, tok.pad_id, pack=not pack, max_length=64).load_state_dict(state)
    with pytest.raises(DataError, match="cannot fill one batch"):
        SFTBatches(examples[:1], 2, tok.pad_id)
