"""The nightly update's settings as a frozen dataclass, without Beam (the CLI reads its defaults
at start-up)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from indexing.ann import AUTO, DEFAULT_TARGET_RECALL, AnnConfig, parse_size
from indexing.embed import DEFAULT_EMBEDDER
from pipelines.caption.config import CaptionConfig
from pipelines.errors import UsageError


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """What `imgindex update` does.

    `caption` carries the captioner, batching, reading and decoding settings of the caption job
    (its `out` is the collection root, its `input` the archive listed tonight).
    """

    caption: CaptionConfig
    collection: str
    embedder: str = DEFAULT_EMBEDDER
    max_images: int | None = None  # images captioned at most tonight: new and changed first
    keep: int = 7  # published versions kept
    allow_shrink: bool = False
    # Refuse to publish when more than this share of the catalog would be deleted (a failed
    # mount lists nothing), unless allow_shrink.
    shrink_limit: float = 0.5
    lock_timeout_s: float = 600.0  # a lock without a heartbeat for this long is taken over
    flush_rows: int = 256  # caption rows per cache file: a killed run redoes at most these
    embed_batch: int = 256
    # The index of each version (indexing.ann): a collection changes every night, so only types
    # that can add and remove ids are chosen (mutable=True: Flat, IVF-Flat, IVF-SQ8).
    index_type: str = AUTO
    memory_budget: str | None = None  # e.g. "4GB"
    target_recall: float = DEFAULT_TARGET_RECALL

    @property
    def ann(self) -> AnnConfig:
        budget = None if self.memory_budget is None else parse_size(self.memory_budget)
        return AnnConfig(self.index_type, budget, self.target_recall, mutable=True)

    def __post_init__(self) -> None:
        if self.max_images is not None and self.max_images < 0:
            raise UsageError(f"--max-images must be 0 or more, got {self.max_images}")
        if self.keep < 1:
            raise UsageError(f"--keep must be at least 1, got {self.keep}")
        if not (0 <= self.shrink_limit <= 1) or math.isnan(self.shrink_limit):
            raise UsageError(f"shrink_limit must be between 0 and 1, got {self.shrink_limit}")
        if self.lock_timeout_s <= 0:
            raise UsageError(f"--lock-timeout must be positive, got {self.lock_timeout_s}")
        if self.flush_rows < 1 or self.embed_batch < 1:
            raise UsageError("flush_rows and embed_batch must be at least 1")
        if not self.collection:
            raise UsageError("--collection is empty: pass the collection root")
        _ = self.ann  # validates the index type, memory budget and target recall


@dataclass(frozen=True, slots=True)
class UpdateCounts:
    """What one update found and did, by image."""

    listed: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    stale: int = 0  # unchanged bytes captioned by another model version
    reused: int = 0  # captions found in the caption cache (same bytes, same model version)
    captioned: int = 0
    failed: int = 0  # new failures tonight (read, decode, caption, duplicate keys, source)
    unavailable: int = 0  # of those, images the archive's maker never got (stage "source")
    deferred: int = 0  # left for a later night by --max-images
    duplicates: int = 0
    shards_listed: int = 0
    shards_read: int = 0  # shards whose fingerprint changed (or new ones)
