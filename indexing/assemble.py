"""Caption rows -> an index's entries and vectors: the pure steps between reading a captions table
and writing an index directory (ids, order, duplicates), with no Beam and no model loading but
the one fallback that asks the embedder for its width."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexing.ann import AnnConfig
from indexing.build import MANIFEST_FILE, IndexEntry, Manifest, write_index
from indexing.embed import ResolvedEmbedder, TextEmbedder, resolve_embedder

logger = logging.getLogger(__name__)

# The columns of a captions table (pipelines' CAPTION_SCHEMA) that an index needs.
INDEX_COLUMNS = ("key", "caption", "source", "member")
# Columns it carries along when the table has them (a caption run before them has not): the
# source's own fields, then the image's digest and size and the caption's provenance (filters and
# display in the search service). All are strings but INTEGER_COLUMNS.
SOURCE_COLUMNS = ("url", "alt_text", "metadata")
DETAIL_COLUMNS = ("sha256", "width", "height", "model", "model_version", "captioned_at")
INTEGER_COLUMNS = ("width", "height")


@dataclass(frozen=True, slots=True)
class CaptionText:
    """One caption row on its way to the embedder (an IndexEntry without its id)."""

    key: str
    caption: str
    source: str
    member: str
    url: str | None = None
    alt_text: str | None = None
    metadata: str | None = None  # JSON object
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_version: str | None = None
    captioned_at: str | None = None  # ISO-8601 UTC


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: ndarray == is elementwise
class EmbeddedCaption:
    """A caption and its unit-norm float32 vector, shape (D,)."""

    caption: CaptionText
    vector: np.ndarray


def caption_text(row: Mapping[str, Any]) -> CaptionText | str:
    """Turn a caption Parquet row into a CaptionText, or the reason it cannot be indexed.

    SOURCE_COLUMNS and DETAIL_COLUMNS the row lacks (a caption run written before them) or holds
    as null are None.

    Returns:
        The CaptionText, or a short stable reason: "missing_<column>" for a null key, source or
        member, "empty_caption" for a null or blank caption.
    """
    for name in ("key", "source", "member"):
        if row.get(name) is None:
            return f"missing_{name}"
    caption = row.get("caption")
    if caption is None or not caption.strip():
        return "empty_caption"
    return CaptionText(
        key=row["key"],
        caption=caption,
        source=row["source"],
        member=row["member"],
        **{name: row.get(name) for name in (*SOURCE_COLUMNS, *DETAIL_COLUMNS)},
    )


@dataclass(frozen=True, slots=True)
class AssembledIndex:
    """Entries with ids 0..N-1 in (source, member, key) order and their vectors (N, D)."""

    entries: list[IndexEntry]
    vectors: np.ndarray
    duplicates: int  # rows dropped because their (source, member, key) was already indexed


def assemble_index(embedded: Iterable[EmbeddedCaption], dimension: int) -> AssembledIndex:
    """Order embedded captions deterministically and give them ids.

    Sorting on (source, member, key, caption) makes ids independent of the order in which the
    runner delivers elements, so a rerun over the same captions gives the same index. Of rows
    that share (source, member, key) only the first in that order is kept.

    Args:
        embedded: the embedded captions, in any order.
        dimension: vector width D, used for the shape of an empty result.
    """
    ordered = sorted(
        embedded,
        key=lambda e: (e.caption.source, e.caption.member, e.caption.key, e.caption.caption),
    )
    kept: list[EmbeddedCaption] = []
    for item in ordered:
        last = kept[-1].caption if kept else None
        here = item.caption
        if last is not None and (last.source, last.member, last.key) == (
            here.source,
            here.member,
            here.key,
        ):
            continue
        kept.append(item)
    carried = (*INDEX_COLUMNS, *SOURCE_COLUMNS, *DETAIL_COLUMNS)
    entries = [
        IndexEntry(id=i, **{name: getattr(e.caption, name) for name in carried})
        for i, e in enumerate(kept)
    ]
    if kept:
        vectors = np.stack([e.vector for e in kept]).astype(np.float32, copy=False)  # N x (D,)
    else:
        vectors = np.zeros((0, dimension), dtype=np.float32)  # (0, D)
    return AssembledIndex(entries, vectors, duplicates=len(ordered) - len(kept))


def write_embedded_index(
    embedded: Iterable[EmbeddedCaption],
    out_dir: str,
    embedder: ResolvedEmbedder,
    caption_files: Sequence[str],
    overwrite: bool,
    imgindex_version: str,
    ann: AnnConfig | None = None,
) -> tuple[Manifest, int]:
    """Assemble embedded captions into an index and write it with write_index.

    `imgindex_version` is recorded in the manifest (the caller knows the installed version);
    `ann` chooses and tunes the index type (None: exact Flat).

    Returns:
        The written manifest (with the index type, parameters and measured recall) and the
        number of duplicate rows dropped.
    """
    embedded = list(embedded)
    if embedded:
        dimension = int(embedded[0].vector.shape[0])
    else:
        # No vector to read the width from (every caption was empty): ask the model.
        logger.warning("no captions to index: writing an empty index to %s", out_dir)
        dimension = TextEmbedder(resolve_embedder(embedder.name)).dimension
    assembled = assemble_index(embedded, dimension)
    if assembled.duplicates:
        logger.warning(
            "dropped %d caption rows whose (source, member, key) repeats", assembled.duplicates
        )
    manifest = Manifest(
        embedder_name=embedder.name,
        embedder_sha256=embedder.sha256,
        dimension=dimension,
        count=len(assembled.entries),
        caption_files=tuple(caption_files),
        imgindex_version=imgindex_version,
    )
    out = write_index(
        out_dir, assembled.entries, assembled.vectors, manifest, overwrite=overwrite, ann=ann
    )
    written = Manifest.from_json((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    return written, assembled.duplicates
