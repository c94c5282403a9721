"""hf:NAME_OR_PATH: tiny random models of each family, saved offline, loaded by the real code."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.api import CaptionerOptions
from captioning.hf.captioner import HFCaptioner
from captioning.hf.identity import hf_identity
from captioning.hf.identity import input_size as _input_size
from captioning.hf.processors import hf_preprocessor
from captioning.hf.resolve import ModelLoadError
from captioning.registry import load_captioner, load_preprocessor
from tests.captioning.hf.tiny import FAMILIES, build, write_remote_code_config

GREEDY = CaptionerOptions(device="cpu", beam_size=1, max_length=8, min_new_tokens=3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~10x faster on one thread: no per-op thread hand-off on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf-models")
    return {f: build(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(8):  # different sizes, brightness and structure, so captions can differ
        h, w = 30 + 7 * i, 60 - 4 * i
        base = rng.random((h, w, 3)) * (40 + 25 * i)
        base[: h // 2, :, i % 3] = 255 * (i % 2)
        out.append(Image.fromarray(base.clip(0, 255).astype(np.uint8)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_eight_matches_one_at_a_time(models, images, family):
    cap = load_captioner("hf:" + str(models[family]), GREEDY)
    assert isinstance(cap, HFCaptioner) and cap.family == family
    inputs = [cap.preprocess(im) for im in images]
    pickle.dumps(inputs[0])  # crosses process boundaries in the Beam pipeline
    alone = [cap.caption([x])[0] for x in inputs]
    together = cap.caption(inputs)
    assert [r.caption for r in together] == [r.caption for r in alone]
    assert any(r.caption for r in together)  # a random model may emit only whitespace for some
    for r in together:
        assert r.candidates == (r.caption,)
        assert r.score is not None and r.score < 0
    assert np.allclose([r.score for r in together], [r.score for r in alone], atol=1e-4)
    assert cap.caption([]) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_three_return_sequences_best_first(models, images, family):
    opts = CaptionerOptions(
        device="cpu", beam_size=3, num_return_sequences=3, max_length=6, min_new_tokens=2
    )
    cap = load_captioner("hf:" + str(models[family]), opts)
    results = cap.caption([cap.preprocess(im) for im in images[:3]])
    assert len(results) == 3
    for r in results:
        assert len(r.candidates) == 3 and r.caption == r.candidates[0]
        assert isinstance(r.score, float)


@pytest.mark.parametrize("family", ["blip", "git"])
def test_beam_batches_are_split_and_match_one_at_a_time(models, images, family):
    from captioning.hf.captioner import MAX_BEAM_SEQUENCES

    opts = CaptionerOptions(device="cpu", beam_size=3, max_length=6, min_new_tokens=2)
    cap = load_captioner("hf:" + str(models[family]), opts)
    many = images + images[:2]  # 10 images: sub-batches of MAX_BEAM_SEQUENCES // 3 = 8, then 2
    assert len(many) > MAX_BEAM_SEQUENCES // 3
    inputs = [cap.preprocess(im) for im in many]
    alone = [cap.caption([x])[0].caption for x in inputs]
    assert [r.caption for r in cap.caption(inputs)] == alone


def test_only_cpu_beam_search_splits_a_batch(models, images, monkeypatch):
    from captioning.hf.captioner import MAX_BEAM_SEQUENCES

    cap = load_captioner("hf:" + str(models["git"]), CaptionerOptions(device="cpu", beam_size=3))
    calls: list[int] = []
    monkeypatch.setattr(cap, "_caption_batch", lambda xs: calls.append(len(xs)) or [None] * len(xs))
    inputs = [cap.preprocess(im) for im in images + images[:2]]  # 10 images
    cap.caption(inputs)
    assert calls == [MAX_BEAM_SEQUENCES // 3, 10 - MAX_BEAM_SEQUENCES // 3]
    calls.clear()
    cap.device = torch.device("cuda")  # only the split policy runs: _caption_batch is faked
    cap.caption(inputs)
    assert calls == [10]  # a GPU takes the whole batch, beams and all
    calls.clear()
    cap.device, cap.options = torch.device("cpu"), CaptionerOptions(device="cpu", beam_size=1)
    cap.caption(inputs)
    assert calls == [10]  # greedy: the whole batch on a CPU too


@pytest.mark.parametrize("family", ["git", "image-text-to-text", "blip"])
def test_prompt_tokens_are_stripped(models, images, family):
    opts = CaptionerOptions(
        device="cpu", beam_size=1, max_length=4, min_new_tokens=4, prompt="a picture of two"
    )
    cap = load_captioner("hf:" + str(models[family]), opts)
    (r,) = cap.caption([cap.preprocess(images[0])])
    assert not r.caption.startswith(("a picture of two", "user", "[CLS]", "[DEC]"))
    new = cap.tokenizer(r.caption, add_special_tokens=False).input_ids
    assert len(new) <= 4 * 2  # the four new tokens (decoding may split a byte-level one)


def test_vlm_uses_its_chat_template_and_default_instruction(models):
    cap = load_captioner("hf:" + str(models["image-text-to-text"]), GREEDY)
    assert cap.prompt == "Describe this image in one sentence."
    text = cap.preprocessor().text
    assert text.startswith("user:<image> Describe this image in one sentence.")
    assert text.endswith("assistant:")


def test_bfloat16(models, images):
    cap = load_captioner(
        "hf:" + str(models["blip"]),
        CaptionerOptions(device="cpu", dtype="bfloat16", beam_size=1, max_length=4),
    )
    assert next(cap.model.parameters()).dtype == torch.bfloat16
    assert len(cap.caption([cap.preprocess(im) for im in images[:2]])) == 2


def test_fsspec_url_is_copied_once_and_verified(models, images, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("IMGINDEX_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    for f in models["blip"].iterdir():
        fs.pipe(f"/models/blip/{f.name}", f.read_bytes())
    try:
        a = load_captioner("hf:memory://models/blip", GREEDY)
        copied = a.resolved.path
        assert copied.is_relative_to(tmp_path / "cache" / "models")
        stamp = (copied / "model.safetensors").stat().st_mtime_ns
        b = load_captioner("hf:memory://models/blip", GREEDY)
        assert b.resolved.path == copied
        assert (copied / "model.safetensors").stat().st_mtime_ns == stamp  # not copied again
        (copied / "tokenizer.json").write_text("{}")  # a damaged copy is replaced
        c = load_captioner("hf:memory://models/blip", GREEDY)
        x = [c.preprocess(im) for im in images[:2]]
        assert [r.caption for r in c.caption(x)] == [r.caption for r in a.caption(x)]
    finally:
        fs.rm("/models/blip", recursive=True)


def test_pickle_weights_need_allow_pickle(models, images, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(models["blip"], d)
    cap = load_captioner("hf:" + str(models["blip"]), GREEDY)
    torch.save(cap.model.state_dict(), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_captioner("hf:" + str(d), GREEDY)
    opts = CaptionerOptions(
        device="cpu", beam_size=1, max_length=8, min_new_tokens=3, allow_pickle=True
    )
    pickled = load_captioner("hf:" + str(d), opts)
    x = [cap.preprocess(im) for im in images[:3]]
    assert [r.caption for r in pickled.caption(x)] == [r.caption for r in cap.caption(x)]


def _one_line_error(spec: str, options: CaptionerOptions = GREEDY) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_captioner(spec, options)
    assert isinstance(e.value, ValueError)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_model_directory(tmp_path):
    assert "no model directory" in _one_line_error(f"hf:{tmp_path}/nothing-here")
    assert "not a transformers model directory" in _one_line_error(f"hf:{tmp_path}")


def test_hub_id_offline_says_pass_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    message = _one_line_error("hf:imgindex-tests/no-such-model")
    assert "not found locally and the hub is unreachable: pass a local directory" in message


def test_unsupported_family_lists_the_supported_ones(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(
        BertConfig(
            vocab_size=32,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
        )
    ).save_pretrained(tmp_path / "bert")
    message = _one_line_error(f"hf:{tmp_path / 'bert'}")
    assert "unsupported model family bert (BertForSequenceClassification)" in message
    assert "blip" in message and "image-text-to-text" in message


def test_remote_code_needs_the_flag(tmp_path):
    d = write_remote_code_config(tmp_path / "florence")
    assert "--trust-remote-code" in _one_line_error(f"hf:{d}")


def test_corrupt_weights(models, tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(models["git"], d)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated download
    assert "corrupt or truncated" in _one_line_error(f"hf:{d}")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[100:])
    assert "corrupt or truncated" in _one_line_error(f"hf:{d}")


def test_options_say_which_flag_to_change(models):
    with pytest.raises(ValueError, match="--beam-size of at least 3"):
        CaptionerOptions(beam_size=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="--dtype"):
        CaptionerOptions(dtype="float8")
    with pytest.raises(ValueError, match="--threads"):
        CaptionerOptions(threads=0)
    with pytest.raises(ValueError, match="--min-new-tokens"):
        CaptionerOptions(max_length=5, min_new_tokens=6)
    with pytest.raises(ValueError, match="--prompt"):
        load_captioner(
            "hf:" + str(models["vision-encoder-decoder"]),
            CaptionerOptions(device="cpu", prompt="a photo of"),
        )


def test_runs_under_beam_run_inference(models, images):
    beam = pytest.importorskip("apache_beam")
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from captioning.records import ImageInput
    from pipelines.caption.handler import CaptionModelHandler

    spec = "hf:" + str(models["blip"])
    cap = load_captioner(spec, GREEDY)
    expected = [
        (f"k{i}", r.caption)
        for i, r in enumerate(cap.caption([cap.preprocess(im) for im in images[:5]]))
    ]
    prep = load_preprocessor(spec, GREEDY)  # what DecodeImages runs, without the model
    records = [
        ImageInput(f"k{i}", "mem", f"{i}.png", "", im.width, im.height, "png", prep(im))
        for i, im in enumerate(images[:5])
    ]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(records)
            | RunInference(CaptionModelHandler(spec, GREEDY, batch_size=2))
            | beam.Map(lambda r: (r.example.key, r.inference.caption))
        )
        assert_that(out, equal_to(expected))


@pytest.mark.parametrize("family", FAMILIES)
def test_model_free_preprocessor_matches_the_captioner(models, images, family):
    spec = "hf:" + str(models[family])
    cap = load_captioner(spec, GREEDY)
    prep = load_preprocessor(spec, GREEDY)
    for im in images[:3]:
        a, b = cap.preprocess(im), prep(im)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_only_tensor_image_processors_without_text_decode_on_the_device(tmp_path):
    from captioning.hf.processors import HFPreprocessor, hf_preprocessor

    class PilOnlyProcessor:  # an older PIL/numpy image processor: no tensors, no device=
        pass

    assert not HFPreprocessor(PilOnlyProcessor(), None).decodes_on_device
    blip = hf_preprocessor(str(build("blip", tmp_path / "blip")), CaptionerOptions(device="cpu"))
    assert blip.decodes_on_device
    assert not HFPreprocessor(blip.processor, "a prompt per image").decodes_on_device


# -- Florence-2 ------------------------------------------------------------------------------
def test_florence2_default_task_and_clean_captions(models, images):
    from captioning.hf.processors import FLORENCE_TASK

    cap = load_captioner("hf:" + str(models["florence2"]), GREEDY)
    assert cap.prompt == FLORENCE_TASK and cap.preprocessor().text == FLORENCE_TASK
    tok = cap.tokenizer
    ids = cap.preprocess(images[0])["input_ids"][0].tolist()
    image_tokens = cap.image_processor.image_seq_length  # 4x4 grid + 1 temporal token
    assert ids[:image_tokens] == [tok.image_token_id] * image_tokens
    assert ids[image_tokens] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # A larger </s> row (tied to the output layer) makes some captions end early, so generate
    # pads them in a batch: what is stripped must not depend on batching.
    with torch.no_grad():
        cap.model.get_output_embeddings().weight[tok.eos_token_id] *= 4
    enc = cap.processor(images=images, text=[FLORENCE_TASK] * 8, return_tensors="pt")
    raw = cap.model.generate(**enc, max_new_tokens=8, min_new_tokens=3, do_sample=False)
    assert all(t.startswith("</s><s>") for t in tok.batch_decode(raw))  # Florence-2's layout
    assert (raw == tok.pad_token_id).any()  # some ended early and were padded
    inputs = [cap.preprocess(im) for im in images]
    alone = [cap.caption([x])[0] for x in inputs]
    together = cap.caption(inputs)
    assert [r.caption for r in together] == [r.caption for r in alone]
    # the padded caption's score too (it was nan: -inf log-probabilities of pads times 0)
    assert np.allclose([r.score for r in together], [r.score for r in alone], atol=1e-4)
    assert any(r.caption for r in together)
    for r in together:
        assert not any(s in r.caption for s in ("<s>", "</s>", "<pad>", "<image>", "<MORE"))
        assert "paragraph" not in r.caption  # the task's prompt text is not echoed


def test_florence2_caption_task_prompt(models, images):
    opts = CaptionerOptions(
        device="cpu", beam_size=1, max_length=8, min_new_tokens=3, prompt="<CAPTION>"
    )
    cap = load_captioner("hf:" + str(models["florence2"]), opts)
    assert cap.preprocessor().text == "<CAPTION>"
    x = cap.preprocess(images[0])["input_ids"]
    assert "What does the image describe?" in cap.tokenizer.decode(x[0])  # the task's text
    results = cap.caption([cap.preprocess(im) for im in images[:3]])
    assert len(results) == 3 and any(r.caption for r in results)
    assert not any("<" in r.caption for r in results)


def test_florence2_task_token_with_more_words_fails_at_load(models, monkeypatch):
    import captioning.hf.captioner as hf

    def no_weights(*args, **kwargs):
        raise AssertionError("the prompt is checked before the weights load")

    monkeypatch.setattr(hf, "load_model", no_weights)
    spec = "hf:" + str(models["florence2"])
    opts = CaptionerOptions(device="cpu", prompt="<CAPTION> extra words")
    for load in (load_captioner, load_preprocessor):  # the model-free path the pipeline uses
        with pytest.raises(ValueError) as e:
            load(spec, opts)
        message = str(e.value)
        assert "\n" not in message
        assert message.startswith("--prompt '<CAPTION> extra words': Florence-2 takes a task")
        assert "should be the only content" in message  # the processor's own reason


def test_florence2_remote_code(models, images, tmp_path):
    from tests.captioning.hf.tiny import build_florence2_remote

    d = build_florence2_remote(tmp_path / "florence2-remote")
    assert "--trust-remote-code" in _one_line_error(f"hf:{d}")
    opts = CaptionerOptions(
        device="cpu", beam_size=1, max_length=8, min_new_tokens=3, trust_remote_code=True
    )
    cap = load_captioner(f"hf:{d}", opts)
    assert cap.family == "florence2" and cap.resolved.remote_code
    assert type(cap.model).__name__ == "TinyFlorence2ForConditionalGeneration"  # auto_map's
    native = load_captioner("hf:" + str(models["florence2"]), GREEDY)
    x = [cap.preprocess(im) for im in images[:4]]
    assert [r.caption for r in cap.caption(x)] == [r.caption for r in native.caption(x)]


@pytest.mark.parametrize("family", FAMILIES)
def test_input_size_is_read_from_what_save_pretrained_wrote(models, family):
    # transformers 5 writes processor_config.json; the size decides the CPU call cap and the
    # pipeline's reduced-size JPEG decoding
    size = hf_identity(str(models[family]), CaptionerOptions(device="cpu")).input_size
    pre = hf_preprocessor(str(models[family]), CaptionerOptions(device="cpu"))
    improc = getattr(pre.processor, "image_processor", pre.processor)
    sides = [getattr(improc.size, k, None) for k in ("height", "width", "shortest_edge")]
    assert size == max(v for v in sides if isinstance(v, int))


def test_input_size_from_a_hub_layout_and_from_broken_files(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    assert _input_size(d) is None
    (d / "processor_config.json").write_text("{not json")
    assert _input_size(d) is None
    (d / "preprocessor_config.json").write_text('{"size": {"height": 384, "width": 384}}')
    assert _input_size(d) == 384  # the hub's (transformers 4) file wins
    (d / "preprocessor_config.json").unlink()
    (d / "processor_config.json").write_text(
        '{"image_processor": {"size": {"shortest_edge": 224}}}'
    )
    assert _input_size(d) == 224


@pytest.mark.parametrize("family", ["blip", "florence2"])
def test_greedy_score_is_the_mean_log_probability_up_to_eos(models, images, family):
    cap = load_captioner("hf:" + str(models[family]), GREEDY)
    if family == "florence2":  # some captions end early and are padded: the case that matters
        with torch.no_grad():
            cap.model.get_output_embeddings().weight[cap.tokenizer.eos_token_id] *= 4
    results = cap.caption([cap.preprocess(im) for im in images])
    batch = cap._collate([cap.preprocess(im) for im in images])
    if cap._prompt_ids is not None:
        ids = cap._prompt_ids.expand(len(images), -1).clone()
        batch["input_ids"], batch["attention_mask"] = ids, torch.ones_like(ids)
    with torch.inference_mode():
        out = cap.model.generate(**batch, **cap._generate_kwargs())
    steps = len(out.scores)
    want = []
    for row in range(len(images)):  # one row, one step at a time, the plain way
        total, count = 0.0, 0
        for t in range(steps):
            token = int(out.sequences[row, -steps + t])
            total += float(out.scores[t][row].float().log_softmax(-1)[token])
            count += 1
            if token in cap._eos:
                break
        want.append(total / count)
    assert np.allclose([r.score for r in results], want, atol=1e-5)


def test_model_version_identifies_the_weights_not_their_names(
    models, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tune has the base model's config, file names and sizes, but other weights: its
    model_version (in every caption row's provenance) must differ. Digests are cached by path,
    size and mtime, so a second identity check does not rehash the weights."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    from captioning.hf import identity

    monkeypatch.setenv("IMGINDEX_CACHE", str(tmp_path / "cache"))
    base = models["git"]
    tuned = tmp_path / "git-tuned"
    shutil.copytree(base, tuned)
    weights = next(tuned.glob("*.safetensors"))
    state = load_file(weights)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] + 0.01  # same shape and dtype: the file keeps its size
    save_file(state, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == next(base.glob("*.safetensors")).stat().st_size

    options = CaptionerOptions(device="cpu")
    v_base = hf_identity(str(base), options).version
    v_tuned = hf_identity(str(tuned), options).version
    assert v_base != v_tuned
    assert v_base.startswith("git-") and v_tuned.startswith("git-")

    hashed = []
    real = hashlib.file_digest

    def counting(f, digest):
        hashed.append(f.name)
        return real(f, digest)

    monkeypatch.setattr(identity, "_digests", {})  # a fresh process: only the file cache is left
    monkeypatch.setattr(hashlib, "file_digest", counting)
    assert hf_identity(str(tuned), options).version == v_tuned
    assert hashed == []  # served from the digest cache
    weights.touch()  # a new mtime: the cached digest no longer applies
    assert hf_identity(str(tuned), options).version == v_tuned
    assert hashed == [str(weights)]
