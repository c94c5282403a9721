"""`hf:NAME_OR_PATH` -> a checked local model directory and its family, or a ModelLoadError.

NAME_OR_PATH is a local directory, an fsspec URL of a model directory (copied once into
$IMGINDEX_CACHE/models/<hash of the URL>, default ~/.cache/imgindex), or a Hugging Face Hub id.
Nothing here imports torch, and transformers only to name the image-text-to-text model types, so
a bad path or flag fails fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from captioning.errors import CaptioningError

logger = logging.getLogger(__name__)

# model_type -> family. Anything else that transformers maps to AutoModelForImageTextToText is
# the generic "image-text-to-text" family.
KNOWN_FAMILIES = {
    "blip": "blip",
    "git": "git",
    "vision-encoder-decoder": "vision-encoder-decoder",
    "blip-2": "blip-2",
    "florence2": "florence2",
}
SUPPORTED = (
    "blip (BlipForConditionalGeneration), git (GitForCausalLM), vision-encoder-decoder, "
    "blip-2, florence2, and image-text-to-text models (AutoModelForImageTextToText, "
    "e.g. llava, smolvlm, idefics3, paligemma, qwen2_vl)"
)
# What a hub download fetches; weights by format are added by `_hub_patterns`.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
_TRUTHY = ("1", "on", "yes", "true")


class ModelLoadError(CaptioningError):
    """A model that cannot be loaded as asked; the message says what to change (one line)."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path  # a local directory holding config.json and the weights
    family: str  # a key of KNOWN_FAMILIES' values, or "image-text-to-text"
    model_type: str
    remote_code: bool  # config.json has auto_map: the model ships its own Python
    safetensors: bool  # False: only pickle (pytorch_model.bin) weights, allowed by the caller


def cache_root() -> Path:
    base = os.environ.get("IMGINDEX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgindex"
    )
    return Path(base)


def hub_offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in _TRUTHY for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve(
    spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False
) -> ResolvedModel:
    """Find the model directory for `spec`, check its config and weights, name its family.

    Raises ModelLoadError for a missing model, an unsupported family, remote code without
    `trust_remote_code`, pickle-only weights without `allow_pickle`, or a corrupt weights file.
    """
    if not spec:
        raise ModelLoadError(
            "hf: needs a model: hf:NAME_OR_PATH (a directory, fsspec URL or hub id)"
        )
    path = local_dir(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    config = read_config(path)
    model_type = str(config.get("model_type", ""))
    archs = config.get("architectures") or []
    remote = "auto_map" in config
    if remote and not trust_remote_code:
        raise ModelLoadError(
            f"{spec}: this model ships its own code (config.json has auto_map); "
            "pass --trust-remote-code if you trust its source"
        )
    family = detect_family(model_type, archs, remote)
    if family is None:
        what = f"{model_type or 'no model_type'} ({', '.join(archs) or 'no architectures'})"
        raise ModelLoadError(f"{spec}: unsupported model family {what}; supported: {SUPPORTED}")
    safe = check_weights(path, allow_pickle=allow_pickle)
    return ResolvedModel(path, family, model_type, remote, safe)


def detect_family(model_type: str, architectures: list[str], remote: bool) -> str | None:
    if model_type in KNOWN_FAMILIES:
        return KNOWN_FAMILIES[model_type]
    if remote and any(
        a.endswith(("ForConditionalGeneration", "ForCausalLM", "Vision2Seq")) for a in architectures
    ):
        return "image-text-to-text"  # loaded through its own auto_map classes
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "image-text-to-text"
    return None


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a transformers model directory")
    try:
        return json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{f} is not valid JSON ({e}): re-download the model") from None


def local_dir(spec: str, *, trust_remote_code: bool, allow_pickle: bool) -> Path:
    if spec.startswith("file://"):
        spec = spec.removeprefix("file://")
    elif "://" in spec:
        return fetch_url(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    if p.exists() or spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"{spec}: no model directory there")
    return hub_snapshot(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def hub_snapshot(repo_id: str, *, trust_remote_code: bool, allow_pickle: bool) -> Path:
    """A hub id from the local Hugging Face cache, or downloaded when the hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    unreachable = (
        f"{repo_id}: not a local directory, not found locally and the hub is "
        "unreachable: pass a local directory"
    )
    patterns = (
        _HUB_FILES
        + ["*.safetensors"]
        + (["*.bin"] if allow_pickle else [])
        + (["*.py"] if trust_remote_code else [])
    )
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=patterns, local_files_only=hub_offline())
        )
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{repo_id}: no such model on the Hugging Face Hub (or it is private: "
            "log in with `hf auth login`)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError):
        raise ModelLoadError(unreachable) from None
    except ValueError as e:  # a malformed repo id
        raise ModelLoadError(f"{repo_id}: not a directory and not a hub id ({e})") from None


def fetch_url(url: str) -> Path:
    """Copy the model directory at an fsspec URL into the local cache once; reuse it after.

    The copy is verified against the source's file sizes and replaced when they differ, and is
    written under a temporary name first, so an interrupted copy is never used.
    """
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        listing = fs.find(root, detail=True)
    except (ImportError, ValueError) as e:
        raise ModelLoadError(
            f"{url}: cannot open this URL ({e}): install its fsspec filesystem (e.g. gcsfs, s3fs)"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"{url}: cannot list the model directory ({e})") from None
    root = root.rstrip("/")
    sizes = {
        name[len(root) + 1 :]: int(info.get("size") or 0)
        for name, info in listing.items()
        if info.get("type", "file") == "file"
    }
    if "config.json" not in sizes:
        raise ModelLoadError(f"{url}: no model directory there (no config.json)")
    target = cache_root() / "models" / hashlib.sha256(url.encode()).hexdigest()[:20]
    if _sizes_match(target, sizes):
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "copying %s (%d files, %d bytes) to %s", url, len(sizes), sum(sizes.values()), target
    )
    for rel in sizes:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(tmp / rel))
    if not _sizes_match(tmp, sizes):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(
            f"{url}: the copy's file sizes differ from the source: the source "
            "changed while copying, try again"
        )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _sizes_match(local: Path, sizes: dict[str, int]) -> bool:
    return local.is_dir() and all(
        (local / rel).is_file() and (local / rel).stat().st_size == n for rel, n in sizes.items()
    )


def check_weights(path: Path, *, allow_pickle: bool) -> bool:
    """True for safetensors weights (each file's header checked), False for allowed pickle ones."""
    safe = sorted(path.glob("*.safetensors"))
    if safe:
        for f in safe:
            check_safetensors(f)
        return True
    if list(path.glob("pytorch_model*.bin")):
        if not allow_pickle:
            raise ModelLoadError(
                f"{path} has only pickle weights (pytorch_model.bin), which "
                "can run code when loaded: pass --allow-pickle if you trust the "
                "source, or convert them to safetensors"
            )
        return False
    raise ModelLoadError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")


def check_safetensors(f: Path) -> None:
    """The header parses and the tensors it lists fit the file exactly (catches truncation)."""
    bad = f"{f} is corrupt or truncated"
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ModelLoadError(f"{bad}: header larger than the file; re-download the model")
            header = json.loads(fh.read(n))
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(
            f"{bad}: unreadable safetensors header; re-download the model"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"{bad}: {e.strerror or e}") from None
    try:
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        raise ModelLoadError(
            f"{bad}: malformed safetensors header; re-download the model"
        ) from None
    if 8 + n + end != size:
        raise ModelLoadError(
            f"{bad}: {size} bytes, its header describes {8 + n + end}; re-download the model"
        )
