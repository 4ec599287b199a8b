"""What every encoder checks before a model sees a text."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ModelError


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or a ModelError naming the first that a model cannot take."""
    if isinstance(texts, str):
        raise ModelError("encode() takes a list of texts, not a single string; wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ModelError(f"text #{i} is {type(text).__name__}, not a string")
        check_unicode(text, f"text #{i}")
    return texts


def check_unicode(text: str, what: str) -> None:
    """Refuse a string that is not valid Unicode (a lone surrogate, as JSON's \\ud800 decodes to):
    tokenizers cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ModelError(f"{what} is not valid Unicode (a lone surrogate at character {exc.start})") from None
