"""Virtual tokens: what prompt tuning, prefix-tuning and P-tuning v1/v2 share.

These methods change what the frozen model reads, not its weights. `apply` returns a
`VirtualTokenModel`, called exactly like the model it wraps, which inserts P virtual tokens
on the way in (`insert.py`), as rows of a trainable prompt encoder (`encoder.py`):

    input level  (prompt tuning, P-tuning v1, prefix embedding_only)
        ids ─► embed ─► insert P encoder rows ─► (B, P+T, d) ─► model ─► logits (B, T, V)
    layer level  (prefix-tuning, P-tuning v2)
        encoder ─► (P, L·2·n_kv·hd) ─► per layer keys/values (B, n_kv, P, hd)
                ─► a prefilled KV cache of length P ─► model(ids, cache) ─► logits (B, T, V)

Column layout: the extended attention mask is always cat(ones(B, P), attention_mask), so
the P virtual columns are the first P columns of the cache. An input-level method writes
its token stream (virtual and real tokens in their semantic order: before the input for
prompt tuning, between input and target for P-tuning templates and infixes) into the
columns this mask marks valid; padding columns stay where they are. Masked columns are
never attended to and positions count valid columns only, so this computes the same as the
plain stream, and a cached decoding step needs no state: it inserts nothing, prepends P
ones to the mask and shifts given positions by P. The logits returned for a real token are
those of the last column before the next real token, so logits[:, t] still predicts token
t + 1; with `logits_to_keep=k` the base's last k columns are returned as they are.

The wrapper's `config` is the base's with the context shortened by P, so generation leaves
the virtual tokens room. (P-tuning with a placeholder token replaces embeddings in place and
adds no column.)
"""

from lmforge.peft.virtual.encoder import LstmEncoder, PromptEncoder, relu_mlp, tanh_mlp
from lmforge.peft.virtual.insert import Call, Insertion, InsertTokens, PrefixCache
from lmforge.peft.virtual.wrapper import (
    ClassificationOutput,
    VirtualTokenMethod,
    VirtualTokenModel,
    captured_output,
)

__all__ = [
    "Call",
    "ClassificationOutput",
    "InsertTokens",
    "Insertion",
    "LstmEncoder",
    "PrefixCache",
    "PromptEncoder",
    "VirtualTokenMethod",
    "VirtualTokenModel",
    "captured_output",
    "relu_mlp",
    "tanh_mlp",
]
