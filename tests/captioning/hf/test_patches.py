"""captioning.hf.patches: each speed fix against the unpatched model it replaces (tiny models)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import BlipForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.utils import ModelOutput

from captioning.api import CaptionerOptions
from captioning.hf import patches
from captioning.hf.captioner import HFCaptioner
from captioning.hf.patches import (
    _once_per_row,
    _run_starts,
    cross_kv_projections,
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

    projections = cross_kv_projections(cap.model)
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
    fields = {"last_hidden_state", "pooler_output", "hidden_states"}
    out = _once_per_row(encoder, fields)(px, scale=2.0)
    want = encoder(px, scale=2.0)
    assert [t.shape[0] for t in seen] == [3, 4]  # patched call: rows a, b, a; then the reference
    torch.testing.assert_close(out.last_hidden_state, want.last_hidden_state)
    torch.testing.assert_close(out.pooler_output, want.pooler_output)
    assert len(out.hidden_states) == 2
    torch.testing.assert_close(out.hidden_states[1], want.hidden_states[1])

    seen.clear()
    distinct = torch.rand(3, 3, 2, 2)
    _once_per_row(encoder, fields)(distinct)
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


class NewBlipAttention(BlipAttention):
    """transformers' class with another layout, as a later version might have."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.proj = nn.Linear(4, 4)


def test_unknown_blip_attention_layout_is_left_eager(caplog):
    model = nn.Module()
    model.vision_model = nn.Sequential(NewBlipAttention())
    assert sdpa_blip_vision(model) == 0
    assert "forward" not in model.vision_model[0].__dict__
    assert "without qkv/projection: left eager" in caplog.text


