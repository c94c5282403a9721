"""The caption job's steps, without Beam: decode, caption with retry, the broken-model watch, rows.

Each runs on plain values here: a few encoded images made in the test and fake captioners.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any

import pytest
from PIL import Image

from captioning.api import CaptionResult
from captioning.archives.records import ShardEntry
from captioning.images.decode import DecodeConfig
from captioning.images.device_decode import EncodedImage
from captioning.records import CaptionRow, FailureRow, ImageInput
from captioning.steps import (
    BrokenModelWatch,
    CaptionFailure,
    caption_batch,
    decode_entry,
    read_failure,
    result_row,
)

CONFIG = DecodeConfig(draft_size=None)


def encoded(fmt: str, size: tuple[int, int] = (12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 10)).save(buf, format=fmt)
    return buf.getvalue()


def entry(data: bytes | None, **kw: Any) -> ShardEntry:
    return ShardEntry("k", "file:///s.tar", "k.img", data, None, None, **kw)


def preprocess(image: Image.Image) -> tuple[str, tuple[int, int]]:
    return ("pixels", image.size)


# --------------------------------------------------------------------------- read and decode


def test_decode_entry_gives_the_model_input_and_the_provenance():
    data = encoded("PNG")
    x = decode_entry(entry(data), CONFIG, "run", preprocess)
    assert x == ImageInput(
        "k",
        "file:///s.tar",
        "k.img",
        hashlib.sha256(data).hexdigest(),
        12,
        8,
        "PNG",
        ("pixels", (12, 8)),
    )


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"not an image at all", "unidentified")])
def test_an_undecodable_entry_is_a_decode_failure_row(data, reason):
    row = decode_entry(entry(data), CONFIG, "run", preprocess)
    assert isinstance(row, FailureRow)
    assert (row.key, row.member, row.stage, row.error_type, row.run_id) == (
        "k",
        "k.img",
        "decode",
        reason,
        "run",
    )
    assert row.message.strip() and "\n" not in row.message


def test_pass_jpeg_sends_a_plain_jpegs_bytes_on_and_decodes_the_rest():
    jpeg, png = encoded("JPEG"), encoded("PNG")
    x = decode_entry(entry(jpeg), CONFIG, "run", preprocess, pass_jpeg=True)
    assert isinstance(x, ImageInput)
    assert (x.width, x.height, x.format, x.inputs) == (12, 8, "JPEG", EncodedImage(jpeg))
    y = decode_entry(entry(png), CONFIG, "run", preprocess, pass_jpeg=True)
    assert isinstance(y, ImageInput) and y.inputs == ("pixels", (12, 8))
    z = decode_entry(entry(jpeg), CONFIG, "run", preprocess)  # without pass_jpeg: decoded here
    assert isinstance(z, ImageInput) and z.inputs == ("pixels", (12, 8))


def test_pass_jpeg_still_refuses_an_oversized_jpeg_by_its_header():
    row = decode_entry(
        entry(encoded("JPEG", (100, 100))), DecodeConfig(max_pixels=50), "run", preprocess, True
    )
    assert isinstance(row, FailureRow) and row.stage == "decode"


def test_read_failure_keeps_the_readers_reason_and_message():
    assert read_failure(entry(None, error="corrupt_tar", message="bad block"), "r") == FailureRow(
        "k", "file:///s.tar", "k.img", "read", "corrupt_tar", "bad block", "r"
    )
    assert read_failure(entry(None), "r").error_type == "read_error"


IMG2DATASET_META = {
    "url": "https://example.com/cat.jpg",
    "caption": "A cat on a mat",
    "key": "k",
    "status": "success",
    "error_message": None,
    "original_width": 640,
    "original_height": 480,
}
SOURCE = ("https://example.com/cat.jpg", "A cat on a mat")


def test_source_fields_ride_from_the_entry_to_the_input_and_its_rows():
    data = encoded("JPEG")
    source = ShardEntry("k", "file:///s.tar", "k.jpg", data, "A cat on a mat", IMG2DATASET_META)
    for pass_jpeg in (False, True):
        x = decode_entry(source, CONFIG, "run", preprocess, pass_jpeg=pass_jpeg)
        assert isinstance(x, ImageInput)
        assert (x.url, x.alt_text) == SOURCE
        assert x.metadata == ('{"original_height":480,"original_width":640,"status":"success"}')
        row = result_row(x, OK, "r", "tiny", "t1", "T")
        assert isinstance(row, CaptionRow)
        assert (row.url, row.alt_text, row.metadata) == (*SOURCE, x.metadata)
        assert row.caption == OK.caption  # the model's caption; the source's is alt_text
        failed = result_row(x, CaptionFailure("RuntimeError", "boom"), "r", "tiny", "t1")
        assert (failed.url, failed.alt_text, failed.metadata) == (*SOURCE, x.metadata)
    broken = decode_entry(
        ShardEntry("k", "s", "m", b"", None, IMG2DATASET_META), CONFIG, "run", preprocess
    )
    assert isinstance(broken, FailureRow) and (broken.url, broken.alt_text) == SOURCE


def test_a_sample_img2dataset_failed_is_a_read_failure_with_its_status_and_source():
    meta = {**IMG2DATASET_META, "status": "failed_to_download", "error_message": "HTTP 404"}
    failed = ShardEntry(
        "k",
        "file:///00000.parquet",
        "row 3",
        None,
        "A cat on a mat",
        meta,
        error="failed_to_download",
        message="HTTP 404",
        stage="source",
    )
    row = read_failure(failed, "r")
    assert (row.stage, row.error_type, row.message) == ("source", "failed_to_download", "HTTP 404")
    assert (row.url, row.alt_text) == SOURCE
    assert row.metadata is not None and '"error_message":"HTTP 404"' in row.metadata


# --------------------------------------------------------------------------- caption


class FakeCaptioner:
    """Captions str inputs; any batch holding "bad" raises, as one unrunnable image would."""

    name, version = "fake", "0"

    def __init__(self, error: Exception | None = None):
        self.calls: list[list[Any]] = []
        self._error = error

    def caption(self, inputs: Sequence[Any]) -> list[CaptionResult]:
        self.calls.append(list(inputs))
        if self._error is not None:
            raise self._error
        if "bad" in inputs:
            raise ValueError("cannot run\n  on this input")
        return [CaptionResult(f"seen {x}", (f"seen {x}",)) for x in inputs]

    def preprocess_encoded(self, datas: list[bytes]) -> list[Any]:
        if b"poison" in datas:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [d.decode() for d in datas]


def test_a_batch_is_captioned_in_one_call():
    model = FakeCaptioner()
    out = caption_batch(model, ["a", "b"])  # type: ignore[arg-type]
    assert [r.caption for r in out if isinstance(r, CaptionResult)] == ["seen a", "seen b"]
    assert model.calls == [["a", "b"]]


def test_one_bad_image_costs_one_failure_not_the_batch():
    model = FakeCaptioner()
    out = caption_batch(model, ["a", "bad", "b"])  # type: ignore[arg-type]
    assert out[0] == CaptionResult("seen a", ("seen a",))
    assert out[1] == CaptionFailure("ValueError", "cannot run on this input")  # one line
    assert out[2] == CaptionResult("seen b", ("seen b",))
    assert model.calls == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]


def test_a_batch_that_always_fails_gives_one_failure_per_image():
    model = FakeCaptioner(RuntimeError("CUDA out of memory"))
    out = caption_batch(model, ["a", "b", "c"])  # type: ignore[arg-type]
    assert out == [CaptionFailure("RuntimeError", "CUDA out of memory")] * 3
    assert len(model.calls) == 4  # the batch, then each image once
    assert caption_batch(model, []) == []  # type: ignore[arg-type]


def test_encoded_images_are_decoded_on_the_device_and_a_bad_file_fails_alone():
    model = FakeCaptioner()
    inputs = [EncodedImage(b"x"), "a", EncodedImage(b"poison"), EncodedImage(b"y")]
    out = caption_batch(model, inputs)  # type: ignore[arg-type]
    assert [r.caption if isinstance(r, CaptionResult) else r for r in out] == [
        "seen x",
        "seen a",
        CaptionFailure(
            "RuntimeError", "CUDA error: an illegal memory access was encountered", "decode"
        ),
        "seen y",
    ]
    assert model.calls == [["x", "a", "y"]]  # the poisoned file never reaches the model


# --------------------------------------------------------------------------- the broken-model watch

OOM = CaptionFailure("RuntimeError", "CUDA out of memory")
OK = CaptionResult("a cat", ("a cat",))


def test_the_watch_fires_when_the_first_batches_all_fail_alike():
    watch = BrokenModelWatch(batches=3)
    assert watch.see([OOM, OOM]) is None
    assert watch.see([OOM]) is None
    assert watch.see([OOM, OOM, OOM]) == OOM
    assert watch.see([OOM]) is None  # once only


@pytest.mark.parametrize(
    "second",
    [
        [OOM, OK],  # one success: the model works
        [CaptionFailure("RuntimeError", "another message")] * 2,
        [CaptionFailure("corrupt", "bad pixels", stage="decode")] * 2,  # bad files, not the model
    ],
)
def test_anything_but_the_same_caption_failure_ends_the_watch(second):
    watch = BrokenModelWatch(batches=2)
    assert watch.see([OOM]) is None
    assert watch.see(second) is None
    assert watch.see([OOM]) is None and watch.see([OOM]) is None


# --------------------------------------------------------------------------- rows


def test_result_row_builds_a_caption_row_or_a_failure_row():
    x = ImageInput("k", "src", "m", "abc", 4, 3, "PNG", None)
    row = result_row(x, CaptionResult("a cat", ("a cat", "a dog")), "r", "tiny", "t1", "T")
    assert row == CaptionRow(
        "k", "src", "m", "abc", 4, 3, "PNG", "a cat", ["a cat", "a dog"], "tiny", "t1", "r", "T"
    )
    failure = CaptionFailure("corrupt", "bad pixels", stage="decode")
    assert result_row(x, failure, "r", "tiny", "t1") == FailureRow(
        "k", "src", "m", "decode", "corrupt", "bad pixels", "r"
    )
    assert isinstance(result_row(x, OK, "r", "tiny", "t1"), CaptionRow)  # stamped with now
