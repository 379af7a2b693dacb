"""Generation: cache parity, batching, sampling controls, stop strings, EOS, streaming."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.model import CausalLM, KVCache, preset
from lmforge.model.generate import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    generate,
    stream,
)
from lmforge.model.host import NativeHost, TransformersHost, host_for

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0.0)


def native_model(seed: int = 0, init_std: float = 0.3) -> CausalLM:
    # Untied, wide initialisation: peaked logits, so greedy choices are far from ties.
    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=97, tie_embeddings=False, init_std=init_std)
    return CausalLM(config).eval()


def llama_model(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


def greedy_without_cache(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits  # (1, T, V), full recompute
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


# --- a scripted model: the next token is a fixed function of the current one -------------

# Byte-level toy vocabulary: "é" is two tokens and "中" three, as in a byte-level BPE.
PIECES = [b"<pad>", b"<eos>", b"w", b"o", b"r", b"l", b"d", b" ", b"\xc3", b"\xa9"]
PIECES += [b"\xe4", b"\xb8", b"\xad", b"!"]
TOK = {p: i for i, p in enumerate(PIECES)}
CYCLE = [b"w", b"o", b"r", b"l", b"d", b" ", b"\xc3", b"\xa9", b"\xe4", b"\xb8", b"\xad", b"!"]


def decode(ids: list[int]) -> str:
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def scripted_model() -> CausalLM:
    """Greedy output follows CYCLE ("world é中!world ...") after any token of it.

    Attention and MLP write nothing (o_proj, down_proj = 0), so the last hidden state
    is the current token's one-hot embedding and the head maps it to its successor."""
    config = preset("tiny", vocab_size=len(PIECES), tie_embeddings=False)
    model = CausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(PIECES), config.d_model))
        head = torch.zeros(len(PIECES), config.d_model)
        for a, b in zip(CYCLE, CYCLE[1:] + CYCLE[:1]):
            head[TOK[b], TOK[a]] = 10.0
        model.lm_head.weight.copy_(head)
    return model


def ids(*pieces: bytes) -> list[int]:
    return [TOK[p] for p in pieces]


# --- cache and batching -------------------------------------------------------------------


def test_greedy_with_cache_equals_full_recompute_native():
    model = native_model()
    for prompt in PROMPTS:
        result = generate(model, [prompt], GREEDY)[0]
        assert result.token_ids == greedy_without_cache(model, prompt, 12)
        assert result.finish_reason == "length"
        assert result.prompt_length == len(prompt)


# The EOS ids are tokens that these seeded models emit at different steps of different rows.
@pytest.mark.parametrize(
    "make, eos", [(native_model, 62), (llama_model, 2)], ids=["native", "transformers"]
)
def test_batched_left_padded_equals_one_by_one(make, eos):
    model = make()
    batched = generate(model, PROMPTS, GREEDY, eos_token_id=eos)
    single = [generate(model, [p], GREEDY, eos_token_id=eos)[0] for p in PROMPTS]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in single]
    assert len({len(r.token_ids) for r in batched}) > 1  # rows really finished apart


def test_packed_prefill_equals_the_padded_call(monkeypatch):
    """A padded prefill runs packed (no compute on padding): same last logits and cache."""
    model = native_model()
    L = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in PROMPTS])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    host = NativeHost(model)
    runs = []
    for limit in (L * L * len(PROMPTS) ** 2, 0):  # packed, then the padded call (limit 0)
        monkeypatch.setattr("lmforge.model.prefill.PACK_LIMIT", limit)
        cache = host.new_cache(len(PROMPTS), L + 3)
        with torch.no_grad():
            runs.append(host.step(ids, mask, positions, cache))
    (packed, cache), (padded, reference) = runs
    assert cache.length == reference.length == L
    assert torch.allclose(packed, padded, atol=1e-5, rtol=0)
    real = mask.bool()
    for mine, theirs in zip(cache.keys + cache.values, reference.keys + reference.values):
        assert torch.allclose(
            mine[:, :, :L].transpose(1, 2)[real],
            theirs[:, :, :L].transpose(1, 2)[real],
            atol=1e-5,
            rtol=0,
        )
        assert not mine[:, :, :L].transpose(1, 2)[~real].any()  # padding slots zeroed


