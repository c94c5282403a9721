"""Load a resolved Hugging Face model and its processor: safetensors (pickle only when allowed),
the requested dtype and device, SDPA attention where the model offers it."""

from __future__ import annotations

import logging
from typing import Any

from captioning.api import CaptionerOptions
from captioning.hf.resolve import ModelLoadError, ResolvedModel, read_config

logger = logging.getLogger(__name__)


def _model_class(resolved: ResolvedModel):
    import transformers as tf

    fixed = {
        "blip": tf.BlipForConditionalGeneration,
        "git": tf.GitForCausalLM,
        "vision-encoder-decoder": tf.VisionEncoderDecoderModel,
        "blip-2": tf.Blip2ForConditionalGeneration,
    }
    if resolved.family in fixed:
        return fixed[resolved.family]
    if resolved.remote_code:  # its own classes, through whichever auto class auto_map names
        auto_map = read_config(resolved.path)["auto_map"]
        for name in (
            "AutoModelForImageTextToText",
            "AutoModelForVision2Seq",
            "AutoModelForCausalLM",
            "AutoModelForSeq2SeqLM",
        ):
            if name in auto_map and hasattr(tf, name):
                return getattr(tf, name)
        raise ModelLoadError(
            f"{resolved.path}: its auto_map names no generative model class ({', '.join(auto_map)})"
        )
    return tf.AutoModelForImageTextToText


def load_model(resolved: ResolvedModel, options: CaptionerOptions) -> Any:
    """from_pretrained: safetensors (pickle only when allowed), the dtype, SDPA when offered."""
    from safetensors import SafetensorError

    cls = _model_class(resolved)
    kwargs = {
        "dtype": options.resolved_dtype(),
        "use_safetensors": resolved.safetensors,
        "trust_remote_code": options.trust_remote_code,
    }
    try:
        try:
            model = cls.from_pretrained(resolved.path, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError) as e:
            if "sdpa" not in str(e).lower() and "attention" not in str(e).lower():
                raise
            logger.info("%s: no SDPA attention (%s); using the model's default", resolved.path, e)
            model = cls.from_pretrained(resolved.path, **kwargs)
    except (OSError, RuntimeError, SafetensorError, KeyError, ValueError) as e:
        if isinstance(e, ModelLoadError):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{resolved.path}: cannot load the model weights ({reason}); "
            "re-download or re-save the model"
        ) from e
    return model.to(options.resolved_device()).eval()


def load_processor(resolved: ResolvedModel, options: CaptionerOptions) -> tuple[Any, Any, Any]:
    """(processor or None, image processor, tokenizer) saved with the model."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    trust = options.trust_remote_code
    try:
        if resolved.family == "vision-encoder-decoder":  # no processor class: the two parts
            improc = AutoImageProcessor.from_pretrained(resolved.path, trust_remote_code=trust)
            return (
                None,
                improc,
                AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust),
            )
        processor = AutoProcessor.from_pretrained(resolved.path, trust_remote_code=trust)
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{resolved.path}: cannot load its processor/tokenizer ({reason}); "
            "save it next to the model with processor.save_pretrained"
        ) from e
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    if tokenizer is None or image_processor is None:
        raise ModelLoadError(
            f"{resolved.path}: its processor ({type(processor).__name__}) lacks "
            "a tokenizer or an image processor"
        )
    return processor, image_processor, tokenizer
