"""SIGTERM and SIGINT stop a run at the next step boundary with a checkpoint: rerunning the
same command then ends exactly where an uninterrupted run ends (same losses, same weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.train.signals import GracefulStop
from tests.conftest import TEXT, tiny_args

ROOT = Path(__file__).resolve().parents[2]
STEPS = 30


def command(corpus: Path, run: Path) -> list[str]:
    args = tiny_args(corpus, run, steps=STEPS) + ["--train.save_every=0", "--train.eval_every=0"]
    return [sys.executable, "-m", "lmforge", *args]


def logged_losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and max(logged_losses(run), default=0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step} (exit code {proc.poll()})")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    run = root / "run"
    subprocess.run(command(root / "corpus.txt", run), cwd=ROOT, check=True, capture_output=True)
    return run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_step_and_the_rerun_matches(sig, uninterrupted, tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        command(corpus, run), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(run, 5, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    done = max(logged_losses(run))
    assert f"stopped by {sig.name} after step {done}" in err and "Traceback" not in err
    assert (run / "checkpoints" / f"step-{done:08d}").is_dir()  # no step lost
    assert not (run / "model").exists()  # an interrupted run exports nothing
    subprocess.run(command(corpus, run), cwd=ROOT, check=True, capture_output=True)
    assert logged_losses(run) == logged_losses(uninterrupted)
    ours = load_file(str(run / "model" / "model.safetensors"))
    theirs = load_file(str(uninterrupted / "model" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_second_signal_stops_at_once() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored
