"""Templates, verbalizers and few-shot prompt assembly."""

import pytest

from lmforge.errors import ConfigError
from lmforge.prompting import PromptFormat, Sample, Template, Verbalizer


def test_template_fields_and_render():
    t = Template("Q: {question} ({level}) {question}")
    assert t.fields == ("question", "level")
    assert t.render({"question": "2+2?", "level": "1", "unused": "x"}) == "Q: 2+2? (1) 2+2?"
    assert Template("{{literal}} {x}").render({"x": "y"}) == "{literal} y"


def test_missing_field_is_named():
    t = Template("Article: {body}\nTopic:")
    with pytest.raises(ConfigError, match=r"names the field 'body'.*\(it has: text\)"):
        t.render({"text": "..."})


@pytest.mark.parametrize("text", ["{", "a }", "{0}", "{}", "{a.b}", "{a!r}", "{a:>3}"])
def test_malformed_templates_are_refused(text):
    with pytest.raises(ConfigError, match="template"):
        Template(text)


def test_verbalizer_words_and_lookup():
    v = Verbalizer({"sport": ("sport", "football"), "tech": ("tech", "technology")})
    assert v.labels == ["sport", "tech"] and v.word("tech") == "tech"
    assert v.label_of(" Football news") == "sport"
    assert v.label_of("technology!") == "tech"  # the longest matching word wins
    assert v.label_of("politics") is None
    assert Verbalizer.identity(["a", "b"]).words == {"a": ("a",), "b": ("b",)}
    with pytest.raises(ConfigError, match="'ball' stands for both 'sport' and 'tech'"):
        Verbalizer({"sport": ("ball",), "tech": ("ball",)})
    with pytest.raises(ConfigError, match="needs one or more"):
        Verbalizer({"sport": ()})
    with pytest.raises(ConfigError, match="not in the verbalizer"):
        v.word("politics")


def test_few_shot_prompt_layout():
    fmt = PromptFormat(Template("Article: {text}\nTopic:"), instruction="Classify.")
    demos = [
        (Sample({"text": "Goal!"}, "sport"), "sport"),
        (Sample({"text": "Chips"}, "tech"), "tech"),
    ]
    assert fmt.render({"text": "Vote"}, demos) == (
        "Classify.\n\nArticle: Goal!\nTopic: sport\n\nArticle: Chips\nTopic: tech\n\n"
        "Article: Vote\nTopic:"
    )
    assert fmt.render({"text": "Vote"}) == "Classify.\n\nArticle: Vote\nTopic:"  # zero-shot
    assert fmt.answer_text("sport") == " sport"
    bare = PromptFormat(Template("{q} ="), answer=Template("{answer}"), separator="; ")
    assert bare.render({"q": "3"}, [(Sample({"q": "1"}, "1"), "1")]) == "1 =1; 3 ="


def test_answer_template_must_name_answer():
    with pytest.raises(ConfigError, match="exactly one field"):
        PromptFormat(Template("{x}"), answer=Template(" {label}"))
