"""A --model spec -> a Captioner, its preprocessor, or its identity: the one module that knows
both backends (captioning.native and captioning.hf).

The Hugging Face backend is imported only when a spec asks for it: it pulls in transformers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from captioning.api import Captioner, CaptionerOptions, ModelIdentity, ModelSpec
from captioning.images.preprocess import to_model_input
from captioning.native.captioner import NativeCaptioner
from captioning.native.checkpoint import DEFAULT_MODEL_DIR, read_model_config


def _spec(spec: str | ModelSpec | None) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)


def model_identity(
    spec: str | ModelSpec | None, options: CaptionerOptions | None = None
) -> ModelIdentity:
    """Name, version and input size of the model a spec names, checked without loading weights.

    The pipeline's launcher calls this so that a bad --model fails before the job starts, and to
    let the decoder skip detail the model would throw away (JPEG draft mode).
    """
    parsed, options = _spec(spec), options or CaptionerOptions()
    if parsed.kind == "hf":
        from captioning.hf.identity import hf_identity

        assert parsed.location is not None
        return hf_identity(parsed.location, options)
    directory = DEFAULT_MODEL_DIR if parsed.location is None else Path(parsed.location)
    meta = read_model_config(directory)
    return ModelIdentity(
        meta.get("name", "imgindex-sat"),
        str(meta.get("version", "")),
        int(meta["model"]["image_size"]),
    )


def load_preprocessor(
    spec: str | ModelSpec | None, options: CaptionerOptions | None = None
) -> Callable[[Image.Image], Any]:
    """The captioner's per-image step without its model: what `preprocessor()` returns, for
    workers that decode ahead of inference and should not hold the model's weights."""
    parsed, options = _spec(spec), options or CaptionerOptions()
    if parsed.kind == "hf":
        from captioning.hf.processors import hf_preprocessor

        assert parsed.location is not None
        return hf_preprocessor(parsed.location, options)
    size = model_identity(parsed, options).input_size
    assert size is not None  # native models always record it
    return functools.partial(to_model_input, size=size)


def load_captioner(
    spec: str | ModelSpec | None = None, options: CaptionerOptions | None = None
) -> Captioner:
    """`None` -> the shipped default; `native:DIR` or a plain DIR -> our model; `hf:NAME` -> HF.

    Loading leaves the process's settings alone: call `options.set_up_process()` first for the
    threads and CPU heap policy the options ask for.
    """
    parsed, options = _spec(spec), options or CaptionerOptions()
    if parsed.kind == "hf":
        from captioning.hf.captioner import HFCaptioner  # heavy import, only when asked for

        assert parsed.location is not None
        return HFCaptioner(parsed.location, options)
    return NativeCaptioner(parsed.location or DEFAULT_MODEL_DIR, options)
