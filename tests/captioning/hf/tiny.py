"""Family name -> a randomly initialised Hugging Face captioning model in a directory, offline.

Tokenizers are built from a vocabulary written here (a WordPiece vocab for BERT-style decoders, a
byte-level BPE for GPT-2- and BART-style ones), so nothing is downloaded. `size="tiny"` gives
2-layer models for the tests; `size="base"` gives the published base-size architectures (random
weights) for benchmarks/captioners.py. `build_florence2_remote` lays a Florence-2 out as a
trust_remote_code hub repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("blip", "git", "vision-encoder-decoder", "blip-2", "image-text-to-text", "florence2")

WORDS = (
    "a an the of on in with and is are there two three red blue green yellow black white "
    "circle square star triangle small large big cat dog man woman picture photo image "
    "describe this one sentence left right above below next to . ,"
).split()

# Small enough for a test, deep enough (2 layers) to exercise caches and cross-attention.
_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "initializer_range": 0.3,
}
TINY_IMAGE = 32
TINY_PATCH = 8


def _bert_tokenizer(size: int | None, specials: dict[str, int]):
    """A WordPiece BertTokenizer; `specials` pins ids ({"[PAD]": 0, ...}); `size` pads the vocab."""
    from transformers import BertTokenizer

    rest = [
        w
        for w in WORDS
        + [c for c in "abcdefghijklmnopqrstuvwxyz"]
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
        if w not in specials
    ]
    total = size if size is not None else len(specials) + len(rest)
    vocab: list[str | None] = [None] * total
    for tok, i in specials.items():
        vocab[i] = tok
    free = iter(rest)
    for i in range(total):
        if vocab[i] is None:
            vocab[i] = next(free, f"[unused{i}]")
    ids = {tok: i for i, tok in enumerate(vocab)}
    bos = "[DEC]" if "[DEC]" in specials else None
    return BertTokenizer(vocab=ids, bos_token=bos)


def _word_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merge "Ġ"+word letter by letter so each of WORDS is one token; new pieces go into `vocab`."""
    merges = []
    for w in WORDS:
        piece = "Ġ"
        for ch in w:
            if piece + ch not in vocab:
                merges.append((piece, ch))
                vocab[piece + ch] = len(vocab)
            piece += ch
    return merges


def _bpe_tokenizer(size: int | None, extra: tuple[str, ...] = ()):
    """A byte-level BPE GPT2Tokenizer with `<|endoftext|>` last, plus `extra` special tokens."""
    from transformers import GPT2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # 256 byte tokens
    merges = _word_merges(vocab)
    total = size if size is not None else len(vocab) + 1
    while len(vocab) < total - 1:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


def _save(model, out_dir: Path, *parts) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # safetensors
    for p in parts:
        p.save_pretrained(out_dir)
    return out_dir


def _vision(size: str, image: int, patch: int) -> dict:
    if size == "tiny":
        return dict(_TINY, image_size=TINY_IMAGE, patch_size=TINY_PATCH)
    return {"image_size": image, "patch_size": patch}  # base defaults: 768 wide, 12 layers


def build_blip(out_dir: Path, size: str = "tiny") -> Path:
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    if size == "tiny":
        tok = _bert_tokenizer(
            None, {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "[DEC]": 5}
        )
        text = dict(
            _TINY,
            vocab_size=len(tok),
            bos_token_id=5,
            sep_token_id=3,
            eos_token_id=3,
            pad_token_id=0,
            max_position_embeddings=64,
        )
        config = BlipConfig(
            vision_config=_vision(size, 384, 16), text_config=text, projection_dim=32
        )
    else:  # Salesforce/blip-image-captioning-base: ViT-B/16 at 384, BERT-base decoder
        tok = _bert_tokenizer(
            30524,
            {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "[DEC]": 30522},
        )
        config = BlipConfig(
            vision_config={"image_size": 384},
            text_config={"sep_token_id": 102, "eos_token_id": 102},
        )
    image = TINY_IMAGE if size == "tiny" else 384
    processor = BlipProcessor(BlipImageProcessor(size={"height": image, "width": image}), tok)
    torch.manual_seed(0)
    return _save(BlipForConditionalGeneration(config).eval(), out_dir, processor)


