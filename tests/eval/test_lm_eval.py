"""lm-evaluation-harness's LM interface over an lmforge model (an optional extra)."""

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from lmforge.eval.lm_eval_adapter import LmforgeLM  # noqa: E402
from lmforge.eval.loglik import Request, loglikelihoods  # noqa: E402
from lmforge.eval.ppl import perplexity  # noqa: E402
from lmforge.hub import load_model, load_tokenizer  # noqa: E402
from lmforge.model.generate import SamplingConfig, generate  # noqa: E402


def instance(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_the_three_request_types_match_lmforges_own_scorers(tiny_model_dir):
    lm = LmforgeLM(str(tiny_model_dir), batch_size=2)
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    pairs = [("To be, or not", " to be"), ("The slings", " and arrows"), ("To be", " or")]
    got = lm.loglikelihood([instance("loglikelihood", *p) for p in pairs], disable_tqdm=True)
    want = loglikelihoods(model, tok, [Request(*p) for p in pairs])
    assert got == [(w.logprob, w.greedy) for w in want]

    text = "To be, or not to be, that is the question."
    (rolling,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", text)], True)
    ppl = perplexity(model, tok, [text])
    assert rolling == pytest.approx(-ppl.nll * ppl.tokens) and rolling < 0

    gen = instance("generate_until", "To be", {"until": ["\n"], "max_gen_toks": 6})
    (text_out,) = lm.generate_until([gen], disable_tqdm=True)
    config = SamplingConfig(max_new_tokens=6, temperature=0.0, stop=["\n"])
    (ref,) = generate(model, [tok.encode("To be")], config, decode=tok.decode)
    assert text_out == ref.text


def test_it_is_registered_for_the_harness_command_line():
    from lm_eval.api.registry import get_model

    assert get_model("lmforge") is LmforgeLM
