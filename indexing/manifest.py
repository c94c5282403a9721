"""Manifest: what an index directory was built from and how it is searched (manifest.json).

The exact-Flat defaults of the approximate-index fields are left out of the JSON, so an exact
index's manifest is the same as before index types existed and older manifests load as Flat.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime

from indexing.ann import FLAT, FLAT_FACTORY, INDEX_TYPES, factory_nlist
from indexing.errors import IndexingError
from indexing.tuning import check_params

INDEX_FACTORY = FLAT_FACTORY  # with faiss.METRIC_INNER_PRODUCT: IndexIDMap2(IndexFlatIP(D))
METRIC = "inner_product"
FORMAT_VERSION = 1

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an index was built from, stored as manifest.json.

    Attributes:
        embedder_name: ResolvedEmbedder.name of the embedder (DEFAULT_EMBEDDER or a local path);
            search loads it to embed queries.
        embedder_sha256: sha256 of that embedder's weights; search refuses any other weights.
        dimension: vector width D.
        count: number of entries.
        caption_files: the caption files the entries were read from.
        imgindex_version: version of imgindex that built the index.
        created_at: ISO-8601 UTC timestamp; defaults to now.
        metric: always "inner_product" (on unit-norm vectors, i.e. cosine).
        format_version: layout version of the index directory.
        index_type: one of indexing.ann.INDEX_TYPES; "flat" (exact) unless built with an AnnConfig.
        factory: the FAISS factory string of index.faiss.
        search_params: (name, value) pairs search applies by default, e.g. (("nprobe", 16),).
        target_recall: the recall@10 the parameters were tuned for; None for an exact index.
        recall_at_10: recall@10 against exact search measured at search_params; None if untuned.
        query_ms: batched single-thread ms per query measured at search_params; None for Flat
            (nothing tuned) and for indexes written before it was recorded.
        index_bytes: estimated resident bytes of the loaded index; None if not recorded.
        trained_count, train_residual, train_imbalance: IVF types: the vectors in the index when
            its quantizer was trained, their mean squared distance to their centroid and the
            lists' imbalance factor then (indexing.drift); an incremental update keeps them, so
            the next one can tell drift and growth since training. None otherwise.
    """

    embedder_name: str
    embedder_sha256: str
    dimension: int
    count: int
    caption_files: tuple[str, ...]
    imgindex_version: str
    created_at: str = field(default_factory=_utc_now)
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    index_type: str = FLAT
    factory: str = INDEX_FACTORY
    search_params: tuple[tuple[str, int], ...] = ()
    target_recall: float | None = None
    recall_at_10: float | None = None
    query_ms: float | None = None
    index_bytes: int | None = None
    trained_count: int | None = None
    train_residual: float | None = None
    train_imbalance: float | None = None

    @property
    def params(self) -> dict[str, int]:
        """search_params as a dict."""
        return dict(self.search_params)

    def __post_init__(self) -> None:
        if not self.embedder_name:
            raise ValueError("Manifest.embedder_name is empty: pass TextEmbedder.name")
        if not _SHA256_RE.fullmatch(self.embedder_sha256):
            raise ValueError(
                f"Manifest.embedder_sha256 must be 64 lowercase hex digits, got "
                f"{self.embedder_sha256!r}: pass TextEmbedder.sha256"
            )
        if self.dimension <= 0:
            raise ValueError(f"Manifest.dimension must be positive, got {self.dimension}")
        if self.count < 0:
            raise ValueError(f"Manifest.count must be >= 0, got {self.count}")
        if not isinstance(self.caption_files, tuple):
            # A list would make the frozen manifest mutable and unhashable.
            object.__setattr__(self, "caption_files", tuple(self.caption_files))
        if not self.imgindex_version:
            raise ValueError("Manifest.imgindex_version is empty: pass the imgindex version")
        try:
            created = datetime.fromisoformat(self.created_at)
        except ValueError as err:
            raise ValueError(
                f"Manifest.created_at must be ISO-8601, got {self.created_at!r}"
            ) from err
        offset = created.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise ValueError(f"Manifest.created_at must be in UTC, got {self.created_at!r}")
        if self.metric != METRIC:
            raise ValueError(f"Manifest.metric must be {METRIC!r}, got {self.metric!r}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"index format version {self.format_version} is not supported by this imgindex "
                f"(it reads version {FORMAT_VERSION}): rebuild the index"
            )
        self._check_ann_fields()

    def _check_ann_fields(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(
                f"Manifest.index_type must be one of {', '.join(INDEX_TYPES)}, "
                f"got {self.index_type!r}"
            )
        params = self.search_params
        if isinstance(params, dict):  # accept {"nprobe": 8}; stored as sorted pairs (hashable)
            object.__setattr__(self, "search_params", tuple(sorted(params.items())))
        elif not isinstance(params, tuple):
            object.__setattr__(self, "search_params", tuple(map(tuple, params)))
        try:
            check_params(self.index_type, self.params, factory_nlist(self.factory))
        except IndexingError as err:
            raise ValueError(f"Manifest.search_params: {err}") from err
        for name in ("target_recall", "recall_at_10"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"Manifest.{name} must be in [0, 1], got {value!r}")

    def to_json(self) -> str:
        """Serialise to a JSON object (stable key order)."""
        data = asdict(self)
        data["caption_files"] = list(self.caption_files)
        data["search_params"] = dict(self.search_params)
        for name in _ANN_FIELDS:  # exact-Flat defaults stay out: the manifest of before
            if data[name] == _ANN_DEFAULTS[name]:
                del data[name]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse to_json's output.

        Raises:
            ValueError: not JSON, not an object, missing or unknown keys, or invalid values.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"manifest is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"manifest must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        if missing := sorted(required - data.keys()):
            raise ValueError(f"manifest lacks {', '.join(missing)}")
        if unknown := sorted(data.keys() - names):
            raise ValueError(f"manifest has unknown keys {', '.join(unknown)}")
        if not isinstance(data["caption_files"], list) or not all(
            isinstance(f, str) for f in data["caption_files"]
        ):
            raise ValueError("manifest caption_files must be a list of strings")
        for key in ("dimension", "count", "format_version"):
            if key in data and (type(data[key]) is not int):
                raise ValueError(f"manifest {key} must be an integer, got {data[key]!r}")
        for key in ("embedder_name", "embedder_sha256", "imgindex_version", "created_at"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"manifest {key} must be a string, got {data[key]!r}")
        data["caption_files"] = tuple(data["caption_files"])
        for key in ("index_type", "factory"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"manifest {key} must be a string, got {data[key]!r}")
        if "search_params" in data:
            params = data["search_params"]
            if not isinstance(params, dict):
                raise ValueError(f"manifest search_params must be an object, got {params!r}")
            data["search_params"] = tuple(sorted(params.items()))
        for key in ("target_recall", "recall_at_10", "query_ms", "train_residual",
                    "train_imbalance"):  # fmt: skip
            value = data.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"manifest {key} must be a number, got {value!r}")
        for key in ("index_bytes", "trained_count"):
            if (value := data.get(key)) is not None and type(value) is not int:
                raise ValueError(f"manifest {key} must be an integer, got {value!r}")
        return cls(**data)


_ANN_FIELDS = (
    "index_type",
    "factory",
    "search_params",
    "target_recall",
    "recall_at_10",
    "query_ms",
    "index_bytes",
    "trained_count",
    "train_residual",
    "train_imbalance",
)
_ANN_DEFAULTS = {f.name: f.default for f in fields(Manifest) if f.name in _ANN_FIELDS}
_ANN_DEFAULTS["search_params"] = {}