def test_transformers_greedy_equals_hf_generate():
    model = llama_model()
    L = max(len(p) for p in PROMPTS)
    input_ids = torch.tensor([[0] * (L - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in PROMPTS])
    reference = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=2,
    )[:, L:].tolist()
    ours = generate(model, PROMPTS, GREEDY, eos_token_id=2)
    for row, result in zip(reference, ours):
        expected = row[: row.index(2)] if 2 in row else row
        assert result.token_ids == expected
        assert result.finish_reason == ("eos" if 2 in row else "length")


def test_host_for_picks_one_of_two_backends():
    assert isinstance(host_for(native_model()), NativeHost)
    assert isinstance(host_for(llama_model()), TransformersHost)
    assert host_for(llama_model()).max_length() == 128
    with pytest.raises(ConfigError, match="neither"):
        host_for(torch.nn.Linear(2, 2))


def test_native_cache_is_allocated_once_for_the_whole_generation(monkeypatch):
    def no_growth(self, needed):
        raise AssertionError(f"KVCache grew to {needed}: it was not preallocated")

    monkeypatch.setattr(KVCache, "_grow", no_growth)
    results = generate(native_model(), PROMPTS, GREEDY)
    assert [len(r.token_ids) for r in results] == [12, 12, 12]


# --- sampling controls --------------------------------------------------------------------


def test_top_k_one_and_tiny_top_p_equal_greedy():
    model = native_model()
    greedy = [r.token_ids for r in generate(model, PROMPTS, GREEDY)]
    for k, p in ((1, 1.0), (0, 1e-6)):
        config = SamplingConfig(max_new_tokens=12, temperature=1.5, top_k=k, top_p=p, seed=3)
        assert [r.token_ids for r in generate(model, PROMPTS, config)] == greedy


def test_seed_makes_sampling_reproducible():
    model = native_model(init_std=0.02)  # flat distributions: samples differ a lot by seed

    def sample(seed: int) -> list[list[int]]:
        config = SamplingConfig(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.9, seed=seed)
        return [r.token_ids for r in generate(model, PROMPTS, config)]

    torch.manual_seed(123)
    first = sample(7)
    torch.manual_seed(456)  # the global RNG is not used
    assert sample(7) == first
    assert sample(8) != first


def test_repetition_penalty_processor_exact_numbers():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False], [False, False, True, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0], [2.0, -1.0, 0.25, -6.0]]


def test_top_k_and_top_p_processors_exact():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert torch.isinf(apply_top_k(logits, 2)).tolist() == [[False, True, False, True]]
    # Tokens are kept, most likely first, until the kept mass reaches p.
    assert torch.isinf(apply_top_p(logits, 0.45)).tolist() == [[False, True, True, True]]
    assert torch.isinf(apply_top_p(logits, 0.6)).tolist() == [[False, True, False, True]]
    assert torch.isinf(apply_top_p(logits, 0.9)).tolist() == [[False, True, False, False]]
    kept = apply_top_p(logits, 0.6)
    assert kept[0, 0] == logits[0, 0] and kept[0, 2] == logits[0, 2]