class MaskedBlipAttention(BlipAttention):
    """The right parts, but a forward that takes a mask."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.qkv, self.projection = nn.Linear(4, 12), nn.Linear(4, 4)
        self.num_heads, self.head_dim, self.scale = 2, 2, 0.5
        self.dropout = nn.Dropout(0.0)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return hidden_states, None


def test_blip_attention_taking_a_mask_is_left_eager(caplog):
    model = nn.Module()
    model.vision_model = nn.Sequential(MaskedBlipAttention())
    assert sdpa_blip_vision(model) == 0
    assert "forward" not in model.vision_model[0].__dict__
    assert "also takes ['attention_mask']: left eager" in caplog.text


def test_a_look_alike_class_of_the_same_name_is_not_patched():
    class BlipAttention(nn.Module):  # transformers' name and layout, not transformers' class
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.projection = nn.Linear(4, 12), nn.Linear(4, 4)
            self.num_heads, self.head_dim, self.scale = 2, 2, 0.5
            self.dropout = nn.Dropout(0.0)

        def forward(self, hidden_states, **kwargs):
            return hidden_states, None

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.crossattention = nn.Module()
            self.crossattention.self = nn.Module()
            self.crossattention.self.key = nn.Linear(4, 4)
            self.crossattention.self.value = nn.Linear(4, 4)

    model = nn.Module()
    model.vision_model = nn.Sequential(BlipAttention())
    model.text = Layer()
    assert speed_up(model, "blip") == []
    assert not any("forward" in m.__dict__ for m in model.modules())


# -- when and how often the fixes apply -------------------------------------------------------


@pytest.fixture
def blip(tmp_path) -> HFCaptioner:
    return HFCaptioner(str(build("blip", tmp_path / "blip")), BEAM3)


def instance_forwards(model: nn.Module) -> dict[str, object]:
    return {n: m.__dict__["forward"] for n, m in model.named_modules() if "forward" in m.__dict__}


@pytest.mark.parametrize("version", ["4.57.1", "6.0.0", "5.23.0", "6.0.0.dev0"])
def test_an_untested_transformers_runs_unpatched_and_says_so_once(
    tmp_path, monkeypatch, caplog, version
):
    d = build("blip", tmp_path / "blip")
    monkeypatch.setattr("transformers.__version__", version)
    patches._is_tested.cache_clear()
    cap = HFCaptioner(str(d), BEAM3)
    assert cap.speed_fixes == []
    assert speed_up(cap.model, "blip") == []
    assert instance_forwards(cap.model) == {}
    warnings = [r for r in caplog.records if "outside the versions" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert version in warnings[0].getMessage()
    patches._is_tested.cache_clear()


@pytest.mark.parametrize("version", ["5.24.0", "5.31.2", "5.25.0.dev0"])
def test_the_tested_range_is_patched(monkeypatch, version):
    monkeypatch.setattr("transformers.__version__", version)
    patches._is_tested.cache_clear()
    assert patches.transformers_is_tested()
    patches._is_tested.cache_clear()


def test_speed_up_twice_is_speed_up_once(blip, images):
    model = blip.model
    first = instance_forwards(model)
    assert blip.speed_fixes == ["sdpa-vision", "cross-kv-once"]
    assert speed_up(model, "blip") == blip.speed_fixes
    assert instance_forwards(model) == first  # the same objects: nothing wrapped twice
    undo_speed_ups(model)
    assert instance_forwards(model) == {}  # one undo removes all of it


def hook(name: str, forward, calls: list[str]):
    """An instance-level forward over `forward`, as another library (accelerate, profilers) adds."""

    def run(*args, **kwargs):
        calls.append(name)
        return forward(*args, **kwargs)

    return run


def test_undo_keeps_forwards_speed_up_did_not_install(blip, images):
    model = blip.model
    undo_speed_ups(model)
    calls: list[str] = []
    key = cross_kv_projections(model)[0]  # speed_up patches it on top of the hook
    embeddings = model.vision_model.embeddings  # speed_up never patches it
    key.forward = hook("key", key.forward, calls)
    embeddings.forward = hook("embeddings", embeddings.forward, calls)
    foreign = instance_forwards(model)

    assert speed_up(model, "blip") == ["sdpa-vision", "cross-kv-once"]
    assert key.forward is not foreign["text_decoder.bert.encoder.layer.0.crossattention.self.key"]
    inputs = [blip.preprocess(im) for im in images]
    fast = blip.caption(inputs)
    assert set(calls) == {"key", "embeddings"}  # the hooks still run under the fix

    undo_speed_ups(model)
    assert instance_forwards(model) == foreign
    plain = blip.caption(inputs)
    assert [r.candidates for r in fast] == [r.candidates for r in plain]


def test_sdpa_leaves_a_hooked_blip_attention_eager(blip, caplog):
    # SDPA replaces the forward rather than wrapping it, so it would drop the hook.
    model = blip.model
    undo_speed_ups(model)
    attention = model.vision_model.encoder.layers[0].self_attn
    attention.forward = hook("attention", attention.forward, [])
    foreign = attention.forward
    layers = model.config.vision_config.num_hidden_layers
    assert sdpa_blip_vision(model) == layers - 1
    assert attention.forward is foreign
    assert "instance-level forward (a hook?): left eager" in caplog.text
    undo_speed_ups(model)
    assert attention.forward is foreign


# -- what a deduplicated call maps back to every row --------------------------------------------


@dataclass
class EncoderOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    position_table: torch.Tensor | None = None  # (P, 2): P is not the batch


def test_an_output_with_the_row_count_by_coincidence_is_not_indexed():
    a, b = torch.zeros(1, 5), torch.ones(1, 5)
    px = torch.cat([a, a, b, a])  # 4 rows, 3 distinct: the patched call sees 3 rows
    table = torch.arange(6.0).reshape(3, 2)  # 3 positions, as many as the distinct rows
    calls: list[int] = []

    def encoder(x: torch.Tensor) -> EncoderOutput:
        calls.append(len(x))
        return EncoderOutput(last_hidden_state=x * 2, position_table=table)

    out = _once_per_row(encoder, {"last_hidden_state"})(px)
    assert calls == [3]
    torch.testing.assert_close(out.last_hidden_state, px * 2)
    assert out.position_table is table  # not a field computed from the batch: as returned

    def tuple_encoder(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(x))
        return x * 2, table

    calls.clear()
    hidden, positions = _once_per_row(tuple_encoder)(px)  # positions say nothing: run all rows
    assert calls == [3, 4]
    torch.testing.assert_close(hidden, px * 2)
    assert positions is table

    def wrong_rows(x: torch.Tensor) -> EncoderOutput:  # a declared field without a row per input
        calls.append(len(x))
        return EncoderOutput(last_hidden_state=x.sum(0, keepdim=True))

    calls.clear()
    out = _once_per_row(wrong_rows, {"last_hidden_state"})(px)
    assert calls == [3, 4]
    torch.testing.assert_close(out.last_hidden_state, px.sum(0, keepdim=True))
