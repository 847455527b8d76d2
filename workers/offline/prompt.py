"""Turning a test case into chat messages: the prompt template and `messages` inputs."""

from __future__ import annotations

import json
import string
from typing import Any

from workers.errors import TemplateError

DEFAULT_TEMPLATE = "{input}"
_ROLES = {"system", "user", "assistant", "tool", "developer"}


def is_messages(value: Any) -> bool:
    """True for a chat transcript: a non-empty list of {"role", "content"} objects."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and m.get("role") in _ROLES for m in value)
    )


def template_fields(template: str) -> set[str]:
    """Top-level variable names a template uses ({question}, {metadata[x]} -> metadata)."""
    names: set[str] = set()
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field is not None:
                root = field.split(".")[0].split("[")[0]
                if not root:
                    raise TemplateError(
                        "the prompt template has an empty or positional {} placeholder; "
                        "name it, e.g. {input} (write {{ and }} for literal braces)"
                    )
                names.add(root)
    except ValueError as exc:
        raise TemplateError(
            f"the prompt template is malformed: {exc} (write {{{{ and }}}} for literal braces)"
        ) from exc
    return names


def template_variables(item_input: Any, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The variables a template may use for one test case."""
    variables: dict[str, Any] = {}
    if isinstance(item_input, dict):
        variables.update(item_input)
    variables["input"] = item_input if isinstance(item_input, str) else json.dumps(
        item_input, ensure_ascii=False
    )
    variables["metadata"] = metadata or {}
    return variables


def check_template(template: str, item_input: Any, metadata: dict[str, Any] | None) -> None:
    """Raise TemplateError if the template cannot be rendered for this test case."""
    if is_messages(item_input):
        return
    available = template_variables(item_input, metadata)
    missing = sorted(template_fields(template) - set(available))
    if missing:
        have = ", ".join(sorted(available))
        raise TemplateError(
            f"the prompt template uses {{{missing[0]}}} but this test case has no "
            f"{missing[0]!r} (available: {have})"
        )
    render_messages(template, item_input, metadata)  # nested keys, format specs


def render_messages(
    template: str | None, item_input: Any, metadata: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The chat messages sent to the model for one test case."""
    if is_messages(item_input):
        return [dict(m) for m in item_input]
    template = template or DEFAULT_TEMPLATE
    try:
        content = template.format_map(template_variables(item_input, metadata))
    except KeyError as exc:
        raise TemplateError(
            f"cannot render the prompt template: this test case has no key {exc} "
            "(e.g. in {metadata[...]})"
        ) from None
    except (IndexError, ValueError, AttributeError, TypeError) as exc:
        raise TemplateError(f"cannot render the prompt template: {exc}") from None
    return [{"role": "user", "content": content}]