def test_repetition_penalty_in_generate_matches_formula_and_ignores_padding():
    model = native_model()
    prompt = [9, 10]
    config = SamplingConfig(max_new_tokens=1, temperature=0.0, repetition_penalty=5.0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    for t in set(prompt):
        logits[t] = logits[t] / 5.0 if logits[t] > 0 else logits[t] * 5.0
    first = generate(model, [prompt], config)[0].token_ids
    assert first == [int(logits.argmax())]
    # Padding with exactly that token must not penalise it in the short row.
    config = SamplingConfig(max_new_tokens=6, temperature=0.0, repetition_penalty=5.0)
    alone = generate(model, [prompt], config)[0].token_ids
    assert alone[0] not in prompt
    batched = generate(model, [PROMPTS[2], prompt], config, pad_token_id=alone[0])
    assert batched[1].token_ids == alone
    assert alone != generate(model, [prompt], GREEDY)[0].token_ids[:6]


# --- stop strings, EOS, streaming ---------------------------------------------------------


def test_scripted_model_spells_its_cycle():
    out = generate(scripted_model(), [ids(b"w")], GREEDY, decode=decode)[0]
    assert out.text == "orld é中!w" and out.finish_reason == "length"


def test_stop_string_cuts_text_and_sets_reason():
    config = SamplingConfig(max_new_tokens=12, temperature=0.0, stop=["中", "ld é"])
    out = generate(scripted_model(), [ids(b"w")], config, decode=decode)[0]
    assert out.text == "or" and out.finish_reason == "stop"
    assert decode(out.token_ids).startswith("orld é")


def test_eos_stops_one_row_while_others_continue():
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    prompts = [ids(b"w"), ids(b"o", b"d")]
    a, b = generate(scripted_model(), prompts, config, eos_token_id=TOK[b"d"], decode=decode)
    assert (a.text, a.finish_reason, a.token_ids) == ("orl", "eos", ids(b"o", b"r", b"l"))
    assert (b.text, b.finish_reason) == (" é中", "length")


def test_stream_yields_stable_pieces_that_join_to_the_text():
    model, config = scripted_model(), SamplingConfig(max_new_tokens=11, temperature=0.0)
    pieces = list(stream(model, ids(b"w"), config, decode=decode))
    # "é" and "中" arrive byte by byte; no half character is ever shown.
    assert pieces == ["o", "r", "l", "d", " ", "é", "中", "!"]
    assert "".join(pieces) == generate(model, [ids(b"w")], config, decode=decode)[0].text


def test_stream_holds_back_a_possible_stop_string():
    model = scripted_model()
    config = SamplingConfig(max_new_tokens=11, temperature=0.0, stop=["d é"])
    pieces = list(stream(model, ids(b"w"), config, decode=decode))
    assert pieces == ["o", "r", "l"]
    config = SamplingConfig(max_new_tokens=11, temperature=0.0, stop=["d x"])
    pieces = list(stream(model, ids(b"w"), config, decode=decode, eos_token_id=TOK[b"!"]))
    # "d " waits (it may start "d x"); once "é" arrives it is not the stop string.
    assert pieces == ["o", "r", "l", "d é", "中"]


def test_stream_equals_generate_on_random_model():
    model = native_model(init_std=0.02)
    config = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=1, stop=["xyz"])

    def letters(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)

    text = generate(model, [PROMPTS[0]], config, decode=letters)[0].text
    assert "".join(stream(model, PROMPTS[0], config, decode=letters)) == text
    assert len(text) == 30


def test_logits_processor_sees_each_rows_place_and_tokens_and_steers_them():
    """A processor that forces "!" as row 1's third token; row 0 ends at its eos meanwhile."""
    seen: list[tuple[list[int], list[list[int]]]] = []

    def force(logits: torch.Tensor, rows: list[int], generated: list[list[int]]) -> torch.Tensor:
        seen.append((list(rows), [list(g) for g in generated]))
        for i, (row, tokens) in enumerate(zip(rows, generated)):
            if row == 1 and len(tokens) == 2:
                logits[i] = float("-inf")
                logits[i, TOK[b"!"]] = 0.0
        return logits

    config = SamplingConfig(max_new_tokens=5, temperature=0.0)
    prompts = [ids(b"w"), ids(b"w")]
    a, b = generate(
        scripted_model(), prompts, config, eos_token_id=TOK[b"l"], decode=decode,
        logits_processor=force,
    )  # fmt: skip
    assert (a.text, a.finish_reason) == ("or", "eos")
    assert (b.text, b.finish_reason) == ("or!wo", "length")  # "!" then the cycle goes on
    assert seen[0] == ([0, 1], [[], []])
    assert seen[3] == ([1], [ids(b"o", b"r", b"!")])  # row 0 left the batch at its eos
    pieces = list(
        stream(scripted_model(), ids(b"w"), config, decode=decode, logits_processor=force)
    )
    assert "".join(pieces) == "orld "  # the stream's only row is row 0: never forced


# --- errors -------------------------------------------------------------------------------


def test_context_overflow_is_a_clear_error_unless_truncating():
    model = native_model()  # max_seq_len 128
    prompt = list(range(1, 97)) + list(range(1, 25))  # 120 tokens
    with pytest.raises(ConfigError, match="truncate=True"):
        generate(model, [prompt], GREEDY)
    out = generate(model, [prompt], GREEDY, truncate=True)[0]
    assert out.prompt_length == 116 and len(out.token_ids) == 12
    assert out.token_ids == generate(model, [prompt[-116:]], GREEDY)[0].token_ids


def test_bad_inputs_raise_user_errors():
    model = native_model()
    with pytest.raises(ConfigError, match="sampling.top_p"):
        generate(model, PROMPTS, SamplingConfig(top_p=0.0))
    with pytest.raises(ConfigError, match="decode"):
        generate(model, PROMPTS, SamplingConfig(stop=["x"]))
    with pytest.raises(DataError, match="prompt 1 is empty"):
        generate(model, [[1], []], GREEDY)
    with pytest.raises(DataError, match="token id 97"):
        generate(model, [[1, 97]], GREEDY)
