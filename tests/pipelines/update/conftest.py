"""Update fixtures: the tiny caption model (tests/pipelines/conftest.py), a tiny embedder, and
generated archives that a test may change between nights."""

from __future__ import annotations

from pathlib import Path

from captioning.archives.synthetic.writer import ArchiveConfig, write_archive


def make_archive(root: Path, images: int, fmt: str = "folder", shards: int = 1, seed: int = 3,
                 start: int = 0) -> Path:  # fmt: skip
    write_archive(
        str(root),
        ArchiveConfig(
            images=images,
            shards=shards,
            seed=seed,
            format=fmt,
            workers=1,
            start=start,
            image_format="png",
        ),  # fmt: skip
    )
    return root
