"""decode_image: every case is built in the test with Pillow; no image files are committed."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from captioning.images.decode import DecodeConfig, DecodedImage, DecodeError, decode_image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noisy(size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to declare width x height (CRC fixed up)."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    # 8-byte signature, then IHDR: length (4) "IHDR" (4) width (4) height (4) ... CRC at 29.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def pixel(decoded: DecodedImage, xy: tuple[int, int]) -> tuple[int, int, int]:
    return decoded.image.getpixel(xy)


def assert_close(actual, expected, tol: int = 12) -> None:
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (actual, expected)


def assert_fails(data: bytes, reason: str, config: DecodeConfig | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_image(data, config or DecodeConfig())
    err = info.value
    assert err.reason == reason, str(err)
    assert "\n" not in err.message and err.message
    return err


# --------------------------------------------------------------------------- failures


def test_empty_bytes():
    assert_fails(b"", "empty")


def test_text_named_jpg_is_unidentified():
    assert_fails(b"this is not a picture, just some text in a .jpg\n" * 3, "unidentified")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_file_is_a_failure(fmt):
    data = encode(noisy(), fmt)
    err = assert_fails(data[: len(data) // 2], "truncated")
    assert err.message.startswith("truncated image data: the file ends before the picture does")


def test_truncation_is_not_tolerated_globally():
    data = encode(noisy(), "JPEG")
    assert_fails(data[: len(data) // 2], "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_garbage_after_a_valid_header_is_corrupt():
    data = bytearray(encode(noisy(), "PNG"))
    assert data[37:41] == b"IDAT"
    data[41:43] = b"\xff\xff"  # the zlib stream's header: not short, just wrong
    assert_fails(bytes(data), "corrupt")


def test_bomb_declared_in_header_is_refused_by_default():
    limit = Image.MAX_IMAGE_PIXELS
    assert_fails(png_declaring(20000, 20000), "decompression_bomb")
    assert Image.MAX_IMAGE_PIXELS == limit


def test_own_pixel_limit_is_checked_from_the_header():
    # 81M pixels: under Pillow's own limit (~89M), over ours; nothing is decoded to find out.
    err = assert_fails(png_declaring(9000, 9000), "decompression_bomb", DecodeConfig(50_000_000))
    assert "9000x9000" in err.message


def test_small_max_pixels_on_a_normal_image():
    data = encode(noisy((64, 64)), "PNG")
    assert_fails(data, "decompression_bomb", DecodeConfig(max_pixels=4000))
    assert decode_image(data, DecodeConfig(max_pixels=4096)).width == 64


def test_pillows_own_bomb_error_is_mapped():
    # Our limit lets it through; Pillow refuses anything over 2 * MAX_IMAGE_PIXELS itself.
    err = assert_fails(png_declaring(20000, 20000), "decompression_bomb", DecodeConfig(10**10))
    assert "Pillow" in err.message


def test_pillows_bomb_warning_is_mapped_when_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert_fails(png_declaring(10000, 9000), "decompression_bomb", DecodeConfig(10**10))


def test_error_is_a_value_error_and_pickles():
    err = assert_fails(b"", "empty")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.message) == (err.reason, err.message)
    assert str(again) == f"empty: {err.message}"


def test_config_validation():
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeConfig(max_pixels=0)
    with pytest.raises(ValueError, match="draft_size"):
        DecodeConfig(draft_size=(0, 256))


# --------------------------------------------------------------------------- conversions


def test_plain_rgb_png():
    decoded = decode_image(encode(Image.new("RGB", (10, 6), GREEN), "PNG"))
    assert (decoded.width, decoded.height, decoded.format) == (10, 6, "PNG")
    assert decoded.image.mode == "RGB" and decoded.image.size == (10, 6)
    assert pixel(decoded, (3, 3)) == GREEN


def test_cmyk_jpeg_becomes_rgb():
    # Pillow writes CMYK JPEGs with an Adobe marker and inverted ink; reading must undo both.
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.image.mode == "RGB" and decoded.format == "JPEG"
    assert_close(pixel(decoded, (16, 16)), RED)


def test_16_bit_grey_png_is_scaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode_image(data)
    assert_close(pixel(decoded, (4, 4)), (128, 128, 128), tol=1)  # 32768 / 257 = 127.5


def test_32_bit_int_grey_is_read_as_16_bit_range():
    data = encode(Image.new("I", (8, 8), 65535), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert pixel(decode_image(data), (0, 0)) == WHITE


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    img.paste(1, (4, 0, 8, 8))  # right half: palette index 1 (blue)
    decoded = decode_image(encode(img, "PNG", transparency=0))  # index 0 (red) is transparent
    assert pixel(decoded, (1, 1)) == WHITE
    assert pixel(decoded, (6, 1)) == BLUE


def test_rgba_and_la_are_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 128))
    decoded = decode_image(encode(rgba, "PNG"))
    assert pixel(decoded, (0, 0)) == WHITE
    assert_close(pixel(decoded, (1, 1)), (255, 127, 127), tol=1)

    la = decode_image(encode(Image.new("LA", (4, 4), (0, 0)), "PNG"))
    assert pixel(la, (2, 2)) == WHITE


def test_grayscale():
    decoded = decode_image(encode(Image.new("L", (5, 5), 77), "PNG"))
    assert decoded.image.mode == "RGB"
    assert pixel(decoded, (2, 2)) == (77, 77, 77)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_gives_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    decoded = decode_image(data)
    assert decoded.format == fmt
    assert_close(pixel(decoded, (8, 8)), RED, tol=2)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 8, 8))  # stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    # Turning clockwise carries the top-left corner to the top-right.
    assert_close(pixel(decoded, (17, 2)), RED, tol=30)
    assert_close(pixel(decoded, (2, 2)), BLUE, tol=30)
    assert_close(pixel(decoded, (17, 37)), BLUE, tol=30)


def test_exif_orientation_in_png_after_the_pixels():
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(img, "PNG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (20, 40)
    assert pixel(decoded, (17, 2)) == RED


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_spoil_the_picture():
    data = encode(Image.new("RGB", (8, 8), GREEN), "JPEG", exif=b"Exif\x00\x00II*\x00garbage")
    decoded = decode_image(data)
    assert decoded.image.size == (8, 8)


@pytest.mark.parametrize("size", [(1, 1), (20000, 16), (16, 20000)])
def test_extreme_sizes_decode(size):
    decoded = decode_image(encode(Image.new("RGB", size, GREEN), "PNG"))
    assert (decoded.width, decoded.height) == size
    assert decoded.image.size == size


def test_webp():
    decoded = decode_image(encode(Image.new("RGB", (16, 16), GREEN), "WEBP", lossless=True))
    assert decoded.format == "WEBP"
    assert pixel(decoded, (8, 8)) == GREEN


def test_jpeg_draft_reduces_but_reports_the_file_size():
    data = encode(Image.new("RGB", (2000, 2000), GREEN), "JPEG")
    decoded = decode_image(data)  # draft_size (256, 256): 2000 // 256 = 7 -> scale 1/4
    assert (decoded.width, decoded.height) == (2000, 2000)
    w, h = decoded.image.size
    assert 256 <= min(w, h) and max(w, h) < 2000
    assert_close(pixel(decoded, (w // 2, h // 2)), GREEN, tol=2)

    assert decode_image(data, DecodeConfig(draft_size=None)).image.size == (2000, 2000)


def test_multi_picture_jpeg_gives_first_picture_drafted():
    frames = [Image.new("RGB", (2000, 1500), c) for c in (GREEN, RED)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    decoded = decode_image(data)
    assert (decoded.format, decoded.width, decoded.height) == ("MPO", 2000, 1500)
    assert decoded.image.size == (500, 375)  # min(2000 // 256, 1500 // 256) = 5 -> scale 1/4
    assert_close(pixel(decoded, (10, 10)), GREEN, tol=2)


def test_draft_only_applies_to_jpeg_and_only_when_larger():
    png = decode_image(encode(Image.new("RGB", (600, 600), GREEN), "PNG"))
    assert png.image.size == (600, 600)
    small = decode_image(encode(Image.new("RGB", (300, 200), GREEN), "JPEG"))
    assert small.image.size == (300, 200)


def test_draft_respects_the_displayed_axes_of_a_rotated_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (2000, 1000), GREEN), "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, DecodeConfig(draft_size=(200, 400)))  # displayed 1000 x 2000
    assert (decoded.width, decoded.height) == (1000, 2000)
    w, h = decoded.image.size
    assert w >= 200 and h >= 400 and w < 1000
