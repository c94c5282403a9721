"""indexing.assemble: caption rows -> entries with stable ids and their vectors, without Beam."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from indexing.assemble import (
    CaptionText,
    EmbeddedCaption,
    assemble_index,
    caption_text,
    write_embedded_index,
)
from indexing.embed import TextEmbedder, resolve_embedder
from indexing.search import open_index
from tests.indexing._helpers import TINY_HIDDEN


def test_caption_text_reasons() -> None:
    row = {
        "key": "img0000",
        "source": "file:///archive/shard-00000.tar",
        "member": "0000.png",
        "caption": "a red circle",
    }
    assert caption_text(row) == CaptionText(
        "img0000", "a red circle", "file:///archive/shard-00000.tar", "0000.png"
    )
    assert caption_text({**row, "caption": None}) == "empty_caption"
    assert caption_text({**row, "caption": " \n"}) == "empty_caption"
    assert caption_text({**row, "key": None}) == "missing_key"
    assert caption_text({**row, "member": None}) == "missing_member"


def embedded_items(n: int, d: int = 4) -> list[EmbeddedCaption]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, d)).astype(np.float32)  # (N, D)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        EmbeddedCaption(CaptionText(f"k{i}", f"caption {i}", f"s{i % 2}", f"{i:03d}.png"), v)
        for i, v in enumerate(vectors)
    ]


def test_assemble_index_ids_do_not_depend_on_arrival_order() -> None:
    items = embedded_items(20)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    first, second = assemble_index(items, 4), assemble_index(shuffled, 4)
    assert first.entries == second.entries
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert [e.id for e in first.entries] == list(range(20))
    order = [(e.source, e.member, e.key) for e in first.entries]
    assert order == sorted(order)
    by_key = {item.caption.key: item.vector for item in items}
    for entry, vector in zip(first.entries, first.vectors, strict=True):
        np.testing.assert_array_equal(vector, by_key[entry.key])


def test_assemble_index_drops_repeated_rows_and_handles_empty() -> None:
    items = embedded_items(5)
    assembled = assemble_index([*items, items[2]], 4)
    assert len(assembled.entries) == 5 and assembled.duplicates == 1
    empty = assemble_index([], 4)
    assert empty.entries == [] and empty.vectors.shape == (0, 4)


def test_all_captions_empty_gives_an_empty_index(
    tmp_path: Path, tiny_model_dir: Path, tiny_embedder: TextEmbedder
) -> None:
    resolved = resolve_embedder(str(tiny_model_dir))
    manifest, duplicates = write_embedded_index(
        [], str(tmp_path / "index"), resolved, ["a"], False, "0+test"
    )
    assert (manifest.count, manifest.dimension, duplicates) == (0, TINY_HIDDEN, 0)
    assert open_index(tmp_path / "index", embedder=tiny_embedder).search("a red circle") == []
