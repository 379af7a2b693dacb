"""Model growth: function-preserving depth and width growth keep the logits; staged
pretraining grows at the configured update and resumes exactly across the growth."""

import json
import shutil

import pytest
import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model import CausalLM, preset
from lmforge.recipes.pretrain import load_config, pretrain
from lmforge.train.checkpoint import list_checkpoints, load_checkpoint
from lmforge.train.growth import GrowthConfig, double_width, grow_depth, stage_shapes

VOCAB = 101


def trained_looking(seed=0, **shape):
    """A tiny model with weights far from their initialisation (norm gains too)."""
    torch.manual_seed(seed)
    model = CausalLM(preset("tiny", vocab_size=VOCAB, **shape)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def logits(model):
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("method", ["stack", "interleave"])
def test_function_preserving_depth_growth_keeps_the_logits(method):
    model = trained_looking()
    grown, sources = grow_depth(model, 4, method, preserve=True)
    assert grown.config.n_layer == 4
    assert (logits(grown) - logits(model)).abs().max() <= 1e-5
    new = [1, 3] if method == "interleave" else [2, 3]
    for i in new:  # the new blocks: the source's weights, outputs zeroed
        assert not grown.model.layers[i].self_attn.o_proj.weight.any()
        assert f"model.layers.{i}.self_attn.o_proj.weight" not in sources
        assert f"model.layers.{i}.self_attn.q_proj.weight" in sources
    stacked, _ = grow_depth(model, 4, "stack", preserve=False)  # Gong et al.: a plain copy
    assert torch.equal(
        stacked.model.layers[3].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight
    )
    assert (logits(stacked) - logits(model)).abs().max() > 1e-3


def test_width_doubling_keeps_the_logits_and_breaks_the_symmetry():
    model = trained_looking(d_model=32, n_head=2, n_kv_head=1)
    wide = double_width(model, seed=3)
    c = wide.config
    assert (c.d_model, c.n_head, c.n_kv_head, c.d_ff, c.head_dim) == (
        64,
        4,
        2,
        2 * model.config.d_ff,
        16,
    )
    assert (logits(wide) - logits(model)).abs().max() <= 1e-5
    q = wide.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q[:, :32], q[:, 32:])  # the copies read with other shares
    both = grow_depth(wide, 3, "stack", preserve=True)[0]
    assert (logits(both) - logits(model)).abs().max() <= 1e-5


def test_stage_shapes_are_checked():
    final = preset("tiny", vocab_size=VOCAB, n_layer=4)
    shapes = stage_shapes(final, GrowthConfig(layers=[1, 2], widths=[32, 64], at=[5, 9]), 12)
    assert [(s.n_layer, s.d_model, s.n_head, s.n_kv_head) for s in shapes] == [
        (1, 32, 2, 1),
        (2, 64, 4, 2),
        (4, 64, 4, 2),
    ]
    with pytest.raises(ConfigError, match="must end before train.max_steps"):
        stage_shapes(final, GrowthConfig(layers=[2], at=[12]), 12)
    with pytest.raises(ConfigError, match="depth may only rise"):
        stage_shapes(final, GrowthConfig(layers=[6], at=[3]), 12)
    with pytest.raises(ConfigError, match="one entry per stage"):
        GrowthConfig(layers=[1, 2], at=[3]).validate()
    with pytest.raises(ConfigError, match="carry"):
        GrowthConfig(layers=[1], widths=[32], at=[3], optimizer="carry").validate()


def grow_args(corpus, run_dir, steps=6, optimizer="reset"):
    return [
        f"run_dir={run_dir}",
        f"data.corpus={corpus}",
        "data.seq_len=32",
        "model.preset=tiny",
        "tokenizer.vocab_size=300",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.warmup_steps=1",
        "train.eval_every=3",
        "train.save_every=2",
        "train.keep_last=0",
        "train.eval_batches=2",
        "train.log_every=1",
        "grow.layers=[1]",
        "grow.at=[3]",
        f"grow.optimizer={optimizer}",
    ]


def final_weights(run, vocab):
    model = CausalLM(preset("tiny", vocab_size=vocab))
    load_checkpoint(run / "checkpoints" / "step-00000006", model)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["reset", "carry"])
def test_staged_pretraining_grows_at_its_step_and_resumes_across_the_growth(
    corpus, tmp_path, optimizer
):
    run = tmp_path / "run"
    cfg = load_config(None, grow_args(corpus, run, optimizer=optimizer))
    result, model_dir = pretrain(cfg, progress=False)
    exported = json.loads((model_dir / "config.json").read_text())
    assert result.step == 6 and exported["num_hidden_layers"] == 2
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["step-00000002", "step-00000003", "step-00000004", "step-00000006"]
    shallow = CausalLM(preset("tiny", vocab_size=exported["vocab_size"], n_layer=1))
    load_checkpoint(run / "checkpoints" / "step-00000002", shallow)  # stage 0: one layer
    with pytest.raises(CheckpointError, match="another model"):
        load_checkpoint(run / "checkpoints" / "step-00000003", shallow)  # replaced: grown
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    before = final_weights(run, exported["vocab_size"])
    # Back to update 2 (stage 0): the rerun grows at 3 again and ends where the first run did.
    for name in names[1:]:
        shutil.rmtree(run / "checkpoints" / name)
    again, _ = pretrain(
        load_config(None, grow_args(corpus, run, optimizer=optimizer)), progress=False
    )
    after = final_weights(run, exported["vocab_size"])
    assert again.val_loss == result.val_loss
    assert all(torch.equal(before[k], after[k]) for k in before)
