"""The training loop: schedules, learning, accumulation, exact resume, divergence, metrics."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lmforge.errors import ConfigError, TrainingDivergedError
from lmforge.model import CausalLM, preset
from lmforge.train import BatchSource, TrainConfig, lr_at, train
from lmforge.train.checkpoint import latest_checkpoint, load_checkpoint

VOCAB, T = 64, 16


class RandomTokens:
    """A BatchSource over a fixed random token tensor, cycling through it in order."""

    def __init__(self, batch_size: int = 2, n_seq: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (n_seq, T), generator=g)  # (N, T)
        self.batch_size = batch_size
        self.pos = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = [(self.pos + i) % len(self.tokens) for i in range(self.batch_size)]
        self.pos += self.batch_size
        ids = self.tokens[rows]  # (B, T)
        return {"input_ids": ids, "labels": ids.clone()}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def val_batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    source = RandomTokens(batch_size=2, seed=99)
    return [source.next_batch() for _ in range(n)]


def make_model(seed: int = 0, dropout: float = 0.0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(preset("tiny", vocab_size=VOCAB, dropout=dropout))


def config(**changes) -> TrainConfig:
    base = dict(
        max_steps=8,
        batch_size=2,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        eval_batches=0,
        save_every=0,
        keep_last=0,
        log_every=1,
        device="cpu",
        precision="fp32",
    )
    return TrainConfig(**{**base, **changes})


class Recorder:
    """Callback that keeps (step, loss) of every step; optionally raises after one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.losses: list[tuple[int, float]] = []
        self.fail_at = fail_at

    def on_step_end(self, state) -> None:
        self.losses.append((state.step, state.loss))
        if state.step == self.fail_at:
            raise KeyboardInterrupt(f"stopped at {state.step}")


# ---------------------------------------------------------------- schedules and config


def test_schedule_values():
    cfg = SimpleNamespace(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, schedule="")
    steps = (0, 5, 10, 60, 110, 200)
    at = {
        name: [lr_at(s, SimpleNamespace(**{**vars(cfg), "schedule": name})) for s in steps]
        for name in ("cosine", "linear", "constant")
    }
    assert at["cosine"] == pytest.approx([0.0, 0.5, 1.0, 0.55, 0.1, 0.1], abs=1e-12)
    assert at["linear"] == pytest.approx([0.0, 0.5, 1.0, 0.55, 0.1, 0.1], abs=1e-12)
    assert at["constant"] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    quarter = SimpleNamespace(**{**vars(cfg), "schedule": "cosine"})
    assert lr_at(35, quarter) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(35, SimpleNamespace(**{**vars(cfg), "schedule": "linear"})) == pytest.approx(
        0.1 + 0.9 * 0.75
    )
    no_warmup = SimpleNamespace(**{**vars(cfg), "warmup_steps": 0, "schedule": "cosine"})
    assert lr_at(0, no_warmup) == 1.0 and lr_at(110, no_warmup) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lr": 0.0}, "train.lr"),
        ({"grad_accum": 0}, "train.grad_accum"),
        ({"warmup_steps": 9}, "train.warmup_steps"),
        ({"schedule": "step"}, "train.schedule"),
        ({"precision": "fp8"}, "train.precision"),
        ({"beta2": 1.0}, "train.beta2"),
        ({"device": "toaster"}, "train.device"),
        ({"optimizer": "sgd"}, "train.optimizer"),
    ],
)
def test_config_validation_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        config(**changes).validate()


# ---------------------------------------------------------------- learning


def test_loss_decreases(tmp_path):
    recorder = Recorder()
    result = train(
        make_model(),
        RandomTokens(),
        config(max_steps=30, lr=1e-2, warmup_steps=3),
        tmp_path,
        val_data=val_batches(),
        callbacks=[recorder],
        progress=False,
    )
    losses = [loss for _, loss in recorder.losses]
    assert len(losses) == 30
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)  # uniform start
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    assert result.step == 30 and result.tokens == 30 * 2 * T
    assert result.val_ppl == pytest.approx(math.exp(result.val_loss))
    assert result.train_loss == losses[-1]


