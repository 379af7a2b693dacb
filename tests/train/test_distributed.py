"""Two processes over gloo train exactly as one process with the same global batch.

The two ranks run every scenario of dist_worker.py in one process group (one start-up for
all of them); this process runs the one-process references and the resumes on one process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.recipes.finetune import finetune, load_config
from lmforge.train.checkpoint import CHECKPOINTS, checkpoint_dir, latest_checkpoint
from lmforge.train.loop import param_groups
from lmforge.train.sharded import load_any
from tests.conftest import TEXT, tiny_args
from tests.train.dist_worker import (
    FINETUNED,
    STEPS,
    finetune_overrides,
    losses,
    tiny_model,
    tiny_run,
)
from tests.train.test_signals import wait_for_step

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # fp32 on CPU: sums over two ranks round differently from one sum


def assert_close(ours: dict, reference: dict[int, float], steps=range(1, STEPS + 1)) -> None:
    ours = {int(k): v for k, v in ours.items()}
    assert all(abs(ours[s] - reference[s]) < TOLERANCE for s in steps), (ours, reference)


def truncated_copy(run: Path, to: Path, step: int) -> Path:
    """`run` as it was right after its checkpoint of `step`."""
    shutil.copytree(run, to)
    for ckpt in (to / CHECKPOINTS).iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    return to


def metrics_losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[int, float], dict[str, torch.Tensor]]:
    run = tmp_path_factory.mktemp("one") / "run"
    model, result = tiny_run("none", run)
    return run, losses(result.history), model.state_dict()


@pytest.fixture(scope="module")
def plan(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    lines = {"the": "The slings and arrows of outrageous fortune", "be": "To be or not"}
    rows = [{"text": text, "label": label} for label, text in lines.items()] * 12
    (root / "labelled.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    words = ("be", "not", "the", "to", "or", "of", "and", "a", "生存", "毁灭")
    pairs = [
        {"instruction": f"Repeat {w}" + " please" * (i % 3), "output": f"{w} {w}"}
        for i, w in enumerate(words)
    ]
    (root / "instructions.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in pairs) + "\n", encoding="utf-8"
    )
    return {
        "model_dir": str(tiny_model_dir),
        "labelled": str(root / "labelled.jsonl"),
        "instructions": str(root / "instructions.jsonl"),
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, reference, plan) -> Path:
    """Both ranks through every scenario; returns the work directory."""
    work = tmp_path_factory.mktemp("two")
    for mode in ("ddp", "fsdp"):
        truncated_copy(reference[0], work / f"one-to-two-{mode}", 10)
    (work / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    worker = [sys.executable, "-m", "tests.train.dist_worker", str(work)]
    ranks = [
        subprocess.Popen(worker, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in (0, 1)
    ]
    assert ranks[1].wait(timeout=600) == 3  # it dies on purpose in the last scenario
    try:
        ranks[0].wait(timeout=60)  # gloo sees its peer gone, or waits and is killed here
    except subprocess.TimeoutExpired:
        ranks[0].kill()
        ranks[0].wait()
    assert (work / "done.json").is_file(), "a scenario before the crash failed; see the output"
    return work


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_as_one_process(two_ranks, reference, mode) -> None:
    assert_close(json.loads((two_ranks / f"{mode}.json").read_text()), reference[1])
    whole = load_file(str(two_ranks / f"{mode}-model.safetensors"))  # gathered on rank 0
    assert whole.keys() == reference[2].keys()
    assert all(torch.allclose(whole[k], reference[2][k], atol=1e-6) for k in whole)


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks, reference, tmp_path) -> None:
    run = truncated_copy(two_ranks / "fsdp", tmp_path / "run", 10)
    state = json.loads((checkpoint_dir(run, 10) / "state.json").read_text())
    assert state["layout"] == "sharded" and state["world_size"] == 2
    _, result = tiny_run("none", run)
    assert_close(losses(result.history), reference[1])


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_one_process_checkpoint_resumes_in_two(two_ranks, reference, mode) -> None:
    assert_close(json.loads((two_ranks / f"one-to-two-{mode}.json").read_text()), reference[1])


def loads_whole(run: Path, step: int) -> None:
    """The checkpoint of `step` is the latest and loads, optimizer included, into one process."""
    assert latest_checkpoint(run) == checkpoint_dir(run, step)
    model = tiny_model()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.1))
    assert load_any(checkpoint_dir(run, step), model, optimizer)["step"] == step
    assert len(optimizer.state) == len(list(model.parameters()))


def test_a_signal_on_one_rank_stops_both_at_the_same_step(two_ranks) -> None:
    messages = [json.loads((two_ranks / f"signal-rank{r}.json").read_text()) for r in (0, 1)]
    assert messages[0] == messages[1] and "stopped by SIGTERM after step 3" in messages[0]
    loads_whole(two_ranks / "signal", 3)


def test_an_unreadable_piece_on_one_rank_makes_every_rank_fall_back(two_ranks, reference):
    seen = [json.loads((two_ranks / f"fallback-rank{r}.json").read_text()) for r in (0, 1)]
    for rank in seen:  # each rank warned that step 20 is unreadable and resumed from step 10
        assert any(
            "step-00000020 is unreadable" in w and "step-00000010" in w for w in rank["warnings"]
        )
    assert_close(seen[0]["losses"], reference[1], range(11, STEPS + 1))
    loads_whole(two_ranks / "fallback", STEPS)  # step 20 written again, whole


def test_a_rank_dying_mid_write_leaves_the_last_checkpoint(two_ranks) -> None:
    loads_whole(two_ranks / "crash", 3)
    assert not checkpoint_dir(two_ranks / "crash", 6).exists()


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_finetune_under_ddp_equals_one_process(two_ranks, plan, method, tmp_path) -> None:
    finetune(load_config(None, finetune_overrides(tmp_path, method, "none", plan)), progress=False)
    ours = metrics_losses(two_ranks / "finetune" / method)
    assert len(ours) == 4
    assert_close(ours, metrics_losses(tmp_path), range(1, 5))


def test_every_delta_method_finetunes_under_ddp(two_ranks) -> None:
    for method in FINETUNED:
        run = two_ranks / "finetune" / method
        results = json.loads((run / "results.json").read_text())
        assert results["method"] == method and (run / "delta").is_dir()
        state = json.loads((latest_checkpoint(run) / "state.json").read_text())
        assert state["layout"] == "sharded"


def test_nproc_runs_torchrun_and_a_sigterm_stops_every_rank(tmp_path) -> None:
    """`lmforge pretrain --nproc 2`: SIGTERM to the launcher reaches both ranks through
    torchrun; they save one checkpoint together and the launcher exits 143. The same command
    without --nproc then finishes the run in one process and exports model/."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    args = tiny_args(corpus, run, steps=400)  # far more than it gets to: stopped at step >= 3
    args += ["--train.schedule=constant", "--train.save_every=0", "--train.eval_every=0"]
    args += ["--train.distributed=fsdp"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lmforge", *args, "--nproc", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run, 3, launcher, timeout=300)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    done = max(metrics_losses(run))
    assert err.count(f"stopped by SIGTERM after step {done}") == 2  # both ranks, same step
    state = json.loads((checkpoint_dir(run, done) / "state.json").read_text())
    assert state["layout"] == "sharded" and state["world_size"] == 2
    args[args.index("--train.max_steps=400")] = f"--train.max_steps={done + 2}"
    assert main([*args, "--train.distributed=none"]) == 0
    assert sorted(metrics_losses(run)) == list(range(1, done + 3))
    assert (run / "model" / "model.safetensors").is_file()
