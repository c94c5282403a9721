"""Strings for the evaluation's messages and java tools: one-line captions, a few example keys."""

from __future__ import annotations

from collections.abc import Sequence


def one_line(text: str) -> str:
    """`text` with every run of whitespace, line breaks included, as one space."""
    # METEOR and PTB read one caption per line; any line break inside one would shift the rest.
    return " ".join(text.split())


def key_examples(keys: Sequence[str], limit: int = 5) -> str:
    """The first `limit` keys, quoted, and how many more there are: for error messages."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