def test_grad_accumulation_matches_full_batch(tmp_path):
    grads = {}

    class Grab:
        def __init__(self, key):
            self.key = key

        def on_step_end(self, state):
            grads[self.key] = {n: p.grad.clone() for n, p in state.model.named_parameters()}

    full, halves = make_model(), make_model()
    common = dict(max_steps=1, warmup_steps=0, grad_clip=0.0)
    train(
        full,
        RandomTokens(batch_size=4),
        config(batch_size=4, **common),
        tmp_path / "a",
        callbacks=[Grab("full")],
        progress=False,
    )
    train(
        halves,
        RandomTokens(batch_size=2),
        config(grad_accum=2, **common),
        tmp_path / "b",
        callbacks=[Grab("halves")],
        progress=False,
    )
    for name, g in grads["full"].items():
        assert torch.allclose(g, grads["halves"][name], atol=1e-6, rtol=0), name
    for (name, a), b in zip(full.named_parameters(), halves.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


# ---------------------------------------------------------------- exact resume


def test_nan_loss_raises_and_keeps_good_checkpoints(tmp_path):
    calls = []

    def objective(model, batch):
        calls.append(1)
        loss = model(**batch).loss
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(TrainingDivergedError) as err:
        train(
            make_model(),
            RandomTokens(),
            config(save_every=1, keep_last=0),
            tmp_path,
            objective=objective,
            progress=False,
        )
    message = str(err.value)
    good = tmp_path / "checkpoints" / "step-00000002"
    assert "step 3" in message and "nan" in message and str(good) in message
    assert "lower lr" in message
    assert latest_checkpoint(tmp_path) == good
    assert load_checkpoint(good, make_model(seed=7))["step"] == 2


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_infinite_gradient_raises_before_the_update(tmp_path):
    calls = []

    def objective(model, batch):
        calls.append(1)
        loss = model(**batch).loss
        return _InfGrad.apply(loss) if len(calls) == 2 else loss

    model = make_model()
    with pytest.raises(
        TrainingDivergedError, match=r"step 2: the gradient norm is (inf|nan)"
    ) as err:
        train(model, RandomTokens(), config(), tmp_path, objective=objective, progress=False)
    assert "none (no checkpoint was written yet)" in str(err.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert latest_checkpoint(tmp_path) is None


# ---------------------------------------------------------------- outputs


def test_metrics_jsonl_and_plot(tmp_path):
    recorder = Recorder()
    cfg = config(max_steps=6, log_every=2, eval_every=3)
    result = train(
        make_model(),
        RandomTokens(),
        cfg,
        tmp_path,
        val_data=val_batches(),
        callbacks=[recorder],
        progress=False,
    )
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    train_lines = [r for r in lines if "loss" in r]
    eval_lines = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6]
    assert [r["step"] for r in eval_lines] == [3, 6]
    losses = dict(recorder.losses)
    for r in train_lines:
        assert set(r) == {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed"}
        assert r["loss"] == (losses[r["step"] - 1] + losses[r["step"]]) / 2
        assert r["lr"] == lr_at(r["step"], cfg)
        assert r["tokens"] == r["step"] * 2 * T
    for r in eval_lines:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert latest_checkpoint(tmp_path).name == "step-00000006"  # saved at the end
    assert isinstance(RandomTokens(), BatchSource)


def test_config_loads_through_lmforge_config():
    from lmforge.config import from_dict

    cfg = from_dict(TrainConfig, {"lr": 1, "schedule": "linear"}, "train")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match="train.lr must be positive"):
        from_dict(TrainConfig, {"lr": -1.0}, "train")


class Measuring:
    """An objective that reports more than its loss: the loss itself and the step's index."""

    def __init__(self) -> None:
        self.calls = 0
        self.step_metrics: dict[str, float] = {}

    def __call__(self, model, batch):
        loss = model(**batch).loss
        self.calls += 1
        self.step_metrics = {"double": 2 * float(loss), "call": float(self.calls)}
        return loss


def test_objective_step_metrics_are_averaged_per_log_line_and_resume_exactly(tmp_path):
    cfg = config(max_steps=6, log_every=3, grad_accum=2, save_every=2)
    result = train(
        make_model(), RandomTokens(), cfg, tmp_path / "a", objective=Measuring(), progress=False
    )
    lines = [r for r in result.history if "loss" in r]
    assert [r["step"] for r in lines] == [3, 6]
    for r in lines:
        assert r["double"] == pytest.approx(2 * r["loss"], rel=1e-6)
    # calls 1..6 (steps 1-3), each micro-batch weighted 1/grad_accum, averaged over 3 steps
    assert lines[0]["call"] == pytest.approx(sum(range(1, 7)) / 6)
    with pytest.raises(KeyboardInterrupt):  # stop after step 4: a log line is half summed
        train(
            make_model(),
            RandomTokens(),
            cfg,
            tmp_path / "b",
            objective=Measuring(),
            callbacks=[Recorder(fail_at=5)],
            progress=False,
        )
    resumed = Measuring()
    resumed.calls = 8  # the calls of steps 1-4, as an uninterrupted objective would count
    again = train(
        make_model(), RandomTokens(), cfg, tmp_path / "b", objective=resumed, progress=False
    )
    resumed_lines = [r for r in again.history if "loss" in r]
    for key in ("step", "loss", "double", "call"):
        assert [r[key] for r in resumed_lines] == [r[key] for r in lines], key
