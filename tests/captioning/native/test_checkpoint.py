"""Checkpoints: safetensors + config.json + vocab.json, identical captions after a round trip."""

from __future__ import annotations

import json

import pytest
import torch

from captioning.api import CaptionerOptions
from captioning.native.captioner import NativeCaptioner
from captioning.native.checkpoint import CheckpointError, load_checkpoint


def test_round_trip_gives_identical_captions(tiny_checkpoint):
    from PIL import Image

    torch.manual_seed(3)
    images = [Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()) for _ in range(4)]
    a = NativeCaptioner(tiny_checkpoint, CaptionerOptions(device="cpu", beam_size=2))
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.name == "tiny" and ckpt.version == "t1"
    b = NativeCaptioner(tiny_checkpoint, CaptionerOptions(device="cpu", beam_size=2))
    first = a.caption([a.preprocess(i) for i in images])
    second = b.caption([b.preprocess(i) for i in images])
    assert [r.caption for r in first] == [r.caption for r in second]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])


def test_missing_files_are_named(tiny_checkpoint):
    (tiny_checkpoint / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="missing vocab.json"):
        load_checkpoint(tiny_checkpoint)


def test_corrupt_weights_are_a_clear_error(tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tiny_checkpoint)


def test_vocab_and_config_disagreeing_is_a_clear_error(tiny_checkpoint):
    meta = json.loads((tiny_checkpoint / "config.json").read_text())
    meta["model"]["vocab_size"] += 1
    (tiny_checkpoint / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="vocab.json has"):
        load_checkpoint(tiny_checkpoint)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")


def test_model_free_preprocessor_matches_the_captioner(tiny_checkpoint):
    from PIL import Image

    from captioning.registry import load_preprocessor

    cap = NativeCaptioner(tiny_checkpoint, CaptionerOptions(device="cpu"))
    prep = load_preprocessor(str(tiny_checkpoint))
    img = Image.new("RGB", (123, 45), (10, 200, 30))
    assert torch.equal(prep(img), cap.preprocess(img))
    assert prep(img).shape == (3, 32, 32)


def test_bf16_encoder_runs_in_bf16_and_decodes_in_float32(tiny_checkpoint):
    from PIL import Image

    from captioning.native.captioner import native_encoder_dtype

    torch.manual_seed(4)
    images = [Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()) for _ in range(3)]
    f32 = NativeCaptioner(tiny_checkpoint, CaptionerOptions(device="cpu", dtype="float32"))
    bf16 = NativeCaptioner(tiny_checkpoint, CaptionerOptions(device="cpu", dtype="bfloat16"))
    assert f32.encoder_dtype == torch.float32 and bf16.encoder_dtype == torch.bfloat16
    x = torch.stack([f32.preprocess(i) for i in images]).float() / 255  # (3, 3, S, S)
    a, b = f32.model.encoder(x), bf16.model.encoder(x)  # (B, N, C) each
    assert b.dtype == torch.float32  # the decoder gets float32 features
    assert not torch.equal(a, b)  # the convolutions really ran in bf16 ...
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)  # ... and stay close to float32
    results = bf16.caption([bf16.preprocess(i) for i in images])
    assert len(results) == 3 and all(isinstance(r.caption, str) for r in results)
    # auto: bf16 on cuda, float32 or bf16 on a CPU depending on its bf16 support
    assert native_encoder_dtype(CaptionerOptions(dtype="auto"), torch.device("cuda")) == (
        torch.bfloat16
    )
    assert native_encoder_dtype(CaptionerOptions(dtype="float16"), torch.device("cpu")) == (
        torch.float16
    )


def test_encoder_runs_in_chunks_and_gives_the_whole_batch_features(tiny_checkpoint):
    cap = NativeCaptioner(tiny_checkpoint, CaptionerOptions(device="cpu", dtype="float32"))
    size = cap.image_size
    torch.manual_seed(5)
    x = torch.rand(70, 3, size, size)  # 32 + 32 + 6 images
    with torch.inference_mode():
        whole = cap.model.encoder.inner(x)  # (70, N, C), one call
        chunked = cap.model.encoder(x)
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, atol=1e-5)
