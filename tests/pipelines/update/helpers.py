"""Building an UpdateConfig for the tiny models, and reading a collection back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from captioning.api import CaptionerOptions
from indexing.collection import CATALOG_FILE, VERSIONS_DIR, Collection
from pipelines.caption.config import CaptionConfig
from pipelines.update.config import UpdateConfig
from pipelines.update.run import UpdateSummary, run_update

OPTIONS = CaptionerOptions(device="cpu", beam_size=1, max_length=6)


def config(archive: Path, root: Path, model: Path, embedder: Path, **kw: Any) -> UpdateConfig:
    caption_kw = {k: kw.pop(k) for k in ("max_failure_rate",) if k in kw}
    caption = CaptionConfig(input=str(archive), out=str(root), model=str(model),
                            captioner=OPTIONS, batch_size=8, **caption_kw)  # fmt: skip
    return UpdateConfig(caption=caption, collection=str(root), embedder=str(embedder), **kw)


def update(archive: Path, root: Path, model: Path, embedder: Path, **kw: Any) -> UpdateSummary:
    return run_update(config(archive, root, model, embedder, **kw), [])


def catalog(root: Path, version: str | None = None) -> list[dict[str, Any]]:
    col = Collection.open(root)
    name = version or col.current()
    assert name is not None
    return pq.read_table(Path(col.join(VERSIONS_DIR, name, CATALOG_FILE))).to_pylist()
