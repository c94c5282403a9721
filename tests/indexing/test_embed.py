"""Tests for indexing.embed: resolution, fingerprints and embedding."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexing import embed
from indexing.embed import (
    DEFAULT_EMBEDDER,
    PACKAGED_EMBEDDER_SHA256,
    EmbedderError,
    TextEmbedder,
    resolve_embedder,
    unique_texts,
)
from tests.indexing._helpers import TINY_HIDDEN, CountingEmbedder


@pytest.mark.parametrize("name", [DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"])
def test_default_name_resolves_to_packaged_model(name: str) -> None:
    resolved = resolve_embedder(name)
    assert resolved.name == DEFAULT_EMBEDDER
    assert resolved.sha256 == PACKAGED_EMBEDDER_SHA256
    assert (resolved.path / "model.safetensors").is_file()


def test_packaged_weights_mismatch_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed, "PACKAGED_EMBEDDER_SHA256", "0" * 64)
    with pytest.raises(EmbedderError, match="the packaged embedder's weights do not match"):
        resolve_embedder(DEFAULT_EMBEDDER)


def test_hub_id_is_refused_with_a_local_directory_hint() -> None:
    with pytest.raises(EmbedderError, match="not found locally.*unreachable.*local"):
        resolve_embedder("sentence-transformers/all-MiniLM-L12-v2")


@pytest.mark.parametrize("name", ["mpnet", "all-mpnet-base-v2"])
def test_named_embedder_not_installed_says_which_make_target(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGINDEX_CACHE", str(tmp_path))
    with pytest.raises(EmbedderError, match="run `make embedder-mpnet` first"):
        resolve_embedder(name)


def test_named_embedder_resolves_installed_directory_and_checks_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGINDEX_CACHE", str(tmp_path))
    installed = tmp_path / "embedders" / "all-mpnet-base-v2"
    installed.mkdir(parents=True)
    (installed / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(EmbedderError, match="expected 78c0197b.*make embedder-mpnet` again"):
        resolve_embedder("mpnet")
    digest = hashlib.sha256(b"weights").hexdigest()
    fake = dataclasses.replace(embed.NAMED_EMBEDDERS["mpnet"], sha256=digest)
    monkeypatch.setitem(embed.NAMED_EMBEDDERS, "mpnet", fake)
    resolved = resolve_embedder("mpnet")
    assert (resolved.name, resolved.path, resolved.sha256) == (
        "all-mpnet-base-v2",
        installed,
        digest,
    )


def test_unique_texts_keeps_first_seen_order() -> None:
    distinct, inverse = unique_texts(["b", "a", "b", "c", "a"])
    assert distinct == ["b", "a", "c"]
    assert inverse.tolist() == [0, 1, 0, 2, 1]
    assert [distinct[i] for i in inverse] == ["b", "a", "b", "c", "a"]


def test_repeated_texts_reach_the_model_once_and_match_one_at_a_time(
    tiny_model_dir: Path,
) -> None:
    embedder = CountingEmbedder(resolve_embedder(str(tiny_model_dir)), device="cpu")
    embedder.calls.clear()  # construction may probe the width
    texts = ["a red circle", "two blue squares", "a red circle", "x", "two blue squares"]
    vectors = embedder.embed(texts, batch_size=8)  # (5, D)
    assert embedder.calls == [["a red circle", "two blue squares", "x"]]
    assert vectors.shape == (5, TINY_HIDDEN)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[1], vectors[4])
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(vector, embedder.embed([text], batch_size=1)[0], atol=1e-5)


def test_local_directory_with_pytorch_bin_only(tmp_path: Path) -> None:
    payload = b"not really a checkpoint"
    (tmp_path / "pytorch_model.bin").write_bytes(payload)
    resolved = resolve_embedder(str(tmp_path))
    assert resolved.path == tmp_path.resolve()
    assert resolved.name == str(tmp_path.resolve())
    assert resolved.sha256 == hashlib.sha256(payload).hexdigest()


def test_local_directory_weights_in_module_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer", "type": "x"}])
    )
    (tmp_path / "0_Transformer").mkdir()
    (tmp_path / "0_Transformer" / "model.safetensors").write_bytes(b"w")
    assert resolve_embedder(str(tmp_path)).sha256 == hashlib.sha256(b"w").hexdigest()


def test_local_directory_without_weights(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="no weights"):
        resolve_embedder(str(tmp_path))


def test_tiny_model_loads_as_local_directory(
    tiny_model_dir: Path, tiny_embedder: TextEmbedder
) -> None:
    weights = tiny_model_dir / "model.safetensors"
    assert tiny_embedder.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert tiny_embedder.name == str(tiny_model_dir.resolve())
    assert tiny_embedder.dimension == TINY_HIDDEN
    vectors = tiny_embedder.embed(["a red circle", "two blue squares", "x"])
    assert vectors.shape == (3, TINY_HIDDEN)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batched_embedding_matches_one_at_a_time(tiny_embedder: TextEmbedder) -> None:
    texts = ["a", "a much longer caption that pads the short ones in its batch", "two cats"]
    batched = tiny_embedder.embed(texts, batch_size=3)
    single = np.concatenate([tiny_embedder.embed([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_embed_rejects_a_bare_string_and_bad_batch_size(tiny_embedder: TextEmbedder) -> None:
    with pytest.raises(TypeError, match="not one str"):
        tiny_embedder.embed("a red circle")
    with pytest.raises(ValueError, match="batch_size"):
        tiny_embedder.embed(["a"], batch_size=0)


def test_real_model_vectors_are_unit_norm(minilm: TextEmbedder) -> None:
    vectors = minilm.embed(["a red circle", "two blue squares", "a dog on a beach"] * 3)
    assert vectors.shape == (9, 384)
    assert vectors.dtype == np.float32
    assert minilm.dimension == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_real_model_empty_input(minilm: TextEmbedder) -> None:
    vectors = minilm.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_real_model_semantic_sanity(minilm: TextEmbedder) -> None:
    query, near, far = minilm.embed(
        ["a red circle", "a small red circle on a plain background", "two blue squares"]
    )
    assert float(query @ near) > float(query @ far) + 0.2


def test_indexing_never_imports_beam_and_loads_models_lazily() -> None:
    code = (
        "import sys, indexing.embed, indexing.build, indexing.search; "
        "bad = {'apache_beam', 'sentence_transformers'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_loading_an_embedder_leaves_the_environment_alone(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Library code does not change the process: no HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE left
    behind by loading a model (the network guard still keeps the load offline)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    embedder = TextEmbedder(resolve_embedder(str(tiny_model_dir)), device="cpu")
    assert embedder.embed(["a red circle"]).shape == (1, embedder.dimension)
    assert dict(os.environ) == before


def test_cpu_bf16_gives_unit_rows_close_to_float32(tiny_model_dir: Path) -> None:
    if not embed._cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    resolved = resolve_embedder(str(tiny_model_dir))
    bf16 = TextEmbedder(resolved, device="cpu")  # the default on a native-bf16 CPU
    float32 = TextEmbedder(resolved, device="cpu", cpu_bf16=False)
    assert bf16.uses_bf16 and not float32.uses_bf16
    texts = ["a red circle", "two blue squares", "a small green star", "x", "a red circle"]
    vectors = bf16.embed(texts)  # (5, D)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * float32.embed(texts), axis=1)  # (5,)
    assert cosines.min() >= 0.99


def test_cpu_bf16_falls_back_to_float32_without_native_bf16(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embed, "_cpu_has_native_bf16", lambda: False)
    embedder = TextEmbedder(resolve_embedder(str(tiny_model_dir)), device="cpu", cpu_bf16=True)
    assert not embedder.uses_bf16
