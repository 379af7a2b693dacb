"""Whole inputs are encoded as the checkpoint's tokenizer means them: BOS/EOS added exactly
as transformers' AutoTokenizer adds them, for tokenizer files in the style of each family
(built here, offline: the same model types, normalizers, pre-tokenizers, post-processors
and tokenizer_config.json keys as the published checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["the capital of France is Paris.", "北京是中国的首都。", "hello world 🙂"] * 40
SAMPLES = ["The capital of France is", "北京 Paris 🙂", "", " leading space"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]


def sentencepiece_style(specials: list[str], bos: str, gemma: bool) -> HFTokenizer:
    hf = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if gemma:  # Gemma: spaces become ▁, no pre-tokenizer
        hf.normalizer = normalizers.Replace(" ", "▁")
    else:  # Llama-2 / Mistral: Metaspace, a ▁ before the first word
        hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    hf.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials + BYTES)
    hf.train_from_iterator(TEXTS, trainer)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0",
        pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, hf.token_to_id(bos))],
    )
    return hf


def byte_level(specials: list[str], bos: str | None) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(TEXTS, trainer)
    if bos is None:  # Qwen2: the byte-level post-processor adds nothing
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
    else:  # Llama-3: a template with <|begin_of_text|>
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, hf.token_to_id(bos))],
        )
    return hf


FAMILIES = {
    "llama-2": (
        lambda: sentencepiece_style(["<unk>", "<s>", "</s>"], "<s>", gemma=False),
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False},
        True,
    ),
    "mistral": (
        lambda: sentencepiece_style(["<unk>", "<s>", "</s>"], "<s>", gemma=False),
        {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "add_bos_token": True},
        True,
    ),
    "gemma": (
        lambda: sentencepiece_style(["<pad>", "<eos>", "<bos>", "<unk>"], "<bos>", gemma=True),
        {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
         "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True,
         "add_eos_token": False},
        True,
    ),
    "qwen2": (
        lambda: byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None),
        {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>"},
        False,
    ),
    "llama-3": (
        lambda: byte_level(["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>"),
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
         "eos_token": "<|end_of_text|>"},
        True,
    ),
}  # fmt: skip


@pytest.fixture(params=sorted(FAMILIES))
def family_dir(request, tmp_path: Path) -> tuple[str, Path]:
    build, config, _ = FAMILIES[request.param]
    build().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return request.param, tmp_path


def test_whole_inputs_match_transformers(family_dir) -> None:
    name, directory = family_dir
    ours = Tokenizer.from_file(directory)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    for text in SAMPLES:
        assert ours.encode(text, add_special_tokens=True) == reference(text)["input_ids"], text
        assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"], text
    adds_bos = FAMILIES[name][2]
    assert ours.input_specials == ([ours.token_to_id(ours.bos_token)] if adds_bos else [], [])


def test_a_saved_tokenizer_keeps_its_input_specials(family_dir, tmp_path: Path) -> None:
    _, directory = family_dir
    ours = Tokenizer.from_file(directory)
    ours.save(tmp_path / "copy")
    again = Tokenizer.from_file(tmp_path / "copy")
    assert again.encode("北京 Paris", add_special_tokens=True) == ours.encode(
        "北京 Paris", add_special_tokens=True
    )
