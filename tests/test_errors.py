"""Errors carry their fix; each setting in it is spelt where the error is shown."""

from lmforge.errors import ConfigError, DataError, RegistryError


def test_a_fix_reads_as_python_keywords_by_default():
    e = DataError("bad.jsonl:2: malformed JSON", fix="pass {skip_bad=true} to skip it")
    assert str(e) == "bad.jsonl:2: malformed JSON; pass skip_bad=True to skip it"
    assert e.message == "bad.jsonl:2: malformed JSON" and str(ConfigError("plain")) == "plain"


def test_render_spells_each_setting_and_keeps_literal_braces():
    e = ConfigError("no {text}", fix="put {{text}} in {data.template}, or {max_new_tokens=8}")

    def flags(name: str, value: str | None) -> str:
        return f"--{name}" + (f"={value}" if value is not None else "")

    assert e.render(flags) == "no {text}; put {text} in --data.template, or --max_new_tokens=8"
    assert str(e) == "no {text}; put {text} in data.template, or max_new_tokens=8"


def test_registry_error_is_not_quoted_like_a_key_error():
    assert str(RegistryError("unknown task 'x'")) == "unknown task 'x'"


def test_a_setting_with_several_names_reads_as_the_first_in_python():
    e = DataError("too little data", fix="lower {batch_size} or {seq_len|max_length}")
    assert str(e) == "too little data; lower batch_size or seq_len"
