"""Run `imgindex` in this process, so that a test can replace what a command calls."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from typing import NamedTuple

import pytest

from pipelines.cli.main import main


class Result(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def imgindex_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path
) -> Callable[..., Result]:
    """`imgindex ARGS...` through main(): its exit code, stdout and stderr.

    Tracebacks of bugs go to tmp_path; IMGINDEX_DEBUG is unset unless the test sets it after.
    """
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # main() sets it; this restores it
    monkeypatch.setenv("COLUMNS", "250")  # help on one line per option
    monkeypatch.delenv("IMGINDEX_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["imgindex", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return Result(exited.value.code, captured.out, captured.err)

    return run
