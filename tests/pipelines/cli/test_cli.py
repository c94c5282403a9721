"""The `imgindex` command line: exit codes, one-line errors, outputs people and programs read."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from captioning.archives.synthetic.world import generate_image


def imgindex(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(3):
        w = generate_image(9, i)
        p = tmp_path / f"img {i} ü.{w.extension}"
        p.write_bytes(w.data)
        paths.append(p)
    return paths


def test_describe_prints_one_caption_per_image(images, tiny_checkpoint):
    proc = imgindex(
        "describe", *map(str, images), "--model", str(tiny_checkpoint), "--json", check=True
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert all(isinstance(r["caption"], str) for r in rows)


def test_describe_reports_a_bad_file_and_captions_the_rest(images, tiny_checkpoint, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    missing = tmp_path / "missing.png"
    proc = imgindex(
        "describe",
        str(images[0]),
        str(bad),
        str(missing),
        str(images[1]),
        "--model",
        str(tiny_checkpoint),
    )
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2
    assert "notes.jpg" in errors[0] and "Traceback" not in proc.stderr
    assert "missing.png" in errors[1] and "cannot read" in errors[1]


def test_describe_with_a_missing_model_is_a_clear_error(images, tmp_path):
    proc = imgindex("describe", str(images[0]), "--model", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: model directory not found")


def test_explain_draws_one_panel_per_word(images, tiny_checkpoint, tmp_path):
    out = tmp_path / "attention.png"
    proc = imgindex(
        "explain", str(images[0]), "--out", str(out), "--model", str(tiny_checkpoint), check=True
    )
    words = proc.stdout.split()
    fig = Image.open(out)
    panels = 1 + len(words)  # the image, then a panel per word
    assert fig.width == min(panels, 5) * 192
    assert fig.height == -(-panels // 5) * (192 + 22)


def test_explain_refuses_an_unreadable_image(tmp_path, tiny_checkpoint):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    proc = imgindex(
        "explain", str(bad), "--out", str(tmp_path / "x.png"), "--model", str(tiny_checkpoint)
    )
    assert proc.returncode == 2 and "empty" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("fmt", ["folder", "tar", "parquet"])
def test_sample_archive_formats(tmp_path, fmt):
    out = tmp_path / fmt
    imgindex(
        "sample-archive",
        str(out),
        "--images",
        "6",
        "--shards",
        "2",
        "--seed",
        "3",
        "--format",
        fmt,
        "--workers",
        "1",
        check=True,
    )
    if fmt == "folder":
        sidecar = json.loads((out / "000000000.json").read_text())
        assert (out / "000000000.txt").read_text() == sidecar["references"][0]
        assert len(list(out.glob("*.json"))) == 6
    elif fmt == "tar":
        assert sorted(p.name for p in out.iterdir()) == ["shard-00000.tar", "shard-00001.tar"]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.num_rows == 6
        img = Image.open(io.BytesIO(table.column("jpg")[0].as_py()))
        assert img.size == (table.column("width")[0].as_py(), table.column("height")[0].as_py())


def test_sample_archive_is_deterministic(tmp_path):
    for name in ("a", "b"):
        imgindex(
            "sample-archive",
            str(tmp_path / name),
            "--images",
            "4",
            "--seed",
            "8",
            "--workers",
            "1",
            check=True,
        )
    assert (tmp_path / "a/shard-00000.tar").read_bytes() == (
        tmp_path / "b/shard-00000.tar"
    ).read_bytes()


def test_sample_archive_bad_options(tmp_path):
    proc = imgindex("sample-archive", str(tmp_path / "x"), "--format", "zip")
    assert proc.returncode == 2 and "--format must be one of" in proc.stderr


def test_evaluate_json_keys(tmp_path):
    refs = {"a": ["a large red circle", "a big red circle"], "b": ["two green triangles"]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    preds = tmp_path / "preds.jsonl"
    preds.write_text(
        '{"key": "a", "caption": "a large red circle"}\n'
        '{"key": "b", "caption": "two blue triangles"}\n'
    )
    proc = imgindex(
        "evaluate", str(preds), "--references", str(tmp_path / "refs.json"), "--json", check=True
    )
    scores = json.loads(proc.stdout)
    assert {
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
        "attribute_accuracy",
    } <= set(scores)
    assert scores["attribute_accuracy"] is None  # no structured truth in a plain JSON list
    assert 0 < scores["BLEU-1"] <= 1


def test_train_refuses_to_overwrite_a_model(tmp_path, tiny_checkpoint):
    proc = imgindex("train", str(tmp_path), "--out", str(tiny_checkpoint))
    assert proc.returncode == 2 and "already holds a model" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["caption"], "Missing argument 'INPUT'"),
        (["search", "--bogus", "x", "y"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["describe", "x.png", "--beam-size", "many"], "Invalid value"),
    ],
)
def test_usage_errors_are_messages_not_tracebacks(args, message):
    proc = imgindex(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "--device: expected cpu, cuda or auto"),
        (["--encoder-channels", "32,wide"], "--encoder-channels: expected integers"),
        (["--encoder-channels", "32,0"], "--encoder-channels: expected positive integers"),
        (["--encoder-channels", "32,64", "--resume"], "keeps the architecture"),
        (["--cpu-heap", "free"], "--cpu-heap must be keep or system, got 'free'"),
    ],
)
def test_train_rejects_bad_device_and_architecture(tmp_path, args, message):
    proc = imgindex("train", str(tmp_path), "--out", str(tmp_path / "m"), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sample_archive_with_one_image_format(tmp_path):
    out = tmp_path / "jpegs"
    imgindex(
        "sample-archive",
        str(out),
        "--images",
        "6",
        "--format",
        "folder",
        "--image-format",
        "jpg",
        check=True,
    )
    assert (
        sorted(p.suffix for p in out.iterdir() if p.suffix not in (".json", ".txt")) == [".jpg"] * 6
    )
    proc = imgindex("sample-archive", str(tmp_path / "x"), "--image-format", "gif")
    assert proc.returncode == 2 and "--image-format must be one of jpg, png, webp" in proc.stderr


@pytest.mark.parametrize("command", ["caption", "run"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--model-copies", "0"], "--model-copies must be at least 1, got 0"),
        (["--decode-on", "gpu"], "--decode-on must be one of auto, cpu, device"),
        (["--decode-on", "device"], "cannot decode on its device"),
        (["--cpu-heap", "free"], "--cpu-heap must be keep or system, got 'free'"),
    ],
)
def test_caption_and_run_share_the_job_options(images, tmp_path, command, args, message):
    out = tmp_path / "out"
    proc = imgindex(command, str(images[0].parent), "--out", str(out), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
