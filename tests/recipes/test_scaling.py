import json

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.recipes.scaling import (
    ScalingFitConfig,
    ScalingRunConfig,
    fit_ladder,
    rung_budget,
    scaling_fit,
    scaling_run,
    shape,
    work_parameters,
)


def test_a_rung_shape_has_heads_of_head_dim_and_the_budget_is_r_times_n():
    settings = ScalingRunConfig(seq_len=64, batch_size=16, tokens_per_parameter=20.0)
    config = shape(settings, 1, 32, vocab=300)
    assert (config.n_head, config.head_dim, config.d_ff) == (2, 16, 96)
    # q k v o: 4·32², SwiGLU: 3·32·96, tied head: 300·32
    assert work_parameters(config) == 4 * 32 * 32 + 3 * 32 * 96 + 300 * 32 == 22_912
    budget = rung_budget(settings, config)
    assert budget["steps"] == -(-20 * 22_912 // 1024) == 448
    assert budget["tokens"] == 448 * 1024
    forward = 2 * 22_912 + 2 * 1 * 64 * 2 * 16  # 2N + attention scores and values
    assert budget["flops"] == 3 * forward * budget["tokens"]
    with pytest.raises(ConfigError, match="not a multiple of head_dim 16"):
        shape(settings, 1, 40, vocab=300)


def _synthetic_rows(a: float, b: float, c: float) -> list[dict]:
    rows = []
    for i, flops in enumerate(np.geomspace(1e9, 1e12, 6)):
        params = int(1e4 * 2**i)
        rows.append(
            {
                "name": f"r{i}",
                "params": params,
                "tokens": 20 * params,
                "flops": float(flops),
                "val_loss": a * flops**b + c,
            }
        )
    return rows


def test_fit_reads_the_ladder_and_recovers_its_law(tmp_path):
    rows = _synthetic_rows(60.0, -0.12, 1.5)
    fits = fit_ladder(rows, bootstrap=0, seed=0)
    assert set(fits) == {"L(C)", "L(N,D)"}  # six rungs: enough for both
    a, b, c = fits["L(C)"].params
    assert a == pytest.approx(60.0, rel=1e-2) and b == pytest.approx(-0.12, rel=1e-2)
    assert c == pytest.approx(1.5, rel=1e-2)
    assert set(fit_ladder(rows[:5], bootstrap=0, seed=0)) == {"L(C)"}
    (tmp_path / "ladder.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scaling_fit(ScalingFitConfig(out=str(tmp_path), bootstrap=20), progress=False)
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["L(C)"]["params"][1] == pytest.approx(-0.12, rel=1e-2)
    assert len(saved["L(C)"]["samples"]) == 20 and (tmp_path / "fit.png").stat().st_size > 1000


def test_fit_without_a_ladder_says_how_to_make_one(tmp_path, capsys):
    assert main(["scaling", "fit", "--out", str(tmp_path)]) == 2
    assert "lmforge scaling run --out=DIR" in capsys.readouterr().err


def test_a_ladder_needs_one_width_per_depth(tmp_path):
    with pytest.raises(ConfigError, match="one entry per rung; got 2 and 1"):
        scaling_run(ScalingRunConfig(out=str(tmp_path), layers=[1, 2], widths=[16]), False)


@pytest.mark.slow
def test_run_trains_each_rung_once_on_its_budget(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(
        ("The quick brown fox jumps over the lazy dog. 春眠不觉晓，处处闻啼鸟。\n") * 400
    )
    cfg = ScalingRunConfig(
        out=str(tmp_path / "ladder"),
        corpus=str(corpus),
        vocab_size=300,
        seq_len=16,
        batch_size=4,
        tokens_per_parameter=0.05,
        eval_batches=2,
        layers=[1, 1],
        widths=[16, 32],
    )
    rows = scaling_run(cfg, progress=False)
    assert [r["name"] for r in rows] == ["L1-d16", "L1-d32"]
    for r in rows:
        assert r["tokens"] == r["steps"] * 4 * 16 >= 0.05 * r["params"]
        assert 0 < r["val_loss"] < 10
    again = scaling_run(cfg, progress=False)  # both rungs are in ladder.jsonl: nothing trains
    assert again == rows
