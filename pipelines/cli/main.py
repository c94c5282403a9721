"""The `imgindex` command line: argv -> a command's run, its errors -> a message and an exit code.

The commands live in model_commands.py (the model: sample-archive, train, describe, explain,
evaluate), job_commands.py (Beam jobs: caption, index, run, search), collection_commands.py
(update, versions, rollback) and serve_command.py (serve); main() imports them, which
registers them on the shared typer app. Exit codes: 2 for what the user can fix
(pipelines.errors.USER_ERRORS and usage errors), 3 for a job that failed too much (JobFailed),
70 for a bug, 130 when aborted.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass
from typing import Annotated, NoReturn

import typer

from pipelines.cli.common import app, err, error_line, stderr_line
from pipelines.errors import USER_ERRORS, JobFailed

DEBUG_ENV = "IMGINDEX_DEBUG"
EXIT_USER_ERROR = 2
EXIT_JOB_FAILED = 3
EXIT_BUG = 70  # EX_SOFTWARE in sysexits.h
EXIT_ABORTED = 130


@dataclass
class GlobalOptions:
    """The options given before the command, read back by main() when the command fails."""

    debug: bool = False


@app.callback()
def global_options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar=DEBUG_ENV,
            help="Print the full traceback of any error.",
        ),
    ] = False,
) -> None:
    """Caption very large image archives and search them by text."""
    ctx.ensure_object(GlobalOptions).debug = debug


def _hide_beam_gcp_warning(record: logging.LogRecord) -> bool:
    # Beam warns about Google Cloud client libraries on import; we need none for local runs.
    return "apitools not found" not in record.getMessage()


def _set_up_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("IMGINDEX_LOG", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().addFilter(_hide_beam_gcp_warning)  # the same filter is added only once
    # --runner DaskRunner: dask.distributed logs every worker start at INFO
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.root.level))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _user_error(e: Exception, debug: bool) -> NoReturn:
    error_line(_one_line(e))
    if debug:
        traceback.print_exception(e, file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _bug(e: Exception, debug: bool) -> NoReturn:
    """A bug: one line, and the traceback kept in a file (or on stderr with --debug)."""
    text = "".join(traceback.format_exception(e))
    path = None if debug else _write_traceback(text)
    if path is None:
        sys.stderr.write(text)
    stderr_line(f"internal error: {type(e).__name__}: {_one_line(e)}")
    if path is not None:
        stderr_line(f"the full traceback is in {path}; --debug or {DEBUG_ENV}=1 prints it")
    sys.exit(EXIT_BUG)


def _write_traceback(text: str) -> str | None:
    try:
        fd, path = tempfile.mkstemp(prefix="imgindex-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as e:
        stderr_line(f"could not write the traceback to a file ({e}); here it is:")
        return None
    return path


def main() -> None:
    """Entry point: a user's error is one line and exit code 2; a bug keeps its traceback."""
    # Our own progress display is enough; transformers would add a bar per model load.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _set_up_logging()
    # Registers the commands. They import Beam, which logs a warning on import: after logging is
    # set up, so that the filter hides it.
    from pipelines.cli import (  # noqa: F401
        collection_commands,
        job_commands,
        model_commands,
        serve_command,
    )

    options = GlobalOptions()
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False, obj=options)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(EXIT_ABORTED)
    except typer.TyperException as e:  # usage errors: unknown option, missing argument, ...
        show = getattr(e, "show", None)  # typer vendors click: its errors are not click's
        if show is None:
            raise
        show()
        sys.exit(getattr(e, "exit_code", EXIT_USER_ERROR))
    except USER_ERRORS as e:
        _user_error(e, options.debug)
    except JobFailed as e:
        error_line(_one_line(e))
        sys.exit(EXIT_JOB_FAILED)
    except Exception as e:
        _bug(e, options.debug)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
