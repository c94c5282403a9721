"""Exit codes: a user's error is one line and 2, a failed job 3, a bug 70 with a kept traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from captioning.errors import CaptioningError, MissingInputError
from indexing.errors import IndexingError
from pipelines.errors import JobFailed, UsageError


@pytest.fixture
def sample_archive_raising(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Arguments for `imgindex sample-archive`, whose writer raises the given exception."""
    import captioning.archives.synthetic.writer as writer

    def arrange(exc: BaseException) -> list[str]:
        def write_archive(*args, **kwargs):
            raise exc

        monkeypatch.setattr(writer, "write_archive", write_archive)
        return ["sample-archive", str(tmp_path / "archive")]

    return arrange


def traceback_files(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("imgindex-traceback-*.txt"))


def test_a_bug_is_exit_70_with_its_traceback_in_a_file(
    imgindex_main, sample_archive_raising, tmp_path
):
    result = imgindex_main(*sample_archive_raising(ValueError("width must be\n  positive")))
    assert result.code == 70
    lines = result.err.splitlines()
    assert lines[0] == "internal error: ValueError: width must be positive"
    assert "Traceback" not in result.err
    path = Path(re.search(r"the full traceback is in (\S+);", result.err).group(1))
    assert traceback_files(tmp_path) == [path]
    text = path.read_text()
    assert text.startswith("Traceback") and "in write_archive" in text
    assert text.rstrip().endswith("ValueError: width must be\n  positive")


def test_a_missing_file_that_is_no_user_error_is_a_bug(imgindex_main, sample_archive_raising):
    result = imgindex_main(*sample_archive_raising(FileNotFoundError("/tmp/x.lock")))
    assert result.code == 70
    assert result.err.startswith("internal error: FileNotFoundError: /tmp/x.lock\n")


@pytest.mark.parametrize(
    "exc",
    [
        CaptioningError("--beam-size must be\nat least 1, got 0"),
        MissingInputError("--beam-size must be\nat least 1, got 0"),
        IndexingError("--beam-size must be\nat least 1, got 0"),
        UsageError("--beam-size must be\nat least 1, got 0"),
    ],
    ids=type,
)
def test_a_user_error_is_one_line_and_exit_2(imgindex_main, sample_archive_raising, tmp_path, exc):
    result = imgindex_main(*sample_archive_raising(exc))
    assert result.code == 2
    assert result.err == "error: --beam-size must be at least 1, got 0\n"
    assert traceback_files(tmp_path) == []


def test_a_failed_job_is_one_line_and_exit_3(imgindex_main, sample_archive_raising):
    result = imgindex_main(
        *sample_archive_raising(JobFailed("12 of 20 images failed (60%),\nmore than 50%"))
    )
    assert result.code == 3
    assert result.err == "error: 12 of 20 images failed (60%), more than 50%\n"


@pytest.mark.parametrize("switch", ["env", "option"])
def test_debug_prints_the_traceback_of_a_bug(
    imgindex_main, sample_archive_raising, monkeypatch, tmp_path, switch
):
    args = sample_archive_raising(ValueError("boom"))
    if switch == "env":
        monkeypatch.setenv("IMGINDEX_DEBUG", "1")
    else:
        args.insert(0, "--debug")
    result = imgindex_main(*args)
    assert result.code == 70
    assert result.err.startswith("Traceback (most recent call last):")
    assert "in write_archive" in result.err and "ValueError: boom" in result.err
    assert result.err.splitlines()[-1] == "internal error: ValueError: boom"
    assert traceback_files(tmp_path) == []


def test_debug_prints_the_traceback_of_a_user_error(
    imgindex_main, sample_archive_raising, monkeypatch
):
    monkeypatch.setenv("IMGINDEX_DEBUG", "1")
    result = imgindex_main(*sample_archive_raising(CaptioningError("no such model")))
    assert result.code == 2
    first, *rest = result.err.splitlines()
    assert first == "error: no such model"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "captioning.errors.CaptioningError: no such model"


def test_an_interrupt_is_exit_130(imgindex_main, sample_archive_raising):
    result = imgindex_main(*sample_archive_raising(KeyboardInterrupt()))
    assert result.code == 130 and "Traceback" not in result.err


def test_usage_errors_and_exit_codes_of_commands_are_kept(imgindex_main, sample_archive_raising):
    import typer

    assert imgindex_main(*sample_archive_raising(typer.Exit(4))).code == 4
    result = imgindex_main("sample-archive", "--no-such-flag")
    assert result.code == 2 and "No such option: --no-such-flag" in result.err
