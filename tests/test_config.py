from dataclasses import dataclass, field
from typing import Literal

import pytest

from lmforge.config import (
    apply_overrides,
    field_docs,
    from_dict,
    leaf_fields,
    load,
    parse_value,
    save_yaml,
    to_dict,
)
from lmforge.errors import ConfigError, RegistryError
from lmforge.registry import Registry


@dataclass
class Inner:
    lr: float = 1e-3  # the learning rate
    steps: int = 10  # how many steps
    name: str | None = None  # optional name


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"  # one of two modes
    tags: list[str] = field(default_factory=list)  # free tags
    flag: bool = False  # a switch


def test_from_dict_builds_nested_and_coerces_ints_to_floats():
    cfg = from_dict(Outer, {"inner": {"lr": 1, "steps": 4.0}, "mode": "b", "tags": ["x"]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 4 and isinstance(cfg.inner.steps, int)
    assert cfg.mode == "b" and cfg.tags == ["x"]


def test_unknown_field_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"inner": {"lrr": 0.1}})
    assert "inner.lrr" in str(e.value) and "lr, steps, name" in str(e.value)


@pytest.mark.parametrize(
    "data, where",
    [
        ({"inner": {"lr": "fast"}}, "inner.lr"),
        ({"inner": {"steps": 2.5}}, "inner.steps"),
        ({"mode": "c"}, "mode"),
        ({"flag": "yes"}, "flag"),
        ({"tags": "x"}, "tags"),
        ({"inner": 3}, "inner"),
    ],
)
def test_ill_typed_field_is_named(data, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        from_dict(Outer, data)


@dataclass
class Checked:
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.inner.steps < 1:
            raise ConfigError("steps must be positive", fix="{inner.steps=1}")


def test_a_validate_error_keeps_its_fix_through_from_dict_and_load(tmp_path):
    with pytest.raises(ConfigError) as e:
        from_dict(Checked, {"inner": {"steps": 0}})
    assert (e.value.message, e.value.fix) == ("steps must be positive", "{inner.steps=1}")
    (tmp_path / "c.yaml").write_text("inner: {steps: 0}\n")
    with pytest.raises(ConfigError) as e:
        load(Checked, tmp_path / "c.yaml")
    assert e.value.message == f"{tmp_path / 'c.yaml'}: steps must be positive"
    assert e.value.render(lambda name, value: f"--{name}={value}").endswith("; --inner.steps=1")


def test_parse_value_reads_numbers_booleans_lists():
    assert parse_value("3e-4") == 3e-4
    assert parse_value("10") == 10
    assert parse_value("true") is True
    assert parse_value("[a, b]") == ["a", "b"]
    assert parse_value("null") is None
    assert parse_value("runs/x") == "runs/x"


def test_overrides_apply_dotted_keys():
    data = apply_overrides({"inner": {"lr": 1.0}}, ["--inner.lr=3e-4", "inner.name=x", "flag=1"])
    assert data == {"inner": {"lr": 3e-4, "name": "x"}, "flag": 1}
    with pytest.raises(ConfigError, match="key.field=value"):
        apply_overrides({}, ["inner.lr"])


def test_yaml_round_trip_and_file_errors(tmp_path):
    cfg = from_dict(Outer, {"inner": {"lr": 0.5, "name": "n"}, "tags": ["t"]})
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load(Outer, tmp_path / "c.yaml") == cfg
    assert load(Outer, tmp_path / "c.yaml", ["inner.steps=7"]).inner.steps == 7
    (tmp_path / "bad.yaml").write_text("inner:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load(Outer, tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("innr: {}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*innr"):
        load(Outer, tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load(Outer, tmp_path / "missing.yaml")
    assert to_dict(cfg)["inner"] == {"lr": 0.5, "steps": 10, "name": "n"}


def test_field_docs_and_leaf_fields():
    assert field_docs(Inner) == {
        "lr": "the learning rate",
        "steps": "how many steps",
        "name": "optional name",
    }
    names = [leaf.name for leaf in leaf_fields(Outer)]
    assert names == ["inner.lr", "inner.steps", "inner.name", "mode", "tags", "flag"]


def test_registry_lists_known_names_on_a_miss():
    reg: Registry[int] = Registry("thing")
    reg.add("b", 2)
    reg.add("a", 1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2
    with pytest.raises(RegistryError, match="unknown thing 'c'; registered: a, b"):
        reg.get("c")
    with pytest.raises(RegistryError, match="twice"):
        reg.add("a", 3)


# ── command-line values are read for the field's type ──────────────────────────────────────


@dataclass
class Prompted:
    template: str = "{text}"  # a prompt template
    path: str | None = "default"  # an optional path
    stop: list[str] = field(default_factory=list)  # stop strings
    steps: int = 1  # a number
    options: dict = field(default_factory=dict)  # a mapping


AS_TYPED = [
    "Review: {text}\nSentiment:",  # a real newline, a colon, braces
    "{text}: yes or no?",
    "{a: b}",
    "\"double\" and 'single' quotes",
    "- not a list item",
    "[not, a, list]",
    "true",
    "3e-4",
    "null",
    "# not a comment",
    "评论：{text}\n情感：",
    "emoji 🙂 {text} 🚀",
]


@pytest.mark.parametrize("text", AS_TYPED)
def test_a_text_field_takes_the_flag_as_typed(text):
    assert load(Prompted, None, [f"template={text}"]).template == text


def test_escapes_are_decoded_in_text_fields_only():
    cfg = load(Prompted, None, ["template=Q: {text}\\nA:\\tyes", "path=C:\\data\\\\x"])
    assert cfg.template == "Q: {text}\nA:\tyes" and cfg.path == "C:\\data\\x"
    assert load(Prompted, None, ["path="]).path is None  # empty: None for `str | None`
    assert load(Prompted, None, ["path=null"]).path == "null"
    assert parse_value("a\\nb") == "a\\nb"  # a value of unknown type is read as YAML


def test_numbers_lists_and_mappings_keep_their_yaml_reading():
    cfg = load(Prompted, None, ["steps=7", "options={r: 8, alpha: 16}", "stop=[a, b]"])
    assert cfg.steps == 7 and cfg.options == {"r": 8, "alpha": 16} and cfg.stop == ["a", "b"]
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load(Prompted, None, ["steps=many"])


def test_a_list_flag_repeats_and_replaces_the_files_list(tmp_path):
    (tmp_path / "c.yaml").write_text("stop: [x]\ntemplate: 'kept \\n as typed'\n")
    cfg = load(Prompted, tmp_path / "c.yaml", ["stop=\\n\\n", "stop=Q:", "stop=[end]"])
    assert cfg.stop == ["\n\n", "Q:", "end"]
    assert cfg.template == "kept \\n as typed"  # YAML files are read as YAML, unchanged
    assert load(Prompted, tmp_path / "c.yaml").stop == ["x"]
