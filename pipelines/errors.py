"""User errors vs bugs for the jobs and the CLI.

`USER_ERRORS` is every base class of an error a user can fix: the packages' own bases
(`captioning.errors.CaptioningError`, `indexing.errors.IndexingError`, which cannot share one class
because the two packages never import each other) and `UsageError` for the jobs' and the CLI's
own checks. The CLI turns exactly these into one line and exit code 2; anything else is a bug.
"""

from __future__ import annotations

from captioning.errors import CaptioningError
from indexing.errors import IndexingError


class UsageError(ValueError):
    """Bad input to a job or a command (a flag, an output folder): one line, exit code 2."""


class JobFailed(Exception):
    """A job that ran to the end but failed too much (see --max-failure-rate); the message
    carries its counts. Exit code 3: the tables and run.json are written."""


class OutputExistsError(UsageError, FileExistsError):
    """OUT holds an earlier run's output and --overwrite was not given."""


USER_ERRORS: tuple[type[Exception], ...] = (UsageError, CaptioningError, IndexingError)
