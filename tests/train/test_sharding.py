"""What each rank reads and how a run is set up for several processes (no process group)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.data.examples import ExampleBatches
from lmforge.data.loader import PackedBatches, rank_rows
from lmforge.data.sft import EncodedExample, SFTBatches
from lmforge.errors import ConfigError
from lmforge.train import TrainConfig
from lmforge.train.distributed import Dist, loss_terms, setup
from lmforge.train.launch import torchrun_args, without_flag


def sources() -> dict[str, Callable[[], object]]:
    tokens = np.arange(4000, dtype=np.uint16)
    rows = [(list(range(i % 5 + 1)), i % 2) for i in range(20)]
    ids = [list(range(i % 7 + 2)) for i in range(30)]
    examples = [EncodedExample(x, [-100, *x[1:]]) for x in ids]
    return {
        "packed": lambda: PackedBatches(tokens, 16, 4, seed=3),
        "examples": lambda: ExampleBatches(rows, 4, pad_id=0, seed=3),
        "sft": lambda: SFTBatches(examples, 4, pad_id=0, seed=3),
        "sft-packed": lambda: SFTBatches(examples, 4, pad_id=0, pack=True, max_length=12, seed=3),
    }


def real_tokens(batch: dict) -> list[list[int]]:
    """Each row's tokens without its padding (a rank pads to its own longest row, on the
    side its source pads)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:  # full rows, or packed rows with a block mask
        return batch["input_ids"].tolist()
    return [row[keep.bool()].tolist() for row, keep in zip(batch["input_ids"], mask)]


@pytest.mark.parametrize("name", ["packed", "examples", "sft", "sft-packed"])
def test_the_ranks_rows_make_up_the_global_batch(name) -> None:
    make = sources()[name]
    whole, halves = make(), [make(), make()]
    for rank, half in enumerate(halves):
        half.shard(rank, 2)
    for _ in range(7):  # across an epoch boundary
        batch, parts = whole.next_batch(), [h.next_batch() for h in halves]
        for i, part in enumerate(parts):
            assert real_tokens(part) == real_tokens(batch)[2 * i : 2 * i + 2]
        assert all(h.state_dict() == whole.state_dict() for h in halves)  # one global position


def test_a_global_batch_must_divide_among_the_ranks() -> None:
    assert rank_rows(8, 1, 4) == slice(2, 4)
    with pytest.raises(ConfigError, match="must divide among 4 processes") as e:
        rank_rows(7, 0, 4)
    assert e.value.fix == "use a multiple of 4, e.g. {batch_size=8}"


def test_loss_terms_count_what_the_mean_averages() -> None:
    labels = torch.tensor([[1, 2, -100, 4], [5, -100, -100, -100]])
    assert loss_terms({"input_ids": labels, "labels": labels}) == 2  # no one predicts labels[0]
    assert loss_terms({"input_ids": labels, "class_ids": torch.tensor([0, 1])}) == 2


def test_setup_alone_and_its_errors(monkeypatch) -> None:
    ctx = setup(TrainConfig(device="cpu"))
    assert ctx == Dist("none", 0, 1, torch.device("cpu")) and ctx.is_main
    assert ctx.agree(15, False) == (15, False) and ctx.sum([1.0, 2.0]) == [1.0, 2.0]
    with pytest.raises(ConfigError, match="'deepspeed' is unknown") as e:
        setup(TrainConfig(device="cpu", distributed="deepspeed"))
    assert e.value.fix == "choose {distributed} from auto, ddp, fsdp, none"
    with pytest.raises(ConfigError, match="state of adamw only") as e:
        setup(TrainConfig(device="cpu", distributed="fsdp", optimizer="adamw8bit"))
    assert e.value.fix == "use {optimizer=adamw}"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.distributed is none") as e:
        setup(TrainConfig(device="cpu", distributed="none"))
    assert e.value.fix == "use {distributed=ddp} (or fsdp)"


def test_the_launcher_hands_the_command_to_torchrun() -> None:
    argv = ["pretrain", "--nproc", "2", "--train.max_steps=3", "--nproc=4"]
    assert without_flag(argv, "--nproc") == ["pretrain", "--train.max_steps=3"]
    args = torchrun_args(["pretrain", "--x=1"], 2)
    assert args[0] == "--nproc-per-node=2" and args[-4:] == ["-m", "lmforge", "pretrain", "--x=1"]


def test_the_command_line_spells_the_fixes_as_its_flags(tmp_path, capsys) -> None:
    assert main(["finetune", "--train.distributed=fsdp"]) == 2
    assert "so it runs under DDP; use --train.distributed=ddp" in capsys.readouterr().err
    run = ["pretrain", f"--run_dir={tmp_path / 'run'}", "--train.distributed=deepspeed"]
    assert main(run) == 2
    assert "choose --train.distributed from auto, ddp, fsdp, none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written
