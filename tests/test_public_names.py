"""Every name lmforge exports works as documented, in a fresh interpreter and after any
submodule was imported first; every Python block of the READMEs runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmforge

ROOT = Path(__file__).resolve().parent.parent
CHECK = """
import lmforge, torch
from lmforge.data import PackedBatches
for name in lmforge.__all__:
    assert callable(getattr(lmforge, name)), name
config = lmforge.TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_every=0,
                             log_every=1, device="cpu")
model = lmforge.CausalLM(lmforge.preset("tiny", vocab_size=50))
tokens = torch.randint(0, 50, (512,)).numpy()
result = lmforge.train(model, PackedBatches(tokens, 8, 2), config, {run!r}, progress=False)
assert result.step == 2
"""


@pytest.mark.parametrize(
    "first",
    ["", "import lmforge.train.optim", "from lmforge import TrainConfig", "import lmforge.hub"],
)
def test_every_export_is_callable_whatever_was_imported_first(first, tmp_path):
    code = first + "\n" + CHECK.format(run=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_exports_are_the_documented_ones():
    assert sorted(lmforge.__all__) == lmforge.__all__ and "train" in lmforge.__all__


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.assets
@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_every_python_block_of_the_readme_runs(readme, tmp_path):
    """In a fresh folder (configs/ linked in), one block after the other."""
    path = ROOT / readme
    if not path.exists():
        pytest.skip(f"{readme} does not exist yet")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "\n".join(python_blocks(path))  # one session, as a reader would type them
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, f"{readme}:\n{done.stderr[-3000:]}"
