"""captioning.images.device_decode on the CPU (the same code path as on a GPU, with libjpeg-turbo
instead of nvJPEG): batched JPEGs equal Pillow's pixels, everything else falls back to Pillow
with a reason."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from captioning.archives.synthetic.world import generate_image
from captioning.images.device_decode import decode_batch, is_plain_jpeg


def _jpeg(i: int) -> bytes:
    return generate_image(5, i, image_format="jpg").data


def _pillow_pixels(data: bytes) -> torch.Tensor:
    rgb = np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W)


def _with_orientation(data: bytes, orientation: int) -> bytes:
    image = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_batched_jpegs_match_pillow_exactly():
    datas = [_jpeg(i) for i in range(6)]
    out = decode_batch(datas, "cpu")
    assert out.on_device == 6 and out.errors == [None] * 6
    for data, image in zip(datas, out.images, strict=True):
        assert image is not None and image.dtype == torch.uint8
        assert torch.equal(image, _pillow_pixels(data))


def test_exif_rotated_jpeg_takes_the_pillow_path_and_is_rotated():
    plain = _jpeg(1)
    rotated = _with_orientation(plain, 6)  # 90 degrees clockwise: width and height swap
    assert not is_plain_jpeg(rotated)
    assert is_plain_jpeg(_with_orientation(plain, 1))  # orientation 1 needs no turning
    out = decode_batch([plain, rotated], "cpu")
    assert out.on_device == 1
    h, w = out.images[0].shape[1:]
    assert out.images[1].shape[1:] == (w, h)


def test_other_formats_and_bad_files_fall_back_with_reasons():
    png = generate_image(5, 2, image_format="png").data
    good = _jpeg(3)
    truncated = good[: len(good) // 3]
    datas = [good, png, b"", b"not a picture at all", truncated, _jpeg(4)]
    out = decode_batch(datas, "cpu")
    assert out.images[0] is not None and out.images[5] is not None
    assert torch.equal(out.images[1], _pillow_pixels(png))
    assert [e.reason for e in out.errors if e is not None] == ["empty", "unidentified", "truncated"]
    # a truncated JPEG fails the batched call; the others are still decoded on the fast path
    assert out.images[4] is None and out.errors[4] is not None
    assert out.on_device == 2
    assert [e is None for e in out.errors] == [True, True, False, False, False, True]
