"""Search service fixtures: a real tar archive, an index over its true captions, apps serving it.

Fixtures (for the service tests and the page tests):

* ``service_data`` (session): ServiceData: the archive, a collection whose CURRENT is v000001,
  a bare index directory over the same entries, a known key, a caption word many entries share.
  Session-wide: do not change it; ``fresh_collection`` gives a copy a test may publish into.
* ``make_app`` (function): ``make_app(path=None, **ServiceConfig fields) -> FastAPI`` serving the
  collection (default) with captioning's archive reader and the session's tiny embedder.
* ``page_app`` / ``page_app_with_token`` (module): apps over the collection, without and with
  the token PAGE_TOKEN; serve them with uvicorn (tests/indexing/service/browser.py: serve).
* ``page_query`` (session): a one-word query with many hits in every mode.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from captioning.archives.fetch import MemberReader
from captioning.archives.listing import iter_shard, list_shards
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from indexing.build import IndexEntry, Manifest, write_index
from indexing.catalog import CATALOG_SCHEMA, SHARDS_SCHEMA
from indexing.collection import CATALOG_FILE, INDEX_DIR, SHARDS_FILE, Collection
from indexing.embed import TextEmbedder
from indexing.retrieval import Retriever
from indexing.service.app import create_app
from indexing.service.config import ServiceConfig

IMAGES = 48
SHARDS = 2
SEED = 2027
MODEL, MODEL_VERSION = "world-truth", "synthetic-1"
PAGE_TOKEN = "s3cret-token_1"
_STOPWORDS = {"a", "an", "the", "of", "and", "on", "in", "to", "is", "are", "there", "with"}


@dataclass(frozen=True)
class ServiceData:
    """What the session fixture built (see the module docstring)."""

    archive: Path
    collection: Path
    index_dir: Path
    rows: tuple[dict[str, Any], ...]  # catalog rows, in id order
    vectors: np.ndarray  # (N, D) caption vectors, row i for rows[i]
    key: str
    word: str

    @property
    def keys(self) -> list[str]:
        return [row["key"] for row in self.rows]


def archive_rows(archive: Path) -> list[dict[str, Any]]:
    """Catalog rows (CATALOG_SCHEMA) for every image of the archive, captioned with the world's
    own true captions (the .txt sidecars), sorted by key."""
    rows = []
    for shard in list_shards(str(archive)):
        for entry in iter_shard(shard):
            assert entry.data is not None and entry.caption
            width, height = Image.open(io.BytesIO(entry.data)).size
            n = len(rows)
            rows.append(
                {
                    "key": entry.key,
                    "source": entry.source,
                    "member": entry.member,
                    "sha256": hashlib.sha256(entry.data).hexdigest(),
                    "size": len(entry.data),
                    "width": width,
                    "height": height,
                    "format": entry.member.rsplit(".", 1)[-1],
                    "status": "captioned",
                    "caption": entry.caption,
                    "candidates": [entry.caption],
                    "model": MODEL,
                    "model_version": MODEL_VERSION,
                    "run_id": "fixture",
                    "captioned_at": f"2026-01-{1 + n % 28:02d}T12:00:00+00:00",
                    "stage": None,
                    "error_type": None,
                    "message": None,
                    "url": f"https://example.invalid/{entry.key}.jpg",
                    "alt_text": entry.caption,
                    "metadata": '{"origin": "synthetic"}',
                }
            )
    return sorted(rows, key=lambda row: row["key"])


def index_entries(rows: list[dict[str, Any]]) -> list[IndexEntry]:
    fields = ("key", "caption", "source", "member", "url", "alt_text", "metadata", "sha256")
    more = ("width", "height", "model", "model_version", "captioned_at")
    return [
        IndexEntry(id=i, **{name: row[name] for name in fields + more})
        for i, row in enumerate(rows)
    ]


def write_index_dir(
    out: Path | str, rows: list[dict[str, Any]], vectors: np.ndarray, embedder: TextEmbedder
) -> None:
    manifest = Manifest(
        embedder_name=embedder.name,
        embedder_sha256=embedder.sha256,
        dimension=embedder.dimension,
        count=len(rows),
        caption_files=("fixture",),
        imgindex_version="0.1.0",
    )
    write_index(out, index_entries(rows), vectors, manifest)


def publish_version(
    root: Path, rows: list[dict[str, Any]], vectors: np.ndarray, embedder: TextEmbedder
) -> str:
    """Publish ``rows`` as the next version of the collection at ``root`` (created if new);
    CURRENT moves to it. Returns its name."""
    col = Collection.open(str(root), create=True)
    name = col.next_version()
    tmp = col.new_version_dir(name)
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA), f"{tmp}/{CATALOG_FILE}")
    sources = sorted({row["source"] for row in rows})
    shards = [{"source": s, "kind": "tar", "fingerprint": "fixture"} for s in sources]
    pq.write_table(pa.Table.from_pylist(shards, schema=SHARDS_SCHEMA), f"{tmp}/{SHARDS_FILE}")
    write_index_dir(f"{tmp}/{INDEX_DIR}", rows, vectors, embedder)
    counts = {"catalog": len(rows), "indexed": len(rows)}
    col.publish(tmp, name, {"run_id": f"fixture-{name}", "counts": counts})
    return name


def common_word(captions: list[str]) -> str:
    """The content word the most captions hold (ties: alphabetical)."""
    counts = Counter(
        word for caption in captions for word in set(caption.lower().split()) - _STOPWORDS
    )
    return min(counts, key=lambda word: (-counts[word], word))


@pytest.fixture(scope="session")
def service_data(
    tmp_path_factory: pytest.TempPathFactory, tiny_embedder: TextEmbedder
) -> ServiceData:
    base = tmp_path_factory.mktemp("service")
    archive = base / "archive"
    write_archive(
        str(archive), ArchiveConfig(images=IMAGES, shards=SHARDS, seed=SEED, format="tar")
    )
    rows = archive_rows(archive)
    vectors = tiny_embedder.embed([row["caption"] for row in rows])  # (N, D)
    publish_version(base / "collection", rows, vectors, tiny_embedder)
    write_index_dir(base / "index", rows, vectors, tiny_embedder)
    return ServiceData(
        archive=archive,
        collection=base / "collection",
        index_dir=base / "index",
        rows=tuple(rows),
        vectors=vectors,
        key=rows[0]["key"],
        word=common_word([row["caption"] for row in rows]),
    )


@pytest.fixture
def fresh_collection(service_data: ServiceData, tmp_path: Path) -> Path:
    """A copy of the session's collection that a test may publish into or roll back."""
    return Path(shutil.copytree(service_data.collection, tmp_path / "collection"))


