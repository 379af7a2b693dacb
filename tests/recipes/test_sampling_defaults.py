"""generate and chat sample as the checkpoint means it: its generation_config.json fills what
no flag sets (read as transformers reads it), a flag overrides it, and every end id it names
stops generation."""

from __future__ import annotations

import io
import json
import shutil

from lmforge.hub import generation_defaults
from lmforge.recipes.chat import ChatConfig, run_chat
from lmforge.recipes.generate import GenerateConfig, run_generate
from lmforge.recipes.source import SamplingFlags, describe_sampling


def with_generation_config(model_dir, tmp_path, **settings):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    (copy / "generation_config.json").write_text(json.dumps(settings))
    return copy


def test_settings_come_from_flag_then_file_then_the_verb(tiny_model_dir, tmp_path):
    model = with_generation_config(tiny_model_dir, tmp_path, do_sample=True, top_p=0.9)
    found = generation_defaults(model)
    config, origin = SamplingFlags(temperature=0.5).sampling(found)
    assert (config.temperature, config.top_p, config.top_k) == (0.5, 0.9, 50)
    assert origin == {
        "temperature": "flag",
        "top_k": found.source,  # transformers' own default when the file samples
        "top_p": found.source,
        "repetition_penalty": "default",
    }
    line = describe_sampling(config, origin)
    assert line.startswith("sampling: temperature 0.5, top_k 50 (") and "generation_config" in line
    assert SamplingFlags().sampling(generation_defaults(tiny_model_dir))[0].temperature == 0.8
    chat = ChatConfig().sampling(generation_defaults(tiny_model_dir))[0]
    assert chat.temperature == 0.7  # chat's own default where the checkpoint has none


def test_a_checkpoint_that_does_not_sample_is_greedy(tiny_model_dir, tmp_path, capsys):
    model = with_generation_config(tiny_model_dir, tmp_path, temperature=0.9, eos_token_id=[3, 4])
    greedy = GenerateConfig(model=str(model), prompt="To be", max_new_tokens=5, no_stream=True)
    first = run_generate(greedy, out=io.StringIO())
    assert "temperature 0 (" in capsys.readouterr().err
    assert run_generate(greedy, out=io.StringIO()) == first  # greedy: the same every time
    out = io.StringIO()
    run_chat(ChatConfig(model=str(model), max_new_tokens=3), io.StringIO("hi\n/exit\n"), out)
    assert "sampling: temperature 0 (" in out.getvalue()