def build_git(out_dir: Path, size: str = "tiny") -> Path:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    if size == "tiny":
        tok = _bert_tokenizer(None, {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4})
        config = GitConfig(
            vision_config=_vision(size, 224, 16),
            vocab_size=len(tok),
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            max_position_embeddings=64,
            **_TINY,
        )
    else:  # microsoft/git-base: CLIP ViT-B/16 at 224, 6-layer BERT-base-wide decoder
        tok = _bert_tokenizer(
            30522, {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
        )
        config = GitConfig()
    image = TINY_IMAGE if size == "tiny" else 224
    improc = CLIPImageProcessor(
        size={"shortest_edge": image}, crop_size={"height": image, "width": image}
    )
    torch.manual_seed(0)
    return _save(GitForCausalLM(config).eval(), out_dir, GitProcessor(improc, tok))


def build_vision_encoder_decoder(out_dir: Path, size: str = "tiny") -> Path:
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tok = _bpe_tokenizer(None if size == "tiny" else 50257)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    if size == "tiny":
        enc = ViTConfig(**_vision(size, 224, 16))
        dec = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=eos,
            eos_token_id=eos,
        )
    else:  # nlpconnect/vit-gpt2-image-captioning: ViT-base at 224 + GPT-2 small
        enc, dec = ViTConfig(), GPT2Config()
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    image = TINY_IMAGE if size == "tiny" else 224
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config).eval()
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = eos
    return _save(model, out_dir, ViTImageProcessor(size={"height": image, "width": image}), tok)


