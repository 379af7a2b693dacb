"""`lmforge moefy`: split a trained dense model's FFNs into experts (MoEfication).

    load_model ─► corpus: first 90% of every document ─► model/moefy.py (cluster, route)
               ─► save: OUT/ (lmforge format + tokenizer), OUT/moefy.json
               └► perplexity on the last 10% of every document: dense vs top-k of E experts

lmforge moefy smollm2-135m-instruct --experts 16 --top_k 4 --out runs/moefy
lmforge moefy runs/pretrain/model --experts 16 --clustering weights
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge.atomic import atomic_write, atomic_write_text
from lmforge.config import arg
from lmforge.data.corpora import load_corpus
from lmforge.errors import ConfigError
from lmforge.eval.ppl import perplexity, token_stream
from lmforge.hub import load_model, load_tokenizer, resolve
from lmforge.model.hf import save_hf_dir
from lmforge.model.moefy import FEATURES, moefy

SMOLLM2 = "smollm2-135m-instruct"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass
class MoefyConfig:
    model: str = arg(SMOLLM2, positional=True, aliases=("--model",))  # dense model: name or dir
    out: str = "runs/moefy"  # where the MoEfied model and moefy.json are written
    experts: int = 16  # experts per FFN layer (d_ff must be a multiple)
    top_k: int = 4  # experts a token runs through: top_k / experts of the FFN per token
    clustering: str = arg("coactivation", choices=FEATURES.names)  # neuron grouping
    corpus: str = "shakespeare"  # corpus name, file or folder the routers learn from
    tokens: int = 8192  # corpus tokens the routers are fitted on
    eval_tokens: int = 8192  # held-out tokens for the perplexity report (0 = no report)
    seq_len: int = 256  # tokens per sequence read by the dense model and per window
    router_steps: int = 300  # full-batch Adam steps per layer's router
    router_lr: float = 0.01  # Adam learning rate of the routers
    seed: int = 0  # seeds k-means and the routers

    def validate(self) -> None:
        for name in ("experts", "top_k", "tokens", "seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be at least 1, got {getattr(self, name)}",
                    fix=f"pass {{{name}=1}} or more",
                )
        if self.top_k > self.experts:
            raise ConfigError(
                f"top_k ({self.top_k}) exceeds experts ({self.experts})",
                fix=f"pass {{top_k={self.experts}}} or fewer",
            )
        if self.clustering not in FEATURES:
            raise ConfigError(
                f"clustering {self.clustering!r} is unknown",
                fix="choose {clustering} from " + ", ".join(FEATURES.names()),
            )


def split_texts(texts: list[str], held_out: float = 0.1) -> tuple[list[str], list[str]]:
    """Every document's first (1 − held_out) for fitting, its last held_out for evaluation."""
    cuts = [int(len(t) * (1 - held_out)) for t in texts]
    return [t[:c] for t, c in zip(texts, cuts)], [t[c:] for t, c in zip(texts, cuts) if t[c:]]


def batches_of(stream: list[int], seq_len: int, batch: int = 4) -> list[torch.Tensor]:
    windows = [stream[s : s + seq_len] for s in range(0, len(stream) - seq_len + 1, seq_len)]
    if not windows:
        raise ConfigError(
            f"the corpus gave {len(stream)} tokens, fewer than seq_len={seq_len}",
            fix="pass a smaller {seq_len} or a larger {tokens}",
        )
    return [torch.tensor(windows[i : i + batch]) for i in range(0, len(windows), batch)]


def run_moefy(cfg: MoefyConfig, *, progress: bool = True) -> dict:
    """MoEfy `cfg.model`, save it to `cfg.out`, return (and write) the report."""
    cfg.validate()
    model, tokenizer = load_model(cfg.model).eval(), load_tokenizer(cfg.model)
    fit, held_out = split_texts(list(load_corpus(cfg.corpus).texts()))
    stream = token_stream(tokenizer, fit, cfg.tokens)[: cfg.tokens]
    torch.manual_seed(cfg.seed)
    moe = moefy(
        model,
        batches_of(stream, cfg.seq_len),
        cfg.experts,
        cfg.top_k,
        cfg.clustering,
        cfg.router_steps,
        cfg.router_lr,
        cfg.seed,
        progress,
    )
    out = Path(cfg.out)
    save_hf_dir(moe, out)
    source = resolve(cfg.model)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            data = (source / name).read_bytes()
            atomic_write(out / name, lambda tmp, data=data: tmp.write_bytes(data))
    report: dict = {"config": asdict(cfg), "ffn_share": cfg.top_k / cfg.experts}
    if cfg.eval_tokens:
        ppl = {
            name: perplexity(
                m, tokenizer, held_out, max_length=cfg.seq_len, max_tokens=cfg.eval_tokens
            ).perplexity
            for name, m in (("dense", model), ("moefied", moe))
        }
        report.update(ppl=ppl, ppl_ratio=ppl["moefied"] / ppl["dense"])
    atomic_write_text(out / "moefy.json", json.dumps(report, indent=2) + "\n")
    return report
