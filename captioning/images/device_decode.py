"""JPEG bytes -> image tensors on a device, with Pillow as the fallback for whatever nvJPEG refuses.

torchvision.io.decode_jpeg decodes a whole list of JPEGs in one call (nvJPEG's batched decoder on a
CUDA device, libjpeg-turbo on the CPU). One undecodable file fails that call, so on an error the
batch is retried one file at a time and only the files that still fail go to Pillow
(captioning.images.decode, with its EXIF, CMYK and bomb handling). nvJPEG ignores EXIF
orientation, so JPEGs that carry an orientation other than 1 (read by Pillow from the header)
also take the Pillow
path: the output is the image a user sees, whichever path decoded it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from captioning.images.decode import DecodeConfig, DecodeError, Header, decode_image, read_header

_JPEG_MAGIC = b"\xff\xd8\xff"
_DEFAULT_CONFIG = DecodeConfig()


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """A plain JPEG passed to the model's process undecoded, to be decoded on its device.

    The pipeline sends these instead of preprocessed tensors when the captioner decodes on its
    device (HFCaptioner.preprocess_encoded); `nbytes` is what Beam's batching counts.
    """

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    images: list[torch.Tensor | None]  # per input, (3, H, W) uint8 on the device; None = failed
    errors: list[DecodeError | None]  # per input, why it could not be decoded, else None
    on_device: int  # how many the batched decoder handled (the rest went through Pillow)


def plain_jpeg_header(data: bytes, config: DecodeConfig = _DEFAULT_CONFIG) -> Header | None:
    """The header of a JPEG that nvJPEG can decode as the user sees it (no EXIF turn), else None.

    Raises DecodeError for a header decode_image would refuse (empty, oversized, unreadable).
    """
    if not data.startswith(_JPEG_MAGIC):
        return None
    header = read_header(data, config)
    return header if header.format == "JPEG" and header.orientation == 1 else None


def is_plain_jpeg(data: bytes, config: DecodeConfig = _DEFAULT_CONFIG) -> bool:
    try:
        return plain_jpeg_header(data, config) is not None
    except DecodeError:
        return False  # the Pillow path decodes it and names the reason


def _pillow(data: bytes, config: DecodeConfig, device: torch.device) -> torch.Tensor:
    image = decode_image(data, config).image
    array = np.asarray(image.convert("RGB"))  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(device)  # (3, H, W)


def decode_batch(
    datas: Sequence[bytes],
    device: str | torch.device = "cuda",
    config: DecodeConfig | None = None,
) -> DecodedBatch:
    """Decode every input; plain JPEGs in one batched call on `device`, the others via Pillow."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    config = DecodeConfig() if config is None else config
    images: list[torch.Tensor | None] = [None] * len(datas)
    errors: list[DecodeError | None] = [None] * len(datas)
    jpeg = [i for i, d in enumerate(datas) if is_plain_jpeg(d, config)]
    fast: dict[int, torch.Tensor] = {}
    if jpeg:
        tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg]
        try:
            out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
            fast = dict(zip(jpeg, out, strict=True))
        except RuntimeError:  # one bad file fails the batched call: retry one at a time
            for i, t in zip(jpeg, tensors, strict=True):
                try:
                    fast[i] = decode_jpeg(t, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass  # Pillow below: it decodes what it can and names the reason otherwise
    for i, data in enumerate(datas):
        if i in fast:
            images[i] = fast[i]
            continue
        try:
            images[i] = _pillow(data, config, device)
        except DecodeError as e:
            errors[i] = e
    return DecodedBatch(images, errors, len(fast))
