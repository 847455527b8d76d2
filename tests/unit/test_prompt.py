"""Tests of turning a test case into chat messages: templates and `messages` inputs."""

from __future__ import annotations

import copy
import json

import pytest

from workers.errors import TemplateError, WorkerError
from workers.offline.prompt import (
    DEFAULT_TEMPLATE,
    check_template,
    is_messages,
    render_messages,
    template_fields,
)


def content(template: str | None, item_input: object, metadata: dict | None = None) -> str:
    (message,) = render_messages(template, item_input, metadata)
    assert message["role"] == "user"
    assert set(message) == {"role", "content"}
    return message["content"]


# --- rendering ------------------------------------------------------------------------------


def test_string_input_with_the_default_template_is_sent_as_is() -> None:
    assert DEFAULT_TEMPLATE == "{input}"
    assert render_messages(None, "What is 2+2?", None) == [
        {"role": "user", "content": "What is 2+2?"}
    ]
    assert content("", "What is 2+2?") == "What is 2+2?"  # empty template -> the default


def test_string_input_with_braces_is_not_interpreted() -> None:
    assert content(None, 'Return {"a": {x}}') == 'Return {"a": {x}}'


def test_object_input_with_the_default_template_is_its_json() -> None:
    item = {"question": "Où est Paris ?", "n": 2}
    text = content(None, item)
    assert json.loads(text) == item
    assert "Où" in text  # not \u-escaped


def test_object_input_fields_are_template_variables() -> None:
    item = {"question": "Capital of France?", "context": "Europe"}
    assert content("Q: {question}\nContext: {context}", item) == (
        "Q: Capital of France?\nContext: Europe"
    )


def test_input_variable_is_available_with_an_object_input() -> None:
    item = {"question": "why?"}
    assert content("{question} | {input}", item) == 'why? | {"question": "why?"}'


def test_metadata_item_in_template() -> None:
    text = content("[{metadata[category]}] {input}", "2+2?", {"category": "arithmetic"})
    assert text == "[arithmetic] 2+2?"
    text = content("{metadata[level]}: {question}", {"question": "q"}, {"level": 3})
    assert text == "3: q"


def test_format_specs_and_conversions_apply() -> None:
    assert content("{n:03d}|{word!r}", {"n": 7, "word": "hi"}) == "007|'hi'"


def test_literal_double_braces_render_as_braces() -> None:
    assert content("{{braces}} {input} }}{{", "x") == "{braces} x }{"
    check_template("{{braces}}", "x", None)  # no variable needed
    assert template_fields("{{braces}} {{input}}") == set()


def test_messages_input_is_passed_through_unchanged_and_not_mutated() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say {hi}", "name": "alice"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    before = copy.deepcopy(messages)
    rendered = render_messages("PREFIX {input} {missing}", messages, {"category": "x"})
    assert rendered == before
    assert messages == before
    rendered[0]["content"] = "changed"
    rendered.append({"role": "user", "content": "more"})
    assert messages == before  # the result is a copy: editing it leaves the test case alone
    assert all(r is not m for r, m in zip(rendered, messages, strict=False))


def test_messages_input_skips_template_checks() -> None:
    messages = [{"role": "user", "content": "hi"}]
    check_template("{nothing_here}", messages, None)
    check_template("{unclosed", messages, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([{"role": "user", "content": "hi"}], True),
        ([{"role": "developer", "content": "x"}, {"role": "tool", "content": "y"}], True),
        ([], False),
        ([{"role": "robot", "content": "hi"}], False),
        ([{"content": "hi"}], False),
        (["user: hi"], False),
        ({"role": "user", "content": "hi"}, False),
        ("hi", False),
    ],
)
def test_is_messages(value: object, expected: bool) -> None:
    assert is_messages(value) is expected


def test_a_list_that_is_not_messages_is_rendered_as_json() -> None:
    assert json.loads(content(None, [1, "two", {"three": 3}])) == [1, "two", {"three": 3}]
    assert content(None, [{"role": "robot", "content": "hi"}]) == (
        '[{"role": "robot", "content": "hi"}]'
    )


# --- template errors ------------------------------------------------------------------------


def test_check_template_names_the_missing_variable_and_lists_available_ones() -> None:
    with pytest.raises(TemplateError) as info:
        check_template("Q: {question} ({level})", {"prompt": "x", "topic": "y"}, {"a": 1})
    message = str(info.value)
    # both are missing; the first in alphabetical order is named
    assert message.startswith("the prompt template uses {level} but this test case has no 'level'")
    available = message.split("available:", 1)[1]
    for name in ("input", "metadata", "prompt", "topic"):
        assert name in available
    assert isinstance(info.value, WorkerError)


def test_check_template_with_string_input_offers_input_and_metadata() -> None:
    with pytest.raises(TemplateError, match=r"\{question\}.*available: input, metadata\)"):
        check_template("{question}", "plain text", None)


def test_check_template_passes_when_every_variable_exists() -> None:
    check_template("{question} {input} {metadata[category]}", {"question": "q"}, {"category": "c"})
    check_template(DEFAULT_TEMPLATE, "anything", None)


def test_render_with_a_missing_variable_raises_template_error() -> None:
    with pytest.raises(TemplateError, match="question"):
        render_messages("{question}", "plain text", None)


@pytest.mark.parametrize("template", ["{unclosed", "Q: {question", "a } b"])
def test_malformed_template(template: str) -> None:
    with pytest.raises(TemplateError, match="malformed"):
        check_template(template, {"question": "q", "unclosed": "u"}, None)
    with pytest.raises(TemplateError):
        render_messages(template, {"question": "q", "unclosed": "u"}, None)


@pytest.mark.parametrize("template", ["{}", "a {} b {input}", "{[0]}"])
def test_positional_placeholder(template: str) -> None:
    with pytest.raises(TemplateError, match="positional"):
        check_template(template, "x", None)
    with pytest.raises(TemplateError):
        render_messages(template, "x", None)


def test_template_fields_are_top_level_names() -> None:
    fields = template_fields("{question} {metadata[category]} {input.upper} {n:>4} {w!r}")
    assert fields == {"question", "metadata", "input", "n", "w"}


def test_check_template_catches_a_missing_metadata_key() -> None:
    with pytest.raises(TemplateError):
        render_messages("{metadata[category]}", "x", {"other": 1})  # render does fail...
    with pytest.raises(TemplateError, match="category"):
        check_template("{metadata[category]}", "x", {"other": 1})  # ...check does not
