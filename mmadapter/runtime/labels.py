"""Class names and prompt templates: the checks every label set goes through, wherever it comes from
(a dataset's folders, a split file, ``--classes``, a checkpoint or an export manifest).

No torch here: the serving runtime checks label sets too.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from mmadapter.errors import DataError

DEFAULT_TEMPLATE = "a photo of a {}."


def prompt_name(class_name: str) -> str:
    """The text a class name stands for in a prompt: underscores are spaces (folder names such as
    ``golden_retriever``), as in the authors' and CoOp's code."""
    return class_name.replace("_", " ")


def _token_key(class_name: str) -> str:
    # CLIP's tokenizer lower-cases and collapses whitespace, so names equal under both give equal tokens.
    return " ".join(prompt_name(class_name).lower().split())


def check_template(template: object, what: str = "prompt template") -> str:
    """A template must be a string with exactly one empty ``{}`` field and nothing else to format
    (``{0}``, ``{name}``, ``{:>5}`` and unbalanced braces are refused); ``{{`` and ``}}`` are literal."""
    if not isinstance(template, str):
        raise DataError(f"{what} must be a string, got {type(template).__name__}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise DataError(f"{what} {template!r} is malformed: {exc}") from None
    if len(fields) != 1 or fields[0] != ("", "", None):
        raise DataError(f"{what} {template!r} needs exactly one '{{}}' for the class name and no other fields")
    return template


def format_prompt(template: str, class_name: str) -> str:
    return template.format(prompt_name(class_name))


def check_class_names(names: Sequence[object], what: str = "class list") -> tuple[str, ...]:
    """Non-empty, all strings, each with visible text, no duplicates, and no two names that give the
    same prompt tokens (``a b``, ``a_b`` and ``A B``): such a pair could never be told apart."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DataError(f"the {what} must be a list of names, got {type(names).__name__}")
    if not names:
        raise DataError(f"the {what} is empty")
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str):
            raise DataError(f"the {what} holds {name!r} ({type(name).__name__}); class names are strings")
        key = _token_key(name)
        if not key:
            raise DataError(f"the {what} holds an empty or blank class name {name!r}")
        if key in seen:
            other = seen[key]
            if other == name:
                raise DataError(f"the {what} names {name!r} twice")
            raise DataError(f"the {what} has {other!r} and {name!r}, which give the same prompt ({key!r})")
        seen[key] = name
    return tuple(names)  # type: ignore[arg-type]


__all__ = ["DEFAULT_TEMPLATE", "check_class_names", "check_template", "format_prompt", "prompt_name"]