@pytest.fixture(scope="session")
def open_retriever(tiny_embedder: TextEmbedder) -> Callable[[str], Retriever]:
    """Retriever.open with the session's embedder (so no app loads the model again)."""
    return lambda path: Retriever.open(path, embedder=tiny_embedder)


def build_app(
    data: ServiceData,
    opener: Callable[[str], Retriever],
    path: Path | str | None = None,
    **overrides: Any,
) -> FastAPI:
    config = ServiceConfig(path=str(path or data.collection), **overrides)
    return create_app(config, read_image=MemberReader().read, open_retriever=opener)


@pytest.fixture
def make_app(
    service_data: ServiceData, open_retriever: Callable[[str], Retriever]
) -> Callable[..., FastAPI]:
    def make(path: Path | str | None = None, **overrides: Any) -> FastAPI:
        return build_app(service_data, open_retriever, path, **overrides)

    return make


@contextmanager
def running(app: FastAPI, timeout_s: float = 60.0, **client_args: Any) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan running, once /readyz says a version is loaded."""
    with TestClient(app, **client_args) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s, "the index loads")
        yield client


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def page_app(service_data: ServiceData, open_retriever: Callable[[str], Retriever]) -> FastAPI:
    return build_app(service_data, open_retriever)


@pytest.fixture(scope="module")
def page_app_with_token(
    service_data: ServiceData, open_retriever: Callable[[str], Retriever]
) -> FastAPI:
    return build_app(service_data, open_retriever, token=PAGE_TOKEN)


@pytest.fixture(scope="session")
def page_query(service_data: ServiceData) -> str:
    return service_data.word
