"""ServiceConfig validation and its JSON round trip; check_path on what PATH may be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexing.collection import Collection
from indexing.errors import IndexingError
from indexing.service.config import ServiceConfig, ServiceConfigError
from indexing.service.state import check_path


def test_the_json_round_trip_keeps_every_setting() -> None:
    config = ServiceConfig("/data/col", token="abc.DEF-123", reload_interval_s=0.5, max_k=50)
    assert ServiceConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"path": "  "}, "needs a PATH"),
        ({"token": ""}, "--token"),
        ({"token": "has space"}, "--token"),
        ({"token": "semi;colon"}, "--token"),
        ({"token": "ünïcode"}, "--token"),
        ({"max_k": 0}, "max_k"),
        ({"max_k": 5000}, "max_k"),
        ({"reload_interval_s": -1}, "reload_interval_s"),
        ({"reload_interval_s": float("nan")}, "reload_interval_s"),
        ({"batch_max": 0}, "batch_max"),
        ({"max_query_chars": True}, "max_query_chars"),
        ({"thumbnail_cache_mb": "64"}, "thumbnail_cache_mb"),
    ],
)
def test_bad_settings_say_what_to_change(overrides: dict, message: str) -> None:
    values = {"path": "/data/col", **overrides}
    with pytest.raises(ServiceConfigError, match=message) as raised:
        ServiceConfig(**values)
    assert isinstance(raised.value, IndexingError)  # the CLI prints it as one line, exit 2


@pytest.mark.parametrize(
    ("text", "message"),
    [("nope", "not JSON"), ("[1]", "JSON object"), (json.dumps({"path": "x", "bad": 1}), "bad")],
)
def test_bad_config_json_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        ServiceConfig.from_json(text)


def test_check_path_names_collections_and_index_directories(service_data) -> None:
    assert check_path(str(service_data.collection)) == "collection"
    assert check_path(str(service_data.index_dir)) == "index"


def test_check_path_refuses_what_cannot_be_served(tmp_path: Path) -> None:
    with pytest.raises(ServiceConfigError, match="does not exist"):
        check_path(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ServiceConfigError, match="is a file"):
        check_path(str(tmp_path / "file"))
    with pytest.raises(ServiceConfigError, match="neither a collection root"):
        check_path(str(tmp_path))
    Collection.open(str(tmp_path / "empty-collection"), create=True)
    with pytest.raises(ServiceConfigError, match="no published version"):
        check_path(str(tmp_path / "empty-collection"))
