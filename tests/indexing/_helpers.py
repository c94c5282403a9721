"""Builders shared by the indexing tests: tiny models, entries and manifests."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexing.build import IndexEntry, Manifest
from indexing.embed import TextEmbedder, packaged_embedder_path

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
TINY_HIDDEN = 32


def build_tiny_sentence_transformer(out_dir: Path, seed: int = 0) -> Path:
    """Save a seeded 2-layer, 32-wide BERT sentence-transformer (real MiniLM tokenizer) to out_dir.

    The vocabulary is the real tokenizer's (30,522 word pieces), so the token embedding table is
    the bulk of its ~1M parameters; the network is random, so only shapes and norms mean anything.
    """
    import torch
    from transformers import BertConfig, BertModel

    try:  # newer sentence-transformers moved the module classes here
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:
        from sentence_transformers.models import (  # type: ignore[no-redef]
            Normalize,
            Pooling,
            Transformer,
        )
    from sentence_transformers import SentenceTransformer

    hf_dir = out_dir.parent / f"{out_dir.name}-hf"
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf_dir)
    packaged = packaged_embedder_path()
    for name in TOKENIZER_FILES:
        shutil.copy(packaged / name, hf_dir / name)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(TINY_HIDDEN, "mean"), Normalize()], device="cpu"
    )
    model.save(str(out_dir))
    shutil.rmtree(hf_dir)
    return out_dir


def make_entries(captions: Sequence[str]) -> list[IndexEntry]:
    """Entries with sparse, non-row ids so id -> row mapping is exercised."""
    return [
        IndexEntry(
            id=1000 + 7 * i,
            key=f"img{i:04d}",
            caption=caption,
            source=f"shard-{i % 3:05d}.tar",
            member=f"{i:04d}.jpg",
        )
        for i, caption in enumerate(captions)
    ]


def make_manifest(embedder: TextEmbedder, count: int, **overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        embedder_name=embedder.name,
        embedder_sha256=embedder.sha256,
        dimension=embedder.dimension,
        count=count,
        caption_files=("captions/shard-00000.parquet", "captions/shard-00001.parquet"),
        imgindex_version="0.1.0",
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


def random_unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d)).astype(np.float32)  # (N, D)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, D) unit rows


def colour_shape_captions() -> list[str]:
    """60 distinct captions."""
    colours = ["red", "blue", "green", "yellow", "black"]
    shapes = ["circle", "square", "triangle", "star"]
    counts = ["one", "two", "three"]
    return [
        f"{count} {colour} {shape}{'s' if count != 'one' else ''} on a plain background"
        for colour in colours
        for shape in shapes
        for count in counts
    ]


class CountingEmbedder(TextEmbedder):
    """Records every list of texts that reaches the model."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.calls: list[list[str]] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        self.calls.append(list(texts))
        return super().encode(texts, batch_size)
