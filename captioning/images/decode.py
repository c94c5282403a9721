"""Image file bytes -> DecodedImage (RGB, EXIF-oriented) or DecodeError with a stable reason code.

Reasons: "empty", "unidentified", "truncated", "decompression_bomb", "unsupported_mode", "corrupt".
Pillow's process-wide switches (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) are read,
never written: this module may run in many threads of one worker.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from captioning.errors import CaptioningError

logger = logging.getLogger(__name__)

_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 turn the picture a quarter, so the displayed width is the stored height.
_SWAPS_AXES = frozenset({5, 6, 7, 8})
# Camera JPEGs holding more than one picture open as "MPO"; libjpeg drafts them the same way.
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# What Pillow's decoders raise on malformed input (its fuzzers hold it to these).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


class DecodeError(CaptioningError):
    """An image's bytes cannot become an RGB picture. `reason` is a short stable code."""

    def __init__(self, reason: str, message: str):
        # Both go to Exception.args so that the error survives pickling between Beam workers.
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    """How to decode.

    Attributes:
        max_pixels: largest width * height a file may declare. Pillow's own guard still applies
            on top: files over 2 * PIL.Image.MAX_IMAGE_PIXELS are refused whatever this says.
        draft_size: for JPEG (and MPO), let libjpeg decode at the smallest 1/2, 1/4 or 1/8
            scale that is still at least this (width, height); None decodes at full size.
    """

    max_pixels: int = 100_000_000
    draft_size: tuple[int, int] | None = (256, 256)

    def __post_init__(self) -> None:
        if self.max_pixels <= 0:
            raise CaptioningError(
                f"max_pixels must be > 0, got {self.max_pixels}; e.g. 100_000_000"
            )
        if self.draft_size is not None and (len(self.draft_size) != 2 or min(self.draft_size) <= 0):
            raise CaptioningError(
                f"draft_size must be a (width, height) of positive ints or None, "
                f"got {self.draft_size!r}"
            )


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Image.Image  # mode "RGB", EXIF orientation applied, maybe reduced by the JPEG draft
    width: int  # of the file as displayed (after EXIF transpose), before any draft reduction
    height: int
    format: str  # Pillow's format name: "JPEG", "PNG", "WEBP", "GIF", ...


def decode_image(data: bytes, config: DecodeConfig = DecodeConfig()) -> DecodedImage:
    """Decode one image file into an RGB picture.

    Animated files give their first frame; transparency is composited on white; 16-bit
    greyscale is scaled to 8 bits; EXIF orientation is applied.

    Args:
        data: the encoded file.
        config: size guard and JPEG draft size.

    Returns:
        The picture with the file's displayed size and format.

    Raises:
        DecodeError: with `reason` one of "empty", "unidentified", "truncated",
            "decompression_bomb", "unsupported_mode", "corrupt".
    """
    with _pillow_errors(data):
        with Image.open(io.BytesIO(data)) as img:
            return _decode_opened(img, config)


@dataclass(frozen=True, slots=True)
class Header:
    width: int  # as stored; orientation 5-8 shows it turned by 90 degrees
    height: int
    format: str  # Pillow's format name
    orientation: int  # EXIF orientation, 1 = shown as stored


def read_header(data: bytes, config: DecodeConfig = DecodeConfig()) -> Header:
    """What the file's header declares, decoding no pixels.

    Raises the DecodeError decode_image would raise for an empty, unidentified or oversized file;
    an error in the pixel data itself only shows when the pixels are decoded.
    """
    with _pillow_errors(data):
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            _check_size(w, h, config)
            fmt = img.format or "UNKNOWN"
            # A JPEG's EXIF sits in its header; other formats may keep it after the pixels.
            orientation = _orientation(img) if fmt in _JPEG_FORMATS else 1
            return Header(w, h, fmt, orientation)


@contextlib.contextmanager
def _pillow_errors(data: bytes) -> Iterator[None]:
    """Pillow's exceptions while opening or decoding `data` -> DecodeError with a stable reason."""
    if len(data) == 0:
        raise DecodeError("empty", "the file is empty (0 bytes)")
    try:
        yield
    except DecodeError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise DecodeError(
            "unidentified", f"not an image Pillow can read ({len(data)} bytes, starts {data[:8]!r})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard, raised from Image.open before ours can look; the warning arrives
        # here only where warnings are turned into errors (python -W error).
        raise DecodeError("decompression_bomb", f"refused by Pillow: {_one_line(exc)}") from exc
    except _PIL_ERRORS as exc:
        text = _one_line(exc)
        if "truncated" in text.lower() or _riff_is_short(data):
            raise DecodeError(
                "truncated",
                f"truncated image data: the file ends before the picture does ({text})",
            ) from exc
        raise DecodeError("corrupt", f"the image data cannot be decoded: {text}") from exc


def _check_size(w: int, h: int, config: DecodeConfig) -> None:
    if w * h > config.max_pixels:
        raise DecodeError(
            "decompression_bomb",
            f"the file declares {w}x{h} = {w * h:,} pixels, "
            f"over the limit of {config.max_pixels:,}",
        )


def _decode_opened(img: Image.Image, config: DecodeConfig) -> DecodedImage:
    stored_w, stored_h = img.size  # declared by the header; no pixels decoded yet
    _check_size(stored_w, stored_h, config)
    fmt = img.format or "UNKNOWN"
    if config.draft_size is not None and fmt in _JPEG_FORMATS:
        # A JPEG's EXIF sits in its header, so reading it decodes nothing. The draft box is in
        # stored axes; the requested size is in displayed axes.
        dw, dh = config.draft_size
        want = (dh, dw) if _orientation(img) in _SWAPS_AXES else (dw, dh)
        if stored_w > want[0] or stored_h > want[1]:
            img.draft("RGB", want)  # (W, H) -> (ceil(W/s), ceil(H/s)), s in {1, 2, 4, 8}
    img.load()  # first frame only for animated GIF/WebP/PNG; errors here are the file's
    # Only after load: PNG and WebP may keep EXIF after the pixels, and getexif() would load
    # them itself, hiding a decoding error from us.
    orientation = _orientation(img)
    width, height = (stored_h, stored_w) if orientation in _SWAPS_AXES else (stored_w, stored_h)
    if orientation != 1:
        img = _exif_transpose(img)
    return DecodedImage(image=_to_rgb(img), width=width, height=height, format=fmt)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_ERRORS as exc:
        # A broken EXIF block does not spoil the picture: show it as stored.
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except _PIL_ERRORS as exc:  # same reasoning as _orientation
        logger.debug("ignoring EXIF orientation that cannot be applied: %s", exc)
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> a new "RGB" image (never `img` itself, which the caller closes)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples: 65535 -> 255. "I" from a PNG holds 16-bit values too; clip the rest.
        arr = np.asarray(img).astype(np.int64)  # (H, W), uint16 or int32
        arr = (np.clip(arr, 0, 65535) + 128) // 257  # (H, W) in 0..255
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in img.info and mode in ("P", "L", "RGB")
    ):
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # Pillow lacks La->RGBA
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # CMYK (Adobe inversion already undone by Pillow), L, 1, P, ...
    except ValueError as exc:
        raise DecodeError(
            "unsupported_mode", f"pixel mode {mode!r} cannot be converted to RGB: {exc}"
        ) from exc


def _riff_is_short(data: bytes) -> bool:
    """A WebP whose RIFF header declares more bytes than the file has (Pillow says 'corrupt')."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    return len(data) < int.from_bytes(data[4:8], "little") + 8


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
