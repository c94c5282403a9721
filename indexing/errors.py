"""The user-error base of the indexing package: what a user can fix, as opposed to a bug.

Every error that a bad query, a bad flag or a missing/broken index or embedder raises in
`indexing` derives from `IndexingError`; the CLI prints its message as one line and exits 2.
Anything else that escapes is a bug and keeps its traceback. `captioning` and `indexing` never
import each other, so each has its own base; `pipelines.errors.USER_ERRORS` names both.
"""

from __future__ import annotations


class IndexingError(ValueError):
    """Something the user can fix; the message says what to change."""


class OutputExistsError(IndexingError, FileExistsError):
    """The output path holds something a run must not overwrite without being told to."""
