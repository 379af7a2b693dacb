"""One rank of the 2-process gloo tests (tests/train/test_distributed.py starts two of these).

Every scenario runs in both ranks, in order, in one process group; rank 0 writes what the
test compares into WORK/<scenario>.json. The last scenario kills rank 1 in the middle of a
checkpoint write, so this process never ends cleanly there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lmforge.data.loader import PackedBatches, ValidationBatches
from lmforge.errors import RunInterrupted
from lmforge.model import CausalLM, ModelConfig
from lmforge.model.config import PRESETS
from lmforge.train import TrainConfig, train
from lmforge.train.distributed import consolidated, setup

STEPS = 20
FINETUNED = ("lora", "qlora", "adapter", "bitfit", "prompt", "prefix", "ptuning", "ptuning2")


def tiny_model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**{**PRESETS.get("tiny"), "vocab_size": 300}))


def tiny_config(mode: str, **changes) -> TrainConfig:
    fields = dict(max_steps=STEPS, batch_size=4, warmup_steps=2, log_every=1, eval_every=10)
    fields.update(save_every=10, keep_last=0, device="cpu", distributed=mode)
    return TrainConfig(**{**fields, **changes})


def tiny_run(mode: str, run_dir: Path, callbacks=(), **changes):
    """20 steps of the tiny model on random tokens: the run every world size must agree on."""
    tokens = np.random.default_rng(0).integers(0, 300, 20_000).astype(np.uint16)
    model = tiny_model()
    data = PackedBatches(tokens[:18_000], 32, 4, seed=1)
    val = ValidationBatches(tokens[18_000:], 32, 4, max_batches=2)  # then a save, at 10 and 20
    cfg = tiny_config(mode, **changes)
    return model, train(
        model, data, cfg, run_dir, val_data=val, callbacks=callbacks, progress=False
    )


def losses(history: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in history if "loss" in r}


class SignalOnRank:
    """Sends SIGTERM to this process after `step`, on rank `rank` only."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_step_end(self, state) -> None:
        if state.step == self.step and int(os.environ["RANK"]) == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)


def write(work: Path, name: str, value: object) -> None:
    if int(os.environ["RANK"]) == 0:
        (work / f"{name}.json").write_text(json.dumps(value))


def pretraining(work: Path) -> None:
    for mode in ("ddp", "fsdp"):
        model, result = tiny_run(mode, work / mode)
        write(work, mode, losses(result.history))
        whole = consolidated(model, tiny_model, setup(tiny_config(mode)))
        if whole is not None:
            weights = {k: v.clone() for k, v in whole.state_dict().items()}  # tied: two copies
            save_file(weights, str(work / f"{mode}-model.safetensors"))
    for mode in ("ddp", "fsdp"):  # a one-process run's checkpoint of step 10, continued by two
        _, result = tiny_run(mode, work / f"one-to-two-{mode}")
        write(work, f"one-to-two-{mode}", losses(result.history))
    try:
        tiny_run("fsdp", work / "signal", callbacks=[SignalOnRank(rank=1, step=3)])
    except RunInterrupted as e:
        (work / f"signal-rank{os.environ['RANK']}.json").write_text(json.dumps(str(e)))


def fallback(work: Path) -> None:
    """The newest checkpoint of the FSDP run is torn in rank 1's file only: both ranks fall
    back to the one before it, together, and train on from there."""
    ctx = setup(tiny_config("fsdp"))
    run = work / "fallback"
    if ctx.is_main:
        shutil.copytree(work / "fsdp", run)
        piece = next((run / "checkpoints" / "step-00000020").glob("shard-00002-*"))
        with open(piece, "r+b") as f:
            f.truncate(piece.stat().st_size - 64)
    ctx.barrier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, result = tiny_run("fsdp", run)
    seen = {"losses": losses(result.history), "warnings": [str(w.message) for w in caught]}
    (work / f"fallback-rank{os.environ['RANK']}.json").write_text(json.dumps(seen))


def finetune_overrides(run_dir: Path, method: str, mode: str, plan: dict[str, str]) -> list[str]:
    """A few steps of `method` on the tiny model: classification, or SFT for QLoRA (its rows
    hold unequal numbers of labels, so the ranks' losses weigh unequally)."""
    steps = 4 if method in ("lora", "qlora") else 2
    sft = ["task=sft", f"data.source={plan['instructions']}"] if method == "qlora" else []
    return [
        f"model={plan['model_dir']}",
        f"run_dir={run_dir}",
        f"method={method}",
        f"data.source={plan['labelled']}",
        "data.template={text}. It is about",
        f"data.max_length={48 if sft else 24}",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.warmup_steps=1",
        "train.eval_every=0",
        "train.lr=1e-2",
        "train.log_every=1",
        f"train.distributed={mode}",
        *sft,
    ]


def finetuning(work: Path, plan: dict[str, str]) -> None:
    from lmforge.recipes.finetune import finetune, load_config

    for method in FINETUNED:
        overrides = finetune_overrides(work / "finetune" / method, method, "ddp", plan)
        finetune(load_config(None, overrides), progress=False)


def crash(work: Path) -> None:
    """Rank 1 dies while the checkpoint of step 6 is being written."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    write_data = HuggingFaceStorageWriter.write_data

    def dying(self, plan, planner):
        if "step-00000006" in str(self.path) and os.environ["RANK"] == "1":
            os._exit(3)
        return write_data(self, plan, planner)

    HuggingFaceStorageWriter.write_data = dying
    tiny_run("ddp", work / "crash", save_every=3)


def main() -> None:
    work = Path(sys.argv[1])
    plan = json.loads((work / "plan.json").read_text())
    torch.set_num_threads(1)
    pretraining(work)
    fallback(work)
    finetuning(work, plan)
    write(work, "done", True)
    crash(work)


if __name__ == "__main__":
    main()
