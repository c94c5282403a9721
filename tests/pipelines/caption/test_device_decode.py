"""--decode-on device: plain JPEGs travel undecoded to the captioner, which decodes and
preprocesses them where the model runs (nvJPEG on a GPU; here, on the CPU, the same code with
libjpeg-turbo). The output must equal the CPU path's, and broken files must still become failure
rows with their decode reason."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from PIL import Image

from captioning.api import CaptionerOptions
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from captioning.images.decode import DecodeConfig
from pipelines.caption.pipeline import CaptionConfig, run_caption
from tests.captioning.hf.tiny import build
from tests.pipelines.cli.test_cli import imgindex

pytestmark = pytest.mark.slow

NO_DRAFT = DecodeConfig(draft_size=(100_000, 100_000))  # full-size decodes on both paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("jpegs")
    write_archive(
        str(out), ArchiveConfig(images=6, seed=8, format="folder", workers=1, image_format="jpg")
    )
    good = (out / "000000000.jpg").read_bytes()
    (out / "cut.jpg").write_bytes(good[: len(good) // 3])  # header fine, pixels missing
    (out / "empty.jpg").write_bytes(b"")
    image = Image.open(io.BytesIO(good))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: must take the Pillow path and keep its displayed size
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    (out / "turned.jpg").write_bytes(buf.getvalue())
    image.save(out / "flat.png")
    return out


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return build("blip", tmp_path_factory.mktemp("models") / "blip")


def _run(folder, blip, out, decode_on: str):
    summary = run_caption(
        CaptionConfig(
            input=str(folder),
            out=str(out),
            model=f"hf:{blip}",
            batch_size=4,
            captioner=CaptionerOptions(device="cpu", beam_size=1, max_length=6, threads=1),
            decode=NO_DRAFT,
            decode_on=decode_on,
        ),
        [],
    )
    captions = {r["key"]: r for r in pq.read_table(out / "captions").to_pylist()}
    failures = {r["key"]: r for r in pq.read_table(out / "failures").to_pylist()}
    return summary, captions, failures


def test_device_decode_gives_the_cpu_paths_rows(folder, blip, tmp_path, monkeypatch):
    from captioning.hf.captioner import HFCaptioner

    sent: list[int] = []  # files per preprocess_encoded call (the local runner is in-process)
    original = HFCaptioner.preprocess_encoded

    def counting(self, datas):
        sent.append(len(datas))
        return original(self, datas)

    monkeypatch.setattr(HFCaptioner, "preprocess_encoded", counting)
    cpu = _run(folder, blip, tmp_path / "cpu", "cpu")
    assert sent == []
    dev = _run(folder, blip, tmp_path / "device", "device")
    # the 6 world JPEGs and the cut one; the turned JPEG, the PNG and the empty file stay on the CPU
    assert sum(sent) == 7
    for summary, _captions, failures in (cpu, dev):
        assert summary.read == 10 and summary.captioned == 8 and summary.balanced
        assert {k: (f["stage"], f["error_type"]) for k, f in failures.items()} == {
            "cut.jpg": ("decode", "truncated"),
            "empty.jpg": ("decode", "empty"),
        }
    fields = ("caption", "width", "height", "format", "sha256")
    assert {k: [r[f] for f in fields] for k, r in dev[1].items()} == {
        k: [r[f] for f in fields] for k, r in cpu[1].items()
    }
    turned, plain = dev[1]["turned.jpg"], dev[1]["000000000.jpg"]
    assert (turned["width"], turned["height"]) == (plain["height"], plain["width"])


def test_decode_on_device_is_refused_where_it_cannot_work(folder, tmp_path):
    proc = imgindex("caption", str(folder), "--out", str(tmp_path / "o"), "--decode-on", "gpu")
    assert proc.returncode == 2 and "--decode-on must be one of auto, cpu, device" in proc.stderr
    proc = imgindex("caption", str(folder), "--out", str(tmp_path / "o"), "--decode-on", "device")
    assert proc.returncode == 2 and "cannot decode on its device" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_a_device_error_costs_one_failure_row_not_the_batch():
    from captioning.api import CaptionResult
    from captioning.images.device_decode import EncodedImage
    from captioning.records import ImageInput
    from captioning.steps import CaptionFailure
    from pipelines.caption.handler import CaptionModelHandler

    class FlakyDevice:  # fails any batch holding the poisoned file, as a CUDA error would
        def preprocess_encoded(self, datas):
            if b"poison" in datas:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return [{"pixel_values": d} for d in datas]

        def caption(self, inputs):
            return [CaptionResult(f"seen {x['pixel_values'].decode()}", (), None) for x in inputs]

    datas = [b"a", b"poison", b"b"]
    batch = [ImageInput(d.decode(), "s", "m", "h", 1, 1, "JPEG", EncodedImage(d)) for d in datas]
    handler = CaptionModelHandler(None, CaptionerOptions(device="cpu"), batch_size=3)
    out = [r.inference for r in handler.run_inference(batch, FlakyDevice())]
    assert [o.caption for o in out if isinstance(o, CaptionResult)] == ["seen a", "seen b"]
    assert out[1] == CaptionFailure(
        "RuntimeError", "CUDA error: an illegal memory access was encountered", stage="decode"
    )
