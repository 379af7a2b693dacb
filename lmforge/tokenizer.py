"""Tokenizers: train a byte-level BPE, or load any Hugging Face `tokenizer.json`.

Byte-level BPE (Radford et al. 2019, GPT-2; Sennrich et al. 2016 for BPE) maps
every UTF-8 byte to one of 256 printable symbols before merging, so the base
alphabet covers all text and nothing is ever unknown:

    text ──UTF-8──► bytes ──ByteLevel──► symbols ──BPE merges──► ids
    ids  ──vocab──► symbols ──ByteLevel⁻¹──► bytes ──UTF-8──► text   (exact inverse)

There is no normalizer, so decode(encode(s)) == s for any string, Chinese and
emoji included. `encode(text)` returns the text's ids only; `encode(text,
add_special_tokens=True)` adds what the checkpoint adds around a whole input (a BOS
for Llama, Mistral or Gemma tokenizers, nothing for Qwen2 or SmolLM2): the
post-processor of tokenizer.json decides, as in transformers ≥ 5, which reads
`add_bos_token` / `add_eos_token` from tokenizer_config.json only for tokenizers that
have no tokenizer.json (tests/test_tokenizer.py checks both agree).
Special-token strings that appear literally in a text (e.g. "<|im_end|>") are matched
as the special token, as transformers does, which is what chat templates rely on.

Whole characters. Chinese is written without spaces, so a pre-token is a whole clause
and plain BPE may merge the last byte of one character with the first of the next
(People's Daily, 8192 entries: 19 such tokens). Training therefore keeps only merges
whose result is whole characters or a part of one character, and drops every merge built
on a dropped one; it learns a few merges more than asked and keeps the earliest. A
character is then split across tokens only when the vocabulary has no token for it:

    中国 = e4 b8 ad | e5 9b bd      kept:    e4b8, e4b8ad, e4b8ade59bbd (中, 中国)
                                   dropped: ade5 (end of 中 + start of 国)

Beside `tokenizer.json`, a `tokenizer_config.json` as `transformers` writes it
names the special tokens (eos, pad, bos) and may hold the model's Jinja chat
template (key "chat_template"; transformers 5 writes it to `chat_template.jinja`
instead, which wins when both exist, as it does in transformers). `save` writes
them back so that a saved tokenizer reloads with the same specials and template.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.atomic import atomic_write_json, atomic_write_text
from lmforge.errors import ConfigError, DataError

# <|endoftext|> ends every document; the ChatML pair is reserved for chat templates.
DEFAULT_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")

# When a loaded tokenizer says nothing about eos/pad, the first of these it holds is used.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")

BYTE_ALPHABET_SIZE = 256

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 keeps the chat template


class Tokenizer:
    """A thin, typed wrapper around `tokenizers.Tokenizer` with the ids lmforge needs."""

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        bos_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        # Loaded files may pad/truncate every encoding (MiniLM pads to 128); a language-model
        # pipeline packs token streams itself, so both are switched off.
        hf.no_padding()
        hf.no_truncation()
        self.hf = hf
        self._eos_token = eos_token if _held(hf, eos_token) else _first_held(hf, EOS_CANDIDATES)
        self._pad_token = pad_token if _held(hf, pad_token) else _first_held(hf, PAD_CANDIDATES)
        # bos is never guessed: only chat templates read it, and only when the model names it.
        self.bos_token = bos_token if _held(hf, bos_token) else None
        self.chat_template = chat_template  # Jinja source of the model's own chat format

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = DEFAULT_SPECIALS,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Learn a byte-level BPE with at most `vocab_size` entries (specials included)
        whose tokens split no character (see the module doc).

        The result is smaller than `vocab_size` when the texts run out of pairs that
        occur `min_frequency` times.
        """
        texts = list(texts)
        room = vocab_size + max(64, vocab_size // 8)  # merges dropped below are made up for
        while True:
            hf, trainer = _new_bpe(vocab_size, room, special_tokens, min_frequency, show_progress)
            hf.train_from_iterator(texts, trainer)
            kept = _whole_characters(hf, vocab_size)
            short = vocab_size - kept.get_vocab_size()
            if short <= 0 or hf.get_vocab_size() < room:  # full, or the texts ran out of pairs
                return cls(kept)
            room += 2 * short

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` (or a folder holding one).

        A `tokenizer_config.json` beside it, as `transformers` writes, names eos, pad and bos
        and holds the chat template (or a `chat_template.jinja` beside it does).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"tokenizer file {path} does not exist; train one or fix the path")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception on bad JSON
            raise DataError(
                f"tokenizer file {path} is not a valid tokenizer.json ({e}); "
                "re-create it with Tokenizer.train(...).save(path)"
            ) from None
        cfg = _read_config(path.parent / CONFIG_FILE)
        eos, pad, bos = _config_specials(cfg)
        return cls(
            hf,
            eos_token=eos,
            pad_token=pad,
            bos_token=bos,
            chat_template=_config_template(cfg, path.parent / TEMPLATE_FILE),
        )

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` atomically; `path` may be the file or its folder.

        The special tokens and the chat template are merged into the `tokenizer_config.json`
        beside it (other keys are kept). A `chat_template.jinja` there would shadow the
        template just written, so it is removed.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        atomic_write_text(path, self.hf.to_str(pretty=True))
        cfg = _read_config(path.parent / CONFIG_FILE)
        updates = {
            "eos_token": self._eos_token,
            "pad_token": self._pad_token,
            "bos_token": self.bos_token,
            "chat_template": self.chat_template,
        }
        for key, value in updates.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        atomic_write_json(path.parent / CONFIG_FILE, cfg)
        (path.parent / TEMPLATE_FILE).unlink(missing_ok=True)
        return path

    # ---- encoding -----------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The text's ids; with add_special_tokens, as a whole input (see the module doc)."""
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    @property
    def input_specials(self) -> tuple[list[int], list[int]]:
        """(ids before, ids after) that the checkpoint adds around a whole input, for
        callers that build an input from pieces."""
        if not hasattr(self, "_input_specials"):
            probe = "a"
            plain = self.encode(probe)
            full = self.encode(probe, add_special_tokens=True)
            cut = next(i for i in range(len(full) + 1) if full[i : i + len(plain)] == plain)
            self._input_specials = (full[:cut], full[cut + len(plain) :])
        return self._input_specials

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The Rust side spreads a batch over threads; the _fast variant skips character
        # offsets, which we never use, and halves the time.
        encodings = self.hf.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return None if self._eos_token is None else self.hf.token_to_id(self._eos_token)

    @property
    def pad_id(self) -> int | None:
        """The pad token; eos when there is none (padding is masked out anyway)."""
        if self._pad_token is not None:
            return self.hf.token_to_id(self._pad_token)
        return self.eos_id

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Make `tokens` special tokens (those missing are appended to the vocabulary, so no
        existing id changes) and return their ids. A text never encodes into them unless
        it spells them out."""
        missing = [t for t in dict.fromkeys(tokens) if self.hf.token_to_id(t) is None]
        if missing:
            self.hf.add_special_tokens(missing)
        return [self.hf.token_to_id(t) for t in tokens]

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the vocabulary, merges, rules and eos (keys token caches)."""
        h = hashlib.sha256(self.hf.to_str().encode("utf-8"))
        h.update(f"\0eos={self.eos_id}".encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, eos={self._eos_token!r}, "
            f"pad={self._pad_token!r}, fingerprint={self.fingerprint})"
        )


def characters_per_token(tokenizer: Tokenizer, text: str) -> float:
    """How many characters of `text` one token holds on average (higher: shorter inputs)."""
    return len(text) / max(1, len(tokenizer.encode(text)))


def split_characters(tokenizer: Tokenizer, text: str) -> float:
    """The share of `text`'s characters whose bytes are spread over two tokens or more."""
    if not text:
        return 0.0
    cover = [0] * (len(text) + 1)  # tokens starting minus tokens ending at each character
    for start, end in tokenizer.hf.encode(text, add_special_tokens=False).offsets:
        cover[start] += 1
        cover[end] -= 1
    split, depth = 0, 0
    for c in range(len(text)):
        depth += cover[c]
        split += depth > 1
    return split / len(text)


def _new_bpe(
    vocab_size: int, room: int, specials: Sequence[str], min_frequency: int, show_progress: bool
) -> tuple[HFTokenizer, trainers.BpeTrainer]:
    smallest = BYTE_ALPHABET_SIZE + len(specials)
    if vocab_size < smallest:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs {BYTE_ALPHABET_SIZE} "
            f"byte symbols + {len(specials)} special tokens = {smallest} at least"
        )
    hf = HFTokenizer(models.BPE())
    # add_prefix_space=False keeps the byte mapping a bijection, so decoding is exact.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=room,
        min_frequency=min_frequency,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    return hf, trainer


