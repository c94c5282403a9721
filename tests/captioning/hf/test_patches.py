"""captioning.hf.patches: each speed fix against the unpatched model it replaces (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import BlipForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from captioning.api import CaptionerOptions
from captioning.hf.captioner import HFCaptioner
from captioning.hf.patches import (
    CROSS_KV,
    _once_per_row,
    _run_starts,
    sdpa_blip_vision,
    speed_up,
    undo_speed_ups,
)
from tests.captioning.hf.tiny import build

BEAM3 = CaptionerOptions(device="cpu", beam_size=3, num_return_sequences=2, max_length=6)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (24 + 5 * i, 40, 3), dtype=np.uint8)) for i in range(4)
    ]


def test_blip_vision_sdpa_matches_eager(tmp_path, images):
    d = build("blip", tmp_path / "blip")
    fast = HFCaptioner(str(d), BEAM3)
    layers = fast.model.config.vision_config.num_hidden_layers
    assert fast.speed_fixes == ["sdpa-vision", "cross-kv-once"]
    assert sum("forward" in m.__dict__ for m in fast.model.vision_model.modules()) == layers

    eager = BlipForConditionalGeneration.from_pretrained(d).eval()
    pixels = torch.cat([fast.preprocess(im)["pixel_values"] for im in images])  # (4, 3, S, S)
    with torch.inference_mode():
        got = fast.model.vision_model(pixel_values=pixels).last_hidden_state
        want = eager.vision_model(pixel_values=pixels).last_hidden_state
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)

    inputs = [fast.preprocess(im) for im in images]
    patched = fast.caption(inputs)
    undo_speed_ups(fast.model)
    plain = fast.caption(inputs)
    assert [r.candidates for r in patched] == [r.candidates for r in plain]
    assert np.allclose([r.score for r in patched], [r.score for r in plain], atol=1e-5)


def test_git_beam_search_encodes_each_image_once(tmp_path, images):
    cap = HFCaptioner(str(build("git", tmp_path / "git")), BEAM3)
    assert cap.speed_fixes == ["encode-once"]
    rows: list[int] = []
    embed = cap.model.git.image_encoder.vision_model.embeddings  # inside the patched forward
    hook = embed.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    inputs = [cap.preprocess(im) for im in images]
    once = cap.caption(inputs)
    undo_speed_ups(cap.model)
    beams = cap.caption(inputs)
    hook.remove()
    assert rows == [len(images), len(images) * 3]  # patched: 4 images; unpatched: 4 x 3 beams
    assert [r.candidates for r in once] == [r.candidates for r in beams]
    assert np.allclose([r.score for r in once], [r.score for r in beams], atol=1e-5)


@pytest.mark.parametrize("family", ["blip", "vision-encoder-decoder", "florence2"])
def test_cross_attention_projects_each_image_once(tmp_path, images, family):
    cap = HFCaptioner(str(build(family, tmp_path / family)), BEAM3)
    assert "cross-kv-once" in cap.speed_fixes
    inputs = [cap.preprocess(im) for im in images]
    fast = cap.caption(inputs)

    # Put a row counter under each cross-attention K/V projection, then the fix over it again.
    undo_speed_ups(cap.model)
    rows: list[int] = []

    def counted(forward):
        def run(x, *args, **kwargs):
            rows.append(x.shape[0])
            return forward(x, *args, **kwargs)

        return run

    projections = [m for n, m in cap.model.named_modules() if n.endswith(CROSS_KV)]
    assert len(projections) >= 2
    for m in projections:
        m.forward = counted(m.forward)
    plain = cap.caption(inputs)  # rows seen without the fix
    without = list(rows)
    rows.clear()
    speed_up(cap.model, family)
    again = cap.caption(inputs)
    assert set(without) == {len(images) * 3}  # each image's features projected once per beam
    assert set(rows) == {len(images)} and len(rows) == len(without)
    assert (
        [r.candidates for r in fast]
        == [r.candidates for r in plain]
        == [r.candidates for r in again]
    )
    assert np.allclose([r.score for r in fast], [r.score for r in plain], atol=1e-5)


def test_once_per_image_never_merges_distinct_images():
    seen: list[torch.Tensor] = []

    def encoder(px: torch.Tensor, scale: float = 1.0) -> BaseModelOutputWithPooling:
        seen.append(px)
        feats = px.flatten(1) * scale  # (N, C*H*W)
        return BaseModelOutputWithPooling(
            last_hidden_state=feats, pooler_output=feats.sum(1), hidden_states=(feats, feats + 1)
        )

    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    # rows: a a b a  -> the last a is not next to the first two, so it is encoded again
    px = torch.cat([a, a, b, a])
    out = _once_per_row(encoder)(px, scale=2.0)
    want = encoder(px, scale=2.0)
    assert [t.shape[0] for t in seen] == [3, 4]  # patched call: rows a, b, a; then the reference
    torch.testing.assert_close(out.last_hidden_state, want.last_hidden_state)
    torch.testing.assert_close(out.pooler_output, want.pooler_output)
    assert len(out.hidden_states) == 2
    torch.testing.assert_close(out.hidden_states[1], want.hidden_states[1])

    seen.clear()
    distinct = torch.rand(3, 3, 2, 2)
    _once_per_row(encoder)(distinct)
    assert seen[0] is distinct  # nothing to share: the input goes through untouched


def test_run_starts_compares_in_full_rows_that_share_their_first_values():
    rows = torch.rand(1, 200).repeat(6, 1)  # (6, 200), all equal
    rows[2, 150] += 1  # the same first 64 values as its neighbours, different later
    rows[4, 0] += 1  # different at once
    full = torch.ones(6, dtype=torch.bool)
    full[1:] = (rows[1:] != rows[:-1]).any(dim=1)  # the plain elementwise reference
    assert _run_starts(rows).tolist() == full.tolist() == [True, False, True, True, True, True]
    narrow = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 3.0]])  # fewer values than the probe
    assert _run_starts(narrow).tolist() == [True, False, True]


def test_unknown_blip_attention_layout_is_left_eager(caplog):
    class BlipAttention(nn.Module):  # same name as transformers', another layout
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

    model = nn.Module()
    model.vision_model = nn.Sequential(BlipAttention())
    assert sdpa_blip_vision(model) == 0
    assert "forward" not in model.vision_model[0].__dict__
    assert "without qkv/projection: left eager" in caplog.text


def test_blip_attention_taking_a_mask_is_left_eager(caplog):
    class BlipAttention(nn.Module):  # the right parts, but a forward that takes a mask
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.projection = nn.Linear(4, 12), nn.Linear(4, 4)
            self.num_heads, self.head_dim, self.scale = 2, 2, 0.5
            self.dropout = nn.Dropout(0.0)

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            return hidden_states, None

    model = nn.Module()
    model.vision_model = nn.Sequential(BlipAttention())
    assert sdpa_blip_vision(model) == 0
    assert "forward" not in model.vision_model[0].__dict__
    assert "also takes ['attention_mask']: left eager" in caplog.text
