"""README.md and README.zh-CN.md list the same verbs, labs and assets: every name the
registries hold, in both."""

from pathlib import Path

import pytest

from lmforge.assets import ASSETS
from lmforge.cli import VERBS
from lmforge.lab import LABS

ROOT = Path(__file__).resolve().parent.parent
READMES = ["README.md", "README.zh-CN.md"]
NAMES = (
    [("verb", f"lmforge {name}") for name in VERBS.names()]
    + [("lab", f"`{name}`") for name in LABS.names()]
    + [("asset", f"`{name}`") for name in ASSETS.names()]
)


@pytest.mark.parametrize("readme", READMES)
def test_each_readme_names_every_verb_lab_and_asset(readme):
    text = (ROOT / readme).read_text(encoding="utf-8")
    missing = [f"{kind} {spelt}" for kind, spelt in NAMES if spelt not in text]
    assert not missing, f"{readme} does not mention: {', '.join(missing)}"


def test_each_readme_opens_with_the_same_commands_and_links_the_other():
    english, chinese = ((ROOT / r).read_text(encoding="utf-8") for r in READMES)
    for text in (english, chinese):
        first_screen = text[: text.index("\n## ")]
        assert "make quickstart" in first_screen and "make test" in first_screen
    assert "README.zh-CN.md" in english[: english.index("\n## ")]
    assert "(README.md)" in chinese[: chinese.index("\n## ")]
    assert "lmforge quickstart --corpus peoples-daily" in chinese
