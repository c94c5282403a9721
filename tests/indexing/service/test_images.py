"""Thumbnails: size, aspect, EXIF rotation, transparency, bad bytes; the byte-bounded LRU."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from indexing.service.images import ImageDecodeError, ThumbnailCache, content_type, make_thumbnail


def encoded(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_content_type_follows_the_bytes_not_a_name(fmt: str, kind: str) -> None:
    assert content_type(encoded(Image.new("RGB", (4, 4)), fmt)) == kind


def test_unknown_bytes_are_octet_stream() -> None:
    assert content_type(b"<html>") == "application/octet-stream"
    assert content_type(b"") == "application/octet-stream"


@pytest.mark.parametrize("size", [16, 100, 256])
def test_a_thumbnail_is_a_jpeg_within_size_keeping_aspect(size: int) -> None:
    original = Image.new("RGB", (400, 200), (200, 10, 10))
    thumb = Image.open(io.BytesIO(make_thumbnail(encoded(original, "PNG"), size)))
    assert thumb.format == "JPEG"
    assert max(thumb.size) == size
    assert abs(thumb.size[0] / thumb.size[1] - 2.0) < 0.1


def test_a_small_image_is_not_enlarged() -> None:
    thumb = Image.open(io.BytesIO(make_thumbnail(encoded(Image.new("RGB", (20, 10)), "PNG"), 256)))
    assert thumb.size == (20, 10)


def test_transparency_is_flattened_onto_white() -> None:
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    thumb = Image.open(io.BytesIO(make_thumbnail(encoded(clear, "PNG"), 16))).convert("RGB")
    assert min(thumb.getpixel((8, 8))) > 240


def test_exif_rotation_is_applied() -> None:
    wide = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    thumb = Image.open(io.BytesIO(make_thumbnail(encoded(wide, "JPEG", exif=exif), 64)))
    assert thumb.size[1] > thumb.size[0]


@pytest.mark.parametrize(
    "data", [b"", b"not an image", b"\xff\xd8\xff\xe0 truncated jpeg", b"\x89PNG\r\n\x1a\n"]
)
def test_undecodable_bytes_are_an_image_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        make_thumbnail(data, 64)


def test_a_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(Image.new("RGB", (300, 300)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 2)  # a warning, made an error
    with pytest.raises(ImageDecodeError):
        make_thumbnail(data, 64)


def test_thumbnail_cache_is_bounded_by_bytes() -> None:
    cache = ThumbnailCache(max_bytes=10)
    cache.put(("a", 16), b"12345")
    cache.put(("b", 16), b"12345")
    assert cache.get(("a", 16)) == b"12345"  # a is now the most recent
    cache.put(("c", 16), b"123")
    assert cache.get(("b", 16)) is None
    assert cache.nbytes <= 10 and len(cache) == 2
    cache.put(("big", 16), b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get(("big", 16)) is None
    cache.put(("a", 16), b"1")  # replacing an item frees its bytes
    assert cache.nbytes == 4
