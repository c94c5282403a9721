"""The user-error base of the captioning package: what a user can fix, as opposed to a bug.

Every error that bad input, a bad flag or a missing/broken model raises in `captioning` derives
from `CaptioningError`; the CLI prints its message as one line and exits 2. Anything else that
escapes is a bug and keeps its traceback. It subclasses ValueError so that callers who catch
ValueError around a config keep working.
"""

from __future__ import annotations


class CaptioningError(ValueError):
    """Something the user can fix; the message says what to change."""


class MissingInputError(CaptioningError, FileNotFoundError):
    """A path the user named does not exist."""
