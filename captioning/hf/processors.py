"""The per-image step of a Hugging Face captioner: an image processor (or a whole processor with
the prompt text) applied to one image, built without loading the model's weights."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from captioning.api import CaptionerOptions
from captioning.errors import CaptioningError
from captioning.hf.loading import load_processor
from captioning.hf.resolve import ResolvedModel, resolve

DEFAULT_INSTRUCTION = "Describe this image in one sentence."
FLORENCE_TASK = "<MORE_DETAILED_CAPTION>"
# Families whose processor output for one image is the whole model input (text side included).
PER_IMAGE_TEXT = ("image-text-to-text", "florence2")


class HFPreprocessor:
    """An image processor (or a whole processor with the prompt text) applied to one image."""

    def __init__(self, processor: Any, text: str | None):
        self.processor, self.text = processor, text

    @property
    def decodes_on_device(self) -> bool:
        """Whether HFCaptioner.preprocess_encoded can take this model's images: no per-image
        text, and a torchvision-backed image processor (it takes tensors and `device=`; older
        PIL/numpy processors do not)."""
        mro = {c.__name__ for c in type(self.processor).__mro__}
        return self.text is None and bool(mro & {"TorchvisionBackend", "BaseImageProcessorFast"})

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        if self.text is not None:
            enc = self.processor(images=[image], text=[self.text], return_tensors="pt")
            return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
        pv = self.processor(images=image, return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
        return {"pixel_values": pv}


def default_prompt(resolved: ResolvedModel) -> str | None:
    if resolved.family == "florence2" or "florence" in resolved.model_type:
        return FLORENCE_TASK
    if resolved.family == "image-text-to-text":
        return DEFAULT_INSTRUCTION
    return None  # BLIP, GIT, BLIP-2 caption unconditionally; VED takes no prompt


def _processor_text(family: str, processor: Any, prompt: str | None) -> str:
    """The text each per-image processor call gets: through the chat template if any."""
    prompt = prompt or ""
    if family == "image-text-to-text" and getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt


def make_preprocessor(
    resolved: ResolvedModel, processor: Any, image_processor: Any, prompt: str | None
) -> HFPreprocessor:
    if resolved.family in PER_IMAGE_TEXT:
        pre = HFPreprocessor(processor, _processor_text(resolved.family, processor, prompt))
        if resolved.family == "florence2":
            _check_florence_prompt(pre)
        return pre
    return HFPreprocessor(image_processor, None)


def _check_florence_prompt(pre: HFPreprocessor) -> None:
    """Florence-2's processor checks a task prompt only when it meets an image ("<CAPTION> more
    words" is refused): try one blank image now, so a bad --prompt fails at load, once, rather
    than on every image."""
    try:
        pre(Image.new("RGB", (8, 8)))
    except (ValueError, AssertionError) as e:  # the hub repos' own processors assert
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaptioningError(
            f"--prompt {pre.text!r}: Florence-2 takes a task token alone ({FLORENCE_TASK}, "
            f"<DETAILED_CAPTION>, <CAPTION>) or plain text, not both ({reason})"
        ) from e


def hf_preprocessor(name_or_path: str, options: CaptionerOptions) -> HFPreprocessor:
    """HFCaptioner(...).preprocessor() without loading the model's weights (processor only)."""
    resolved = resolve(
        name_or_path,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
    )
    processor, image_processor, _ = load_processor(resolved, options)
    prompt = default_prompt(resolved) if options.prompt is None else options.prompt
    return make_preprocessor(resolved, processor, image_processor, prompt)
