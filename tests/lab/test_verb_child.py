"""A lab stage's run directory is reused only when its config and the earlier stages it reads
are unchanged; otherwise it is kept aside and run again, and a stopped stage resumes."""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.lab import alignment
from lmforge.lab import peft_compare as pc


@dataclass
class Cfg:
    steps: int = 1


@pytest.fixture
def calls(monkeypatch):
    """Each child 'run' writes results.json counting the runs so far (and records its dir)."""
    seen = []

    def fake_run(args, stdout, stderr):
        run_dir = Path(args[-1]).parent
        seen.append(run_dir)
        (run_dir / "results.json").write_text(json.dumps({"run": len(seen)}))
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(pc.subprocess, "run", fake_run)
    return seen


def age(path: Path, seconds: float) -> None:
    """Make `path` look `seconds` older than now."""
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_reused_only_while_config_and_inputs_are_unchanged(tmp_path, calls):
    run, upstream = tmp_path / "stage", tmp_path / "up" / "results.json"
    upstream.parent.mkdir()
    upstream.write_text("{}")
    age(upstream, 100)
    assert pc.verb_child(["x"], Cfg(), run, [upstream]) == {"run": 1}
    assert pc.verb_child(["x"], Cfg(), run, [upstream]) == {"run": 1}  # reused, not run
    assert len(calls) == 1

    upstream.write_text('{"again": 1}')  # the earlier stage ran again: newer than our results
    os.utime(upstream)
    age(run / "results.json", 10)
    assert pc.verb_child(["x"], Cfg(), run, [upstream]) == {"run": 2}
    assert json.loads((tmp_path / "stage.old-1" / "results.json").read_text()) == {"run": 1}

    assert pc.verb_child(["x"], Cfg(steps=2), run, [upstream]) == {"run": 3}  # config changed
    assert (tmp_path / "stage.old-2").is_dir() and len(calls) == 3


def test_a_stopped_stage_resumes_in_place(tmp_path, calls):
    run = tmp_path / "stage"
    run.mkdir()
    pc.save_yaml(Cfg(), run / "lab-config.yaml")
    (run / "checkpoints").mkdir()  # stopped before results.json
    assert pc.verb_child(["x"], Cfg(), run) == {"run": 1}
    assert (run / "checkpoints").is_dir() and not (tmp_path / "stage.old-1").exists()


def test_alignment_stages_name_what_they_read(tmp_path):
    s = alignment.settings(True)
    configs = alignment.stage_configs(tmp_path, s, tmp_path / "p.jsonl", tmp_path / "ptx")
    reads = {name: alignment.inputs(cfg) for name, cfg in configs.items()}
    done = {name: tmp_path / name / "results.json" for name in configs}
    assert reads["preferences"] == [] and reads["grpo"] == []
    assert reads["reward"] == [done["preferences"]] == reads["dpo"]
    assert reads["preferences-2"] == [done["dpo"]] == reads["dpo-grpo"]
    assert reads["dpo-2"] == [done["dpo"], done["preferences-2"]]
    assert reads["ppo"] == [done["reward"]] == reads["ppo-ptx"]
