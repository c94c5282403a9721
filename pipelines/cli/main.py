"""The `imgindex` command line: parses flags, builds configs, calls the packages.

The commands live in cli_captioner.py (the model: sample-archive, train, describe, explain,
evaluate) and cli_jobs.py (Beam jobs: caption, index, run, search); importing them registers
them on the shared typer app.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from pipelines.cli import job_commands, model_commands  # noqa: F401 - registers the commands
from pipelines.cli.common import UsageError, app, err, error_line


def main() -> None:
    """Entry point: known bad input becomes one clear line and exit code 2, never a traceback."""
    # Our own progress display is enough; transformers would add a bar per model load.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=os.environ.get("IMGINDEX_LOG", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Beam warns about Google Cloud client libraries on import; we need none for local runs.
    logging.getLogger().addFilter(lambda r: "apitools not found" not in r.getMessage())
    from captioning.archives.listing import InputError
    from captioning.native.checkpoint import CheckpointError

    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
    except (
        UsageError,
        InputError,
        CheckpointError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as e:
        error_line(" ".join(str(e).split()))
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: unknown option, missing argument, ...
        show = getattr(e, "show", None)  # typer vendors click: its errors are not click's
        if show is None:
            raise
        show()
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
