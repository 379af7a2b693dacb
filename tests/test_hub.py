"""Loading by name (lmforge.hub): both backends from a directory, their refusals (pickled
weights), generation defaults as transformers reads them, LMFORGE_HOME and the one-time
conversion of an embedded checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import (
    Qwen2ForCausalLM,
)

from lmforge import hub
from lmforge.errors import AssetError, CheckpointError, ConfigError
from lmforge.model import CausalLM
from lmforge.model.hf import load_hf_dir
from lmforge.registry import Registry
from tests.model.test_hf import assert_parity, tiny_hf


def test_load_model_from_a_directory_with_both_backends(tmp_path):
    tiny_hf("qwen2", tied=True).save_pretrained(tmp_path)
    native = hub.load_model(tmp_path)
    hf = hub.load_model(str(tmp_path), backend="hf")
    assert isinstance(native, CausalLM) and isinstance(hf, Qwen2ForCausalLM)
    assert_parity(native, hf)


def test_load_model_errors(tmp_path):
    with pytest.raises(AssetError, match="embedded model.*smollm2-135m-instruct"):
        hub.load_model("no-such-model")
    with pytest.raises(ConfigError, match=r"backend 'jax'.*\['hf', 'native'\]"):
        hub.load_model(tmp_path, backend="jax")
    with pytest.raises(AssetError, match="smollm2-135m-instruct"):
        hub.ensure_converted("no-such-model")


def test_the_hf_backend_refuses_pickled_weights_like_the_native_one(tmp_path):
    tiny_hf("llama", tied=True).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")  # never unpickled
    for backend in ("native", "hf"):
        with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model.bin\)"):
            hub.load_model(tmp_path, backend=backend)


def test_generation_defaults_read_as_transformers_reads_them(tmp_path):
    tiny_hf("llama", tied=True).save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink(missing_ok=True)
    assert hub.generation_defaults(tmp_path) == hub.GenerationDefaults({}, [], "")
    file = tmp_path / "generation_config.json"
    file.write_text(json.dumps({"temperature": 0.6, "eos_token_id": [2, 7]}))
    assert hub.generation_defaults(tmp_path).settings == {"temperature": 0.0}  # no do_sample
    file.write_text(
        json.dumps({"do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1, "eos_token_id": 2})
    )
    found = hub.generation_defaults(tmp_path)
    assert found.settings == {
        "temperature": 1.0, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1
    }  # fmt: skip
    assert found.eos_token_ids == [2] and found.source == str(file)
    file.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="generation_config.json: expected a JSON object"):
        hub.generation_defaults(tmp_path)


def test_lmforge_home(monkeypatch, tmp_path):
    monkeypatch.delenv("LMFORGE_HOME", raising=False)
    assert hub.lmforge_home() == Path.home() / ".cache" / "lmforge"
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    assert hub.lmforge_home() == tmp_path


class FakeConversion:
    """A registered embedded model whose conversion saves a tiny Llama and can be made to die."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.source = tmp_path / "source.gguf"
        self.source.write_bytes(b"v1")
        self.calls, self.die = 0, False
        self.home = tmp_path / "home"
        monkeypatch.setenv("LMFORGE_HOME", str(self.home))
        registry = Registry("embedded model")
        registry.add("fake", hub.Embedded(lambda: self.source, self.convert, {"do_sample": True}))
        monkeypatch.setattr(hub, "EMBEDDED", registry)

    def convert(self, source: Path, out: Path) -> None:
        self.calls += 1
        (out / "model.safetensors").write_bytes(b"half")
        if self.die:
            raise KeyboardInterrupt
        tiny_hf("llama", tied=True).save_pretrained(out)

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in (self.home / "models").iterdir() if p.name != "fake")


def test_conversion_runs_once_and_is_reused(tmp_path, monkeypatch):
    fake = FakeConversion(tmp_path, monkeypatch)
    cache = hub.ensure_converted("fake")
    assert cache == fake.home / "models" / "fake" and (cache / hub.MARKER).is_file()
    assert json.loads((cache / hub.GENERATION_FILE).read_text())["do_sample"] is True
    assert hub.ensure_converted("fake") == cache and fake.calls == 1
    assert_parity(hub.load_model("fake"), hub.load_model("fake", backend="hf"))
    os.utime(fake.source, ns=(1, 1))  # the same package installed elsewhere: reused
    assert hub.ensure_converted("fake") == cache and fake.calls == 1
    fake.source.write_bytes(b"v3")  # a new package version of the same size: convert again
    assert hub.ensure_converted("fake") == cache and fake.calls == 2
    fake.source.write_bytes(b"v2 is longer")  # and of another size
    assert hub.ensure_converted("fake") == cache and fake.calls == 3
    marker = json.loads((cache / hub.MARKER).read_text())
    (cache / hub.MARKER).write_text(json.dumps({**marker, "conversion": hub.CONVERSION - 1}))
    assert hub.ensure_converted("fake") == cache and fake.calls == 4  # an older conversion
    assert fake.leftovers() == []


def test_interrupted_conversion_is_never_taken_for_the_cache(tmp_path, monkeypatch):
    fake = FakeConversion(tmp_path, monkeypatch)
    fake.die = True
    with pytest.raises(KeyboardInterrupt):
        hub.ensure_converted("fake")
    assert not (fake.home / "models" / "fake").exists() and fake.leftovers() == []
    # A conversion killed outright leaves its temporary directory behind.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = fake.home / "models" / f".fake.tmp-{dead.pid}-abc"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    busy = fake.home / "models" / f".fake.tmp-{os.getpid()}-busy"  # a live conversion: kept
    busy.mkdir()
    fake.die = False
    cache = hub.ensure_converted("fake")
    assert fake.calls == 2 and fake.leftovers() == [busy.name]
    assert isinstance(load_hf_dir(cache), CausalLM)


# ---------------------------------------------------------------------------- the real model
