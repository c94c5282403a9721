"""Images -> captions: archive reading, image decoding, the captioners and their training.

The API people script against is exported here, imported lazily so that `captioning.archives`
(which never needs torch) stays light:

    from captioning import CaptionerOptions, load_captioner
    captioner = load_captioner("hf:./blip-base", CaptionerOptions(beam_size=3))
    results = captioner.caption([captioner.preprocess(image)])   # -> [CaptionResult]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captioning.api import Captioner, CaptionerOptions, CaptionResult, ModelSpec
    from captioning.errors import CaptioningError
    from captioning.registry import load_captioner, load_preprocessor, model_identity

_EXPORTS = {
    "Captioner": "captioning.api",
    "CaptionerOptions": "captioning.api",
    "CaptionResult": "captioning.api",
    "ModelSpec": "captioning.api",
    "CaptioningError": "captioning.errors",
    "load_captioner": "captioning.registry",
    "load_preprocessor": "captioning.registry",
    "model_identity": "captioning.registry",
}
__all__ = [
    "CaptionResult",
    "Captioner",
    "CaptionerOptions",
    "CaptioningError",
    "ModelSpec",
    "load_captioner",
    "load_preprocessor",
    "model_identity",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'captioning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