def _byte_of_symbol() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable symbol -> the byte it stands for."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    return dict(zip(symbols, printable + others, strict=True))


def splits_a_character(data: bytes) -> bool:
    """True when `data` holds part of a UTF-8 character beside anything else.

    Whole characters pass, and so does a part of one character (it can still grow into
    it); a byte that starts a character anywhere but first, inside bytes that do not
    decode, means a character boundary falls inside a character piece.
    """
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return any(b & 0xC0 != 0x80 for b in data[1:])  # a lead byte after the start


def _whole_characters(hf: HFTokenizer, vocab_size: int) -> HFTokenizer:
    """Keep the earliest merges whose results split no character (see the module doc)."""
    spec = json.loads(hf.to_str())
    model, byte_of = spec["model"], _byte_of_symbol()
    specials = {t["content"] for t in spec["added_tokens"]}
    alive = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    alive = [t for t in alive if t in specials or len(t) == 1]
    known, merges = set(alive), []
    for left, right in model["merges"]:
        if len(known) >= vocab_size:
            break
        joined = left + right
        whole = not splits_a_character(bytes(byte_of[c] for c in joined))
        if left in known and right in known and joined not in known and whole:
            known.add(joined)
            alive.append(joined)
            merges.append([left, right])
    model["vocab"] = {t: i for i, t in enumerate(alive)}
    model["merges"] = merges
    return HFTokenizer.from_str(json.dumps(spec))


def _held(hf: HFTokenizer, token: str | None) -> bool:
    return token is not None and hf.token_to_id(token) is not None


def _first_held(hf: HFTokenizer, candidates: Sequence[str]) -> str | None:
    return next((t for t in candidates if hf.token_to_id(t) is not None), None)


def _read_config(path: Path) -> dict:
    """A transformers tokenizer_config.json as a dict; {} when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # optional metadata: the built-in candidates still apply
    return cfg if isinstance(cfg, dict) else {}


def _content(value: object) -> str | None:
    # Older files store {"content": "</s>", ...} instead of the bare string.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_specials(cfg: dict) -> tuple[str | None, str | None, str | None]:
    """(eos_token, pad_token, bos_token) named by a tokenizer config."""
    return tuple(_content(cfg.get(k)) for k in ("eos_token", "pad_token", "bos_token"))


def _config_template(cfg: dict, template_file: Path) -> str | None:
    """The chat template: chat_template.jinja if present, else the config's key.

    The key holds either the Jinja source or, for models with several templates, a list of
    {"name", "template"} entries, of which "default" is the chat format.
    """
    if template_file.is_file():
        try:
            return template_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{template_file}: unreadable chat template ({e})") from None
    value = cfg.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None
