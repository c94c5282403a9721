"""load_predictions and load_references: the files the CLI's evaluate reads, and their errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.archives.synthetic import world
from captioning.evaluation.metrics import attribute_accuracy
from captioning.evaluation.references import load_predictions, load_references


def write_jsonl(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_load_predictions_jsonl(tmp_path):
    rows = [
        {"key": "001", "caption": "a red circle"},
        "",
        {"path": "gs://bucket/shard-0/002.jpg", "caption": "two blue squares"},
    ]
    assert load_predictions(write_jsonl(tmp_path / "p.jsonl", rows)) == {
        "001": "a red circle",
        "002": "two blue squares",
    }


def test_load_predictions_parquet_and_directory(tmp_path):
    table = pa.table({"key": ["001", "002"], "caption": ["a", "b"], "model": ["m", "m"]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    assert load_predictions(str(tmp_path / "part-0.parquet")) == {"001": "a", "002": "b"}

    (tmp_path / "more").mkdir()
    write_jsonl(tmp_path / "more" / "p.jsonl", [{"key": "003", "caption": "c"}])
    assert load_predictions(str(tmp_path)) == {"001": "a", "002": "b", "003": "c"}


def assert_one_line_error(match: str, fn, *args) -> str:
    with pytest.raises(ValueError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_predictions_errors(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"key": "a", "caption": "x"}, "", "{not json"])
    message = assert_one_line_error("invalid JSON at line 3", load_predictions, bad)
    assert "bad.jsonl" in message

    nokey = write_jsonl(tmp_path / "nokey.jsonl", [{"caption": "x"}])
    assert_one_line_error("line 1 has neither", load_predictions, nokey)

    dup = write_jsonl(tmp_path / "dup.jsonl", [{"key": "a", "caption": "x"}] * 2)
    assert_one_line_error("more than one prediction", load_predictions, dup)

    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    assert_one_line_error("no captions found", load_predictions, empty)

    pq.write_table(pa.table({"key": ["a"], "text": ["x"]}), tmp_path / "cols.parquet")
    message = assert_one_line_error(
        r"missing column\(s\) caption", load_predictions, str(tmp_path / "cols.parquet")
    )
    assert "cols.parquet" in message and "has: key, text" in message

    with pytest.raises(FileNotFoundError):
        load_predictions(str(tmp_path / "absent.jsonl"))


def test_load_references_list_form(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"001": ["a red circle", "a big red circle"]}))
    refs, truths = load_references(str(path))
    assert refs == {"001": ["a red circle", "a big red circle"]}
    assert truths is None


def test_load_references_object_form(tmp_path):
    path = tmp_path / "refs.json"
    entry = {
        "references": ["two green triangles"],
        "objects": [
            {"shape": "triangle", "color": "green", "size": "small"},
            {"shape": "triangle", "color": "green", "size": "small"},
        ],
    }
    path.write_text(json.dumps({"001": entry}))
    refs, truths = load_references(str(path))
    assert refs == {"001": ["two green triangles"]}
    assert truths == {"001": [("green", "triangle"), ("green", "triangle")]}


def test_load_references_sidecar_directory_from_the_world(tmp_path):
    images = [world.generate_image(seed=7, index=i) for i in range(2)]
    (tmp_path / "sub").mkdir()
    for img, folder in zip(images, (tmp_path, tmp_path / "sub"), strict=True):
        (folder / f"{img.key}.json").write_text(json.dumps(img.annotation()))
    refs, truths = load_references(str(tmp_path))
    assert refs == {img.key: list(img.references) for img in images}
    assert truths is not None
    # The canonical caption names exactly the scene's objects.
    captions = {img.key: img.caption for img in images}
    assert attribute_accuracy(captions, truths) == 1.0


def test_load_references_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "001": ["a"],\n  "002": [oops]\n}')
    message = assert_one_line_error("invalid JSON at line 3", load_references, str(bad))
    assert "bad.json" in message

    no_caps = tmp_path / "nocaps.json"
    no_caps.write_text(json.dumps({"001": []}))
    assert_one_line_error("no captions found", load_references, str(no_caps))

    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"001": ["a"], "002": {"references": ["b"], "objects": []}}))
    assert_one_line_error("1 entries have 'objects' and 1 do not", load_references, str(mixed))

    (tmp_path / "emptydir").mkdir()
    assert_one_line_error("no captions found", load_references, str(tmp_path / "emptydir"))