def build_blip_2(out_dir: Path, size: str = "tiny") -> Path:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    tok = _bpe_tokenizer(None if size == "tiny" else 50265, extra=("<image>", "<pad>"))
    tok.pad_token = "<pad>"
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    image_token = tok.convert_tokens_to_ids("<image>")
    queries = 4 if size == "tiny" else 32
    common = {
        "vocab_size": len(tok),
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": tok.pad_token_id,
    }
    if size == "tiny":
        text = dict(
            common,
            model_type="opt",
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
        )
        qformer = dict(_TINY, encoder_hidden_size=32, vocab_size=64)
    else:  # ViT-B/16 vision, Q-Former base, OPT-125m: a CPU-sized stand-in for BLIP-2
        text = dict(
            common,
            model_type="opt",
            hidden_size=768,
            ffn_dim=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            word_embed_proj_dim=768,
        )
        qformer = {"encoder_hidden_size": 768}
    vision = (
        _vision(size, 224, 16)
        if size == "tiny"
        else {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 16,
        }
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=queries,
        image_token_index=image_token,
    )
    image = TINY_IMAGE if size == "tiny" else 224
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": image, "width": image}), tok, num_query_tokens=queries
    )
    torch.manual_seed(0)
    return _save(Blip2ForConditionalGeneration(config).eval(), out_dir, processor)


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_image_text_to_text(out_dir: Path, size: str = "tiny") -> Path:
    """A LLaVA-architecture VLM: CLIP vision tower + Llama decoder, chat template with <image>."""
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = _bpe_tokenizer(None if size == "tiny" else 49152, extra=("<image>", "<pad>"))
    tok.pad_token = "<pad>"
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    common = {
        "vocab_size": len(tok),
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": tok.pad_token_id,
    }
    if size == "tiny":
        vision = dict(_TINY, image_size=TINY_IMAGE, patch_size=TINY_PATCH, projection_dim=32)
        text = dict(_TINY, **common, num_key_value_heads=1, max_position_embeddings=256)
    else:  # CLIP ViT-B/16 at 224 + a SmolLM-135M-shaped Llama: a small VLM such as SmolVLM-256M
        vision = {"image_size": 224, "patch_size": 16}
        text = dict(
            common,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        )
    config = LlavaConfig(
        vision_config=dict(vision, model_type="clip_vision_model"),
        text_config=dict(text, model_type="llama"),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    image = TINY_IMAGE if size == "tiny" else 224
    improc = CLIPImageProcessor(
        size={"shortest_edge": image}, crop_size={"height": image, "width": image}
    )
    processor = LlavaProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=TINY_PATCH if size == "tiny" else 16,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    torch.manual_seed(0)
    return _save(LlavaForConditionalGeneration(config).eval(), out_dir, processor)


def _bart_tokenizer(size: int | None):
    """A byte-level BPE BartTokenizer laid out as BART's (<s> <pad> </s> <unk> first, <mask>
    last), then Florence-2's `image_token` "<image>"; `size` pads it to that many tokens in all."""
    from transformers import BartTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in bytes_to_unicode().values():  # 256 byte tokens
        vocab[ch] = len(vocab)
    merges = _word_merges(vocab)
    total = size if size is not None else len(vocab) + 2
    while len(vocab) < total - 2:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return BartTokenizer(
        vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"}
    )


# Two DaViT stages (strides 4 and 2) at 32 px: a 4x4 grid of 32-wide features.
_FLORENCE_TINY_VISION = {
    "depths": (1, 1),
    "embed_dim": (16, 32),
    "num_heads": (2, 4),
    "num_groups": (2, 4),
    "patch_size": (7, 3),
    "patch_stride": (4, 2),
    "patch_padding": (3, 1),
    "patch_prenorm": (False, True),
    "window_size": 2,
    "drop_path_rate": 0.0,
    "projection_dim": 32,
}


def build_florence2(out_dir: Path, size: str = "tiny") -> Path:
    """A native Florence-2: DaViT vision tower + BART encoder-decoder, and its Florence2Processor.

    tiny: the two stages above at 32 px -> 4x4 + 1 temporal token = 17 image tokens, a 2+2-layer
    BART 32 wide. base: microsoft/Florence-2-base's shapes (DaViT 128..1024 wide, depths 1,1,9,1,
    768 px -> 24x24 + 1 = 577 image tokens; BART-base, 6+6 layers 768 wide).
    """
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    tok = _bart_tokenizer(None if size == "tiny" else 51290)
    # (width, layers per side, heads, feed-forward width, positions)
    width, layers, heads, ffn, positions = (
        (32, 2, 2, 64, 128) if size == "tiny" else (768, 6, 12, 3072, 1024)
    )
    text = {
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
        "vocab_size": len(tok),
        "d_model": width,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn,
        "decoder_ffn_dim": ffn,
        "max_position_embeddings": positions,
    }
    if size == "tiny":
        vision = dict(_FLORENCE_TINY_VISION, initializer_range=0.3)
        text["init_std"] = 0.3
        image = TINY_IMAGE
    else:  # Florence2VisionConfig defaults are base's DaViT; its projection is to BART-base
        vision = {"projection_dim": 768, "drop_path_rate": 0.0}
        image = 768
    config = Florence2Config(
        vision_config=vision, text_config=text, image_token_id=tok.image_token_id
    )
    grid = image
    for stride in config.vision_config.patch_stride:
        grid //= stride
    improc = CLIPImageProcessor(
        size={"height": image, "width": image},
        do_center_crop=False,
        image_seq_length=grid * grid + 1,  # the spatial grid plus one temporal token
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    # Florence-2 answers "</s><s>caption</s>"; forcing the <s> makes the tiny one do the same.
    model.generation_config.forced_bos_token_id = tok.bos_token_id
    return _save(model, out_dir, Florence2Processor(improc, tok))


_REMOTE_CONFIG_PY = '''"""Florence-2's config as this repository's class (trust_remote_code)."""

from transformers import Florence2Config


class TinyFlorence2Config(Florence2Config):
    model_type = "florence2"
'''

_REMOTE_MODELING_PY = '''"""Florence-2 as this repository's own class (needs trust_remote_code)."""

from transformers import Florence2ForConditionalGeneration

from .configuration_tinyflorence import TinyFlorence2Config


class TinyFlorence2ForConditionalGeneration(Florence2ForConditionalGeneration):
    config_class = TinyFlorence2Config
'''


def build_florence2_remote(out_dir: Path, size: str = "tiny") -> Path:
    """build_florence2's model laid out as the microsoft/Florence-2-* hub repos: model_type
    "florence2" plus an `auto_map` (AutoConfig, AutoModelForCausalLM) naming classes in Python
    files of the directory, so loading it needs trust_remote_code. Same weights and processor."""
    out_dir = build_florence2(Path(out_dir), size)
    (out_dir / "configuration_tinyflorence.py").write_text(_REMOTE_CONFIG_PY)
    (out_dir / "modeling_tinyflorence.py").write_text(_REMOTE_MODELING_PY)
    config = json.loads((out_dir / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_tinyflorence.TinyFlorence2Config",
        "AutoModelForCausalLM": "modeling_tinyflorence.TinyFlorence2ForConditionalGeneration",
    }
    config["architectures"] = ["TinyFlorence2ForConditionalGeneration"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


BUILDERS = {
    "blip": build_blip,
    "git": build_git,
    "vision-encoder-decoder": build_vision_encoder_decoder,
    "blip-2": build_blip_2,
    "image-text-to-text": build_image_text_to_text,
    "florence2": build_florence2,
}


def build(family: str, out_dir: Path, size: str = "tiny") -> Path:
    """Write a `size` ("tiny" or "base") model of `family` to `out_dir` and return it."""
    return BUILDERS[family](Path(out_dir), size)


def write_remote_code_config(out_dir: Path) -> Path:
    """A Florence-2-style directory whose config.json needs remote code (has `auto_map`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    auto_map = {
        "AutoConfig": "configuration_florence2.Florence2Config",
        "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration",
    }
    config = {
        "model_type": "florence2",
        "auto_map": auto_map,
        "architectures": ["Florence2ForConditionalGeneration"],
    }
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir
