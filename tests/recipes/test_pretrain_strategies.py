"""`lmforge pretrain` with the objectives and knowledge inheritance, end to end."""

import json

import pytest

from lmforge.cli import main
from lmforge.hub import load_model
from lmforge.model.mtp import HEADS_FILE
from tests.conftest import tiny_args


@pytest.mark.parametrize(
    "objective,options",
    [("ul2", "{}"), ("span-corruption", "{sentinels: 8}"), ("multi-token", "{n_future: 3}")],
)
def test_pretrain_with_an_objective(corpus, tmp_path, objective, options):
    run = tmp_path / "run"
    args = tiny_args(corpus, run, steps=4)
    assert (
        main([*args, f"--train.objective={objective}", f"--train.objective_options={options}"]) == 0
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 4]
    vocab = json.loads((run / "model" / "config.json").read_text())["vocab_size"]
    tokens = json.loads((run / "model" / "tokenizer.json").read_text())["added_tokens"]
    names = {t["content"] for t in tokens}
    if objective == "multi-token":
        assert (run / "model" / HEADS_FILE).is_file() and vocab == 300
        assert load_model(run / "model").mtp_heads.n_future == 3
    else:
        assert "<|sentinel_0|>" in names and vocab > 300
        assert ("<|mode_X|>" in names) == (objective == "ul2")


def test_runs_of_every_objective_share_one_set_of_shards_and_resume(corpus, tmp_path):
    shared = [f"--data.shards_dir={tmp_path / 'shards'}"]
    plain = [*tiny_args(corpus, tmp_path / "causal", steps=3), *shared]
    ul2 = [*tiny_args(corpus, tmp_path / "ul2", steps=3), *shared, "--train.objective=ul2",
           f"--tokenizer.path={tmp_path / 'causal' / 'model'}"]  # fmt: skip
    for args in (plain, ul2, plain, ul2):  # the second pair resumes the finished runs
        assert main(args) == 0
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["vocab_size"] == 300  # the plain tokenizer's: the sentinels come after


def test_pretrain_inherits_from_a_native_teacher(corpus, tmp_path, tiny_model_dir):
    run = tmp_path / "student"
    args = tiny_args(corpus, run, steps=4)
    extra = [
        f"--tokenizer.path={tiny_model_dir}",
        f"--train.teacher={tiny_model_dir}",
        "--train.kd_top_k=8",
        f"--train.kd_cache={tmp_path / 'cache'}",
        "--model.n_layer=3",
    ]
    assert main([*args, *extra]) == 0
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4  # one per batch


@pytest.mark.assets
def test_smollm2_teaches_a_small_native_student_sharing_its_tokenizer(corpus, tmp_path):
    run = tmp_path / "student"
    args = [
        "pretrain",
        f"--run_dir={run}",
        f"--data.corpus={corpus}",
        "--data.seq_len=32",
        "--model.preset=tiny",
        "--tokenizer.path=smollm2-135m-instruct",
        "--train.teacher=smollm2-135m-instruct",
        "--train.kd_top_k=16",
        "--train.max_steps=2",
        "--train.batch_size=2",
        "--train.warmup_steps=1",
        "--train.eval_batches=1",
    ]
    assert main(args) == 0
    assert json.loads((run / "model" / "config.json").read_text())["vocab_size"] == 49152
