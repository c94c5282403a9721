"""Flags shared by several commands: declared once, defaults from the config dataclasses."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer

from captioning.api import CaptionerOptions
from captioning.archives.records import ReadConfig
from captioning.native.config import ModelConfig
from captioning.training.config import EpochReport, TrainConfig
from pipelines.caption.pipeline import CaptionConfig

CAPTIONER_FLAGS = {
    "--device": "device",
    "--beam-size": "beam_size",
    "--max-length": "max_length",
    "--num-return-sequences": "num_return_sequences",
    "--dtype": "dtype",
    "--prompt": "prompt",
    "--trust-remote-code": "trust_remote_code",
    "--allow-pickle": "allow_pickle",
    "--threads": "threads",
    "--cpu-heap": "cpu_heap",
}
NON_DEFAULT_CAPTIONER_ARGS = [
    *("--model", "hf:./blip", "--device", "cpu", "--beam-size", "5", "--max-length", "10"),
    *("--num-return-sequences", "2", "--dtype", "float32", "--prompt", "<CAPTION>"),
    *("--trust-remote-code", "--allow-pickle", "--threads", "2", "--cpu-heap", "system"),
]
NON_DEFAULT_CAPTIONER = CaptionerOptions(
    device="cpu",
    beam_size=5,
    max_length=10,
    num_return_sequences=2,
    dtype="float32",
    prompt="<CAPTION>",
    trust_remote_code=True,
    allow_pickle=True,
    threads=2,
    cpu_heap="system",
)
NON_DEFAULT_JOB_ARGS = [
    *("--batch-size", "4", "--overwrite", "--image-column", "png", "--model-copies", "2"),
    *("--decode-on", "cpu", "--max-failure-rate", "0.25"),
]


def shown_default(help_text: str, flag: str) -> str | None:
    """The `[default: X]` on FLAG's line of a command's --help, None when it shows none."""
    [line] = [line for line in help_text.splitlines() if re.search(rf"\s{flag}\s", line)]
    match = re.search(r"\[default: ([^\]]*)\]", line)
    return match.group(1) if match else None


def expected_shown(value: object) -> str | None:
    return None if value is None or value is False else str(value)


@pytest.mark.parametrize("command", ["describe", "caption", "run"])
def test_help_lists_the_captioner_flags_with_the_dataclass_defaults(imgindex_main, command):
    result = imgindex_main(command, "--help")
    assert result.code == 0
    defaults = CaptionerOptions()
    for flag, field in CAPTIONER_FLAGS.items():
        assert shown_default(result.out, flag) == expected_shown(getattr(defaults, field)), flag
    assert shown_default(result.out, "--model") is None


@pytest.mark.parametrize("command", ["caption", "run"])
def test_help_lists_the_job_flags_with_the_dataclass_defaults(imgindex_main, command):
    result = imgindex_main(command, "--help")
    config = CaptionConfig(input="in", out="out")
    assert shown_default(result.out, "--batch-size") == str(config.batch_size)
    assert shown_default(result.out, "--overwrite") is None
    assert shown_default(result.out, "--image-column") == ReadConfig().image_column
    assert shown_default(result.out, "--decode-on") == config.decode_on
    assert shown_default(result.out, "--max-failure-rate") == str(config.max_failure_rate)
    assert "DirectRunner" not in result.out  # it first downloads Prism; FnApiRunner is local


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list:
    """What describe loads and what caption and run would run; each command stops there."""
    import captioning.registry
    from pipelines.cli import job_commands

    seen: list = []

    def load_captioner(spec, options):
        seen.append((spec, options))
        raise typer.Exit(0)

    def run_caption_job(config, beam_args):
        seen.append(config)
        raise typer.Exit(0)

    monkeypatch.setattr(captioning.registry, "load_captioner", load_captioner)
    monkeypatch.setattr(CaptionerOptions, "set_up_process", lambda self: None)
    monkeypatch.setattr(job_commands, "run_caption_job", run_caption_job)
    return seen


def test_describe_caption_and_run_parse_the_same_flags_alike(imgindex_main, captured, tmp_path):
    args = [str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    assert imgindex_main("describe", "x.png", *NON_DEFAULT_CAPTIONER_ARGS).code == 0
    for command in ("caption", "run"):
        code = imgindex_main(command, *args, *NON_DEFAULT_CAPTIONER_ARGS, *NON_DEFAULT_JOB_ARGS)
        assert code.code == 0
    (model, options), from_caption, from_run = captured
    assert (model, options) == ("hf:./blip", NON_DEFAULT_CAPTIONER)
    assert (
        from_caption
        == from_run
        == CaptionConfig(
            input=args[0],
            out=args[2],
            model="hf:./blip",
            batch_size=4,
            overwrite=True,
            captioner=NON_DEFAULT_CAPTIONER,
            read=ReadConfig(image_column="png"),
            model_copies=2,
            decode_on="cpu",
            max_failure_rate=0.25,
        )
    )


def test_without_flags_the_configs_are_the_dataclass_defaults(imgindex_main, captured, tmp_path):
    args = [str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    for command in ("describe", "caption", "run"):
        assert imgindex_main(command, *(["x.png"] if command == "describe" else args)).code == 0
    assert captured == [(None, CaptionerOptions()), *[CaptionConfig(args[0], args[2])] * 2]


@pytest.fixture
def captured_training(monkeypatch: pytest.MonkeyPatch) -> dict:
    """What `imgindex train` decodes and trains with; nothing is decoded or trained."""
    import captioning.training.data
    import captioning.training.train

    seen: dict = {}

    def load_training_data(data, image_size, workers, limit):
        seen["image_size"] = image_size
        return captioning.training.data.TrainingData(images=None, examples=[])

    def train(dataset, out_dir, config, **kwargs):
        seen["config"], seen["device"] = config, kwargs["device"]
        return [EpochReport(1, 1.0, 0.5, None, 10.0, True)]

    monkeypatch.setattr(captioning.training.data, "load_training_data", load_training_data)
    monkeypatch.setattr(captioning.training.train, "train", train)
    return seen


def test_train_defaults_are_the_dataclass_defaults(imgindex_main, captured_training, tmp_path):
    result = imgindex_main("train", str(tmp_path), "--out", str(tmp_path / "model"))
    assert result.code == 0, result.err
    assert captured_training == {
        "config": TrainConfig(),
        "image_size": ModelConfig.__dataclass_fields__["image_size"].default,
        "device": "cpu",
    }


def test_train_flags_reach_the_config(imgindex_main, captured_training, tmp_path):
    result = imgindex_main(
        *("train", str(tmp_path), "--out", str(tmp_path / "model"), "--epochs", "6"),
        *("--batch-size", "8", "--lr", "0.01", "--seed", "3", "--patience", "2"),
        *("--alpha-c", "0.5", "--concept-weight", "0", "--cpu-heap", "system"),
        *("--stop-after", "5", "--image-size", "128"),
    )
    assert result.code == 0, result.err
    assert captured_training["image_size"] == 128
    assert captured_training["config"] == TrainConfig(
        epochs=6,
        batch_size=8,
        learning_rate=0.01,
        seed=3,
        patience=2,
        alpha_c=0.5,
        concept_weight=0.0,
        cpu_heap="system",
        stop_after=5,
    )


def test_no_cli_function_is_longer_than_60_lines():
    cli = Path(__file__).parents[3] / "pipelines" / "cli"
    long = [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(cli.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def test_the_beam_args_help_recommends_options_of_the_local_runner():
    from apache_beam.options.pipeline_options import DirectOptions

    from pipelines.cli.job_commands import BEAM_ARGS_HELP
    from pipelines.options import LOCAL_RUNNER, pipeline_options

    assert "DirectRunner" not in BEAM_ARGS_HELP
    local = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert " ".join(local) in BEAM_ARGS_HELP
    options = pipeline_options(local)
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.get_all_options()["runner"] == LOCAL_RUNNER
