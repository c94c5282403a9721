"""The source's own fields (url, alt_text, metadata) from caption rows to the mapping and the hits,
and indexes and caption runs from before those fields still working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.assemble import CaptionText, EmbeddedCaption, assemble_index, caption_text
from indexing.build import MAPPING_FILE, MAPPING_SCHEMA, IndexEntry, write_index
from indexing.embed import TextEmbedder
from indexing.search import open_index
from tests.indexing._helpers import make_manifest, random_unit_vectors

ROW = {
    "key": "000000002",
    "source": "file:///img2dataset/00000.tar",
    "member": "000000002.jpg",
    "caption": "a red boat on the sea",
}
SOURCE = {
    "url": "https://example.com/b/boat.png",
    "alt_text": "Red boat, at sea",
    "metadata": '{"original_height":320,"original_width":480,"status":"success"}',
}


def test_caption_text_reads_the_source_columns_and_tolerates_their_absence() -> None:
    assert caption_text({**ROW, **SOURCE}) == CaptionText(**ROW, **SOURCE)
    # A caption run from before the columns: the row has none of them.
    old = caption_text(ROW)
    assert isinstance(old, CaptionText)
    assert (old.url, old.alt_text, old.metadata) == (None, None, None)


def test_assemble_index_carries_the_source_fields_into_entries() -> None:
    texts = [
        CaptionText(f"k{i}", f"caption {i}", "s", f"{i}.jpg", url=f"https://x/{i}.jpg")
        for i in range(3)
    ]
    vectors = random_unit_vectors(3, 4, seed=0)
    assembled = assemble_index(
        [EmbeddedCaption(t, v) for t, v in zip(reversed(texts), vectors, strict=True)], 4
    )
    assert [(e.key, e.url, e.alt_text) for e in assembled.entries] == [
        (f"k{i}", f"https://x/{i}.jpg", None) for i in range(3)
    ]


def test_mapping_and_hits_carry_url_alt_text_and_metadata(
    tmp_path: Path, tiny_embedder: TextEmbedder
) -> None:
    captions = ["a red boat on the sea", "a cat on a mat"]
    entries = [
        IndexEntry(0, ROW["key"], captions[0], ROW["source"], ROW["member"], **SOURCE),
        IndexEntry(1, "k1", captions[1], "file:///local/cats", "cat.jpg"),  # a folder: no url
    ]
    write_index(
        tmp_path / "idx",
        entries,
        tiny_embedder.embed(captions),
        make_manifest(tiny_embedder, 2),
    )

    mapping = pq.read_table(tmp_path / "idx" / MAPPING_FILE)
    hits = {h.key: h for h in open_index(tmp_path / "idx", tiny_embedder).search("boat", k=2)}

    assert mapping.schema.equals(MAPPING_SCHEMA)
    assert mapping.column("url").to_pylist() == [SOURCE["url"], None]
    boat = hits[ROW["key"]]
    assert (boat.url, boat.alt_text, boat.metadata) == tuple(SOURCE.values())
    assert (hits["k1"].url, hits["k1"].alt_text, hits["k1"].metadata) == (None, None, None)


def test_an_index_written_before_the_source_columns_still_opens(
    tmp_path: Path, tiny_embedder: TextEmbedder
) -> None:
    captions = ["one", "two", "three"]
    entries = [IndexEntry(i, f"k{i}", c, "s.tar", f"{i}.jpg") for i, c in enumerate(captions)]
    write_index(
        tmp_path / "idx", entries, tiny_embedder.embed(captions), make_manifest(tiny_embedder, 3)
    )
    # The mapping as an older imgindex wrote it: id, key, caption, source, member only.
    path = tmp_path / "idx" / MAPPING_FILE
    old_columns = ["id", "key", "caption", "source", "member"]
    old_schema = pa.schema([MAPPING_SCHEMA.field(name) for name in old_columns])
    pq.write_table(pq.read_table(path, columns=old_columns).cast(old_schema), path)

    index = open_index(tmp_path / "idx", tiny_embedder)
    hits = index.search_vectors(tiny_embedder.embed(["two"]), k=3)[0]

    assert sorted(h.key for h in hits) == ["k0", "k1", "k2"]
    assert {(h.url, h.alt_text, h.metadata) for h in hits} == {(None, None, None)}
    assert np.isclose(hits[0].score, 1.0, atol=1e-5) and hits[0].key == "k1"
