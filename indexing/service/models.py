"""The service's JSON bodies as pydantic models (what /docs shows as the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Hit(BaseModel):
    """One ranked result."""

    rank: int = Field(description="1-based position in the whole ranking (offset + i + 1)")
    score: float = Field(description="fused RRF score (hybrid), cosine (vector) or BM25 (keyword)")
    key: str
    caption: str
    source: str = Field(description="the archive (shard) URI the image is in")
    member: str = Field(description="the image's member in that archive")
    url: str | None = Field(None, description="where the image's source says it came from")
    width: int | None = None
    height: int | None = None
    model: str | None = Field(None, description="the captioner")
    model_version: str | None = None
    captioned_at: str | None = None
    thumbnail_url: str
    image_url: str
    vector_rank: int | None = Field(None, description="rank on the vector side; null: not ranked")
    vector_score: float | None = Field(None, description="cosine on the vector side")
    keyword_rank: int | None = Field(None, description="rank on the BM25 side; null: not ranked")
    keyword_score: float | None = Field(None, description="BM25 score on the keyword side")


class SearchResponse(BaseModel):
    """A page of hits (search and similar)."""

    version: str | None = Field(description="the index version that answered")
    took_ms: float
    query: str = Field(description="the query text, or the item's key for similar")
    mode: str = Field(description="hybrid, vector, keyword, or similar")
    k: int
    offset: int
    hits: list[Hit]


class Item(BaseModel):
    """One indexed image's metadata."""

    key: str
    caption: str
    source: str
    member: str
    url: str | None = None
    alt_text: str | None = Field(None, description="the source's own caption")
    metadata: dict[str, Any] | None = Field(None, description="the source's other fields")
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    model: str | None = None
    model_version: str | None = None
    captioned_at: str | None = None
    image_url: str
    thumbnail_url: str


class ItemResponse(BaseModel):
    version: str | None
    item: Item


class Health(BaseModel):
    status: str = "ok"
    version: str | None


class Ready(BaseModel):
    ready: bool
    version: str | None = None
    count: int | None = None


class ErrorBody(BaseModel):
    error: str = Field(description="one line saying what was wrong")
