"""A Hugging Face model's identity from its files alone: name, version (a digest of its config and
weights' contents) and the input size its image processor resizes to."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from captioning.api import CaptionerOptions, ModelIdentity
from captioning.hf.resolve import ResolvedModel, cache_root, resolve

logger = logging.getLogger(__name__)


def hf_identity(name_or_path: str, options: CaptionerOptions) -> ModelIdentity:
    """Name, version and input size as HFCaptioner reports them, from the model's files alone."""
    resolved = resolve(
        name_or_path, trust_remote_code=options.trust_remote_code, allow_pickle=options.allow_pickle
    )
    return ModelIdentity(f"hf:{name_or_path}", model_version(resolved), input_size(resolved.path))


def input_size(path: Path) -> int | None:
    """The largest side the image processor resizes to (height/width/shortest_edge).

    Read from preprocessor_config.json (hub models, transformers 4) or from the "image_processor"
    part of processor_config.json (what transformers 5's save_pretrained writes instead)."""
    size = None
    for name, part in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        try:
            config = json.loads((path / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if part is not None:
            config = config.get(part) if isinstance(config, dict) else None
        if isinstance(config, dict) and config.get("size") is not None:
            size = config["size"]
            break
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        sides = [
            v
            for k, v in size.items()
            if k in ("height", "width", "shortest_edge") and isinstance(v, int)
        ]
        return max(sides) if sides else None
    return None


def model_version(resolved: ResolvedModel) -> str:
    """ "<model_type>-<12 hex>": a digest of config.json and of every weight file's contents, so a
    fine-tune and its base model get different versions (names and sizes alone would not)."""
    h = hashlib.sha256((resolved.path / "config.json").read_bytes())
    for f in sorted(resolved.path.glob("*.safetensors")) + sorted(resolved.path.glob("*.bin")):
        h.update(f"{f.name}:{file_digest(f)}".encode())
    return f"{resolved.model_type}-{h.hexdigest()[:12]}"


def file_digest(path: Path) -> str:
    """sha256 of a file's contents, cached by (real path, size, mtime): in this process, and in
    DIGEST_CACHE under the model cache, so neither a run's several loads nor the next run rehash
    gigabytes of unchanged weights. A file rewritten in place gets a new mtime, hence a new hash."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key in _digests:
        return _digests[key]
    stored = _read_digest_cache()
    if key not in stored:
        with path.open("rb") as f:
            stored[key] = hashlib.file_digest(f, "sha256").hexdigest()
        _write_digest_cache(stored)
    _digests[key] = stored[key]
    return stored[key]


DIGEST_CACHE = "weight-digests.json"
_digests: dict[str, str] = {}


def _read_digest_cache() -> dict[str, str]:
    try:
        data = json.loads((cache_root() / DIGEST_CACHE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_digest_cache(digests: dict[str, str]) -> None:
    """Best effort (a read-only cache only costs a rehash next run): temp file, then rename."""
    target = cache_root() / DIGEST_CACHE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{DIGEST_CACHE}.", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(digests, f)
        os.replace(tmp, target)
    except OSError as e:
        logger.debug("cannot write the weight digest cache %s: %s", target, e)
