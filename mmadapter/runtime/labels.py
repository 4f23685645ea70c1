"""Class names and prompt templates: the checks every label set goes through, wherever it comes from
(a dataset's folders, a split file, ``--classes``, a checkpoint or an export manifest).

No torch here: the serving runtime checks label sets too.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence, Set

import numpy as np

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


def name_list(names: Iterable[str] | None, what: str = "class list") -> list[str] | None:
    """An API caller's class names (or templates) as a list, read once: a generator is read here rather
    than consumed by a first check and then found empty by the next use. None stays None; a single
    string and unordered collections (a set: the label order would be arbitrary) are refused."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or isinstance(names, (Set, Mapping)) or not isinstance(names, Iterable):
        raise DataError(f"the {what} must be a list of names, got {type(names).__name__}")
    return list(names)


def has_control_character(text: str) -> bool:
    """C0 (NUL, BEL, ESC, newline, tab, ...), DEL and C1 characters: the ones a terminal acts on."""
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def check_class_names(names: Sequence[object], what: str = "class list") -> tuple[str, ...]:
    """Non-empty, all strings, each with visible text and no control characters, no duplicates, and no
    two names that give the same prompt tokens (``a b``, ``a_b`` and ``A B``): such a pair could never
    be told apart. A name with a control character (C0, DEL, C1) is refused, shown with Python's escapes:
    printed raw it would act on the terminal, and no class is named with one."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DataError(f"the {what} must be a list of names, got {type(names).__name__}")
    if not names:
        raise DataError(f"the {what} is empty")
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str):
            raise DataError(f"the {what} holds {name!r} ({type(name).__name__}); class names are strings")
        if has_control_character(name):
            raise DataError(f"the {what} holds a class name with a control character: {name!r}")
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


def check_distinct_tokens(tokenize: Callable[[list[str]], object], class_names: Sequence[str],
                          templates: Sequence[str], what: str = "class list") -> None:
    """No two names whose prompts give the same token ids under every template, as the text encoder
    sees them: after the tokenizer's truncation at its context length, ``90 x "word " + "cat"`` and
    ``... + "dog"`` are the same prompt. ``tokenize``: prompts -> ids [N, context length] (the serving
    side's ``ClipTokenizer``, open_clip's tokenizer in torch)."""
    prompts = [format_prompt(t, c) for t in templates for c in class_names]
    ids = np.asarray(tokenize(prompts))
    per_class = ids.reshape(len(templates), len(class_names), -1).transpose(1, 0, 2)
    seen: dict[bytes, str] = {}
    for name, rows in zip(class_names, per_class):
        key = np.ascontiguousarray(rows, dtype=np.int64).tobytes()
        if key in seen:
            raise DataError(f"the {what} has {seen[key]!r} and {name!r}, which give the same prompt tokens once "
                            f"cut at the text encoder's context length ({ids.shape[-1]} tokens)")
        seen[key] = name


__all__ = ["DEFAULT_TEMPLATE", "check_class_names", "check_distinct_tokens", "check_template", "format_prompt",
           "has_control_character", "name_list", "prompt_name"]
