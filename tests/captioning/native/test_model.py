"""The Show-Attend-Tell model and its decoders."""

from __future__ import annotations

import torch

from captioning.native.beam_search import DecodeOptions, beam_search, greedy
from captioning.native.config import ModelConfig
from captioning.native.model import CaptionModel, caption_loss
from captioning.native.vocab import Vocabulary


def tiny(vocab_size: int = 12, **kw) -> CaptionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab_size,
        image_size=32,
        encoder_channels=(8, 16),
        embed_dim=16,
        hidden_dim=32,
        attention_dim=16,
        max_length=8,
        **kw,
    )
    return CaptionModel(cfg)


def test_shapes_through_the_model():
    model = tiny()
    images = torch.randn(3, 3, 32, 32)
    captions = torch.randint(1, 12, (3, 7))
    feats = model.encoder(images)
    assert feats.shape == (3, 8 * 8, 16)  # 32 / 2**2 = 8: an 8x8 grid of 16 channels
    logits, alphas = model(images, captions)
    assert logits.shape == (3, 6, 12)
    assert alphas.shape == (3, 6, 64)


def test_attention_weights_sum_to_one():
    model = tiny().eval()
    _, alphas = model(torch.randn(2, 3, 32, 32), torch.randint(1, 12, (2, 5)))
    assert torch.allclose(alphas.sum(-1), torch.ones(2, 4), atol=1e-5)
    assert (alphas >= 0).all()


def test_config_rejects_a_size_the_encoder_cannot_halve():
    import pytest

    with pytest.raises(ValueError, match="multiple of 4"):
        ModelConfig(vocab_size=12, image_size=30, encoder_channels=(8, 16))


def test_beam_width_one_equals_greedy():
    model = tiny().eval()
    images = torch.randn(5, 3, 32, 32)
    g = greedy(model, images, max_length=8)
    b = beam_search(model, images, DecodeOptions(beam_size=1, max_length=8, length_penalty=0.0))
    assert g.tokens == b.tokens
    assert torch.allclose(g.scores, b.scores, atol=1e-5)
    assert torch.allclose(g.alphas, b.alphas, atol=1e-6)


def test_batched_beam_search_equals_one_image_at_a_time():
    model = tiny().eval()
    images = torch.randn(6, 3, 32, 32)
    options = DecodeOptions(beam_size=4, max_length=8)
    batched = beam_search(model, images, options)
    for i in range(6):
        single = beam_search(model, images[i : i + 1], options)
        assert single.tokens[0] == batched.tokens[i]
        assert abs(float(single.scores[0]) - float(batched.scores[i])) < 1e-4


def test_beam_search_never_scores_below_greedy_without_length_penalty():
    # Beam search keeps the greedy path among its candidates, so its best raw log-probability
    # can only be higher or equal.
    model = tiny().eval()
    images = torch.randn(8, 3, 32, 32)
    g = greedy(model, images, max_length=8)
    b = beam_search(model, images, DecodeOptions(beam_size=3, max_length=8, length_penalty=0.0))
    assert (b.scores >= g.scores - 1e-4).all()


def test_a_few_training_steps_lower_the_loss():
    vocab = Vocabulary.build(["a red circle", "a blue square"])
    model = tiny(vocab_size=len(vocab))
    torch.manual_seed(1)
    images = torch.randn(8, 3, 32, 32)
    caps = torch.tensor(
        [vocab.encode("a red circle" if i % 2 else "a blue square", 8) for i in range(8)]
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        logits, alphas = model(images, caps)
        loss = caption_loss(logits, alphas, caps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_vocabulary_round_trip(tmp_path):
    vocab = Vocabulary.build(["A large red circle, left of a small blue square."])
    ids = vocab.encode("a large red circle left of a small blue square", 20)
    assert vocab.decode(ids) == "a large red circle left of a small blue square"
    assert vocab.decode(vocab.encode("a purple circle", 20)) == "a <unk> circle"
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab


def test_beam_candidates_are_sorted_and_start_with_the_caption():
    model = tiny().eval()
    out = beam_search(model, torch.randn(3, 3, 32, 32), DecodeOptions(beam_size=4, max_length=8))
    for tokens, candidates in zip(out.tokens, out.candidates, strict=True):
        assert candidates[0] == tokens
        assert 1 <= len(candidates) <= 4


def test_native_captioner_returns_n_candidates(tiny_checkpoint):
    from PIL import Image

    from captioning.api import CaptionerOptions
    from captioning.native.captioner import NativeCaptioner

    cap = NativeCaptioner(
        tiny_checkpoint, CaptionerOptions(device="cpu", beam_size=3, num_return_sequences=3)
    )
    img = Image.new("RGB", (40, 30), (200, 30, 30))
    result = cap.caption([cap.preprocess(img)])[0]
    assert result.candidates[0] == result.caption and len(result.candidates) == 3


def test_model_config_defaults_are_the_shipped_models() -> None:
    """`imgindex train` takes its architecture defaults from ModelConfig: they must be the shipped
    default model's (and `make train-default`'s recipe), not an older, smaller model's."""
    import json

    from captioning.native.checkpoint import DEFAULT_MODEL_DIR

    shipped = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["model"]
    defaults = ModelConfig(vocab_size=shipped["vocab_size"])
    assert defaults.image_size == shipped["image_size"] == 128
    assert list(defaults.encoder_channels) == shipped["encoder_channels"]
    for name in ("embed_dim", "hidden_dim", "attention_dim", "max_length"):
        assert getattr(defaults, name) == shipped[name], name
