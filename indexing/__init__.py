"""Caption text -> searchable FAISS index: embed.py (text -> vectors), assemble.py (rows -> entries
with ids), build.py (-> index dir), search.py (index dir + query -> hits). Pure numpy, FAISS and
sentence-transformers; never imports Beam.

The API people script against is exported here (imported lazily: FAISS and torch load only when
used):

    from indexing import open_index
    for hit in open_index("out/index").search("a red circle left of a blue square", k=5):
        print(hit.rank, hit.score, hit.key, hit.caption, hit.source, hit.member)

    from indexing import Retriever, SearchFilter   # hybrid (vector + BM25) search with filters
    hits = Retriever.open("out/index").query("red circle", k=10, filters=SearchFilter(min_width=64))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexing.embed import TextEmbedder
    from indexing.errors import IndexingError
    from indexing.filters import QueryError, SearchFilter
    from indexing.retrieval import RankedHit, Retriever
    from indexing.search import SearchHit, open_index

_EXPORTS = {
    "IndexingError": "indexing.errors",
    "QueryError": "indexing.filters",
    "RankedHit": "indexing.retrieval",
    "Retriever": "indexing.retrieval",
    "SearchFilter": "indexing.filters",
    "SearchHit": "indexing.search",
    "TextEmbedder": "indexing.embed",
    "open_index": "indexing.search",
}
__all__ = [
    "IndexingError",
    "QueryError",
    "RankedHit",
    "Retriever",
    "SearchFilter",
    "SearchHit",
    "TextEmbedder",
    "open_index",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'indexing' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
