"""Where a BLIP-base caption's time goes on CPU, per image: preprocessing, vision tower, text.

Times each part of HFCaptioner's greedy path separately (random base-size weights, built by
tests/captioning/hf/tiny.py like benchmarks/captioners.py, exactly --new-tokens tokens), at batch
1 and at --batch, then the whole `caption` call. It shows which part batching can shrink.

    python benchmarks/blip_parts.py --batch 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.captioners import cpu_name, images, model_dir  # noqa: E402
from captioning.api import CaptionerOptions  # noqa: E402
from captioning.hf.captioner import HFCaptioner  # noqa: E402


def parts(cap: HFCaptioner, inputs: list[dict[str, torch.Tensor]], new_tokens: int) -> list[float]:
    """ms per image of: vision tower, text decoding (greedy, output_scores as ours), caption()."""
    model, n = cap.model, len(inputs)
    pixels = torch.cat([x["pixel_values"] for x in inputs])  # (N, 3, 384, 384)
    ids = cap._prompt_ids.expand(n, -1).clone()[:, :-1]  # what BLIP's generate feeds its decoder
    text = model.config.text_config
    with torch.inference_mode():
        t = time.perf_counter()
        feats = model.vision_model(pixel_values=pixels)[0]  # (N, 577, 768)
        vision = time.perf_counter() - t
        t = time.perf_counter()
        model.text_decoder.generate(
            input_ids=ids,
            encoder_hidden_states=feats,
            encoder_attention_mask=torch.ones(feats.shape[:-1], dtype=torch.long),
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
        decode = time.perf_counter() - t
    t = time.perf_counter()
    cap.caption(inputs)
    whole = time.perf_counter() - t
    return [1000 * s / n for s in (vision, decode, whole)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/imgindex-bench-models"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    opts = CaptionerOptions(
        device="cpu",
        dtype="float32",
        beam_size=1,
        max_length=args.new_tokens,
        min_new_tokens=args.new_tokens,
        threads=args.threads,
    )
    opts.set_up_process()  # threads and CPU heap policy, once for this process
    cap = HFCaptioner(str(model_dir("blip", args.workdir, "base")), opts)
    imgs = images(max(args.batch, 2))
    t = time.perf_counter()
    inputs = [cap.preprocess(im) for im in imgs]
    prep = 1000 * (time.perf_counter() - t) / len(imgs)
    cap.caption(inputs[:1])  # warm-up
    print(
        f"machine: {cpu_name()}, torch threads {torch.get_num_threads()}; torch {torch.__version__}"
    )
    print(f"BLIP-base, float32, greedy, {args.new_tokens} new tokens; preprocessing {prep:.0f} ms")
    print("\n| batch | vision tower ms/image | text decoding ms/image | caption() ms/image |")
    print("|---:|---:|---:|---:|")
    for b, count in ((1, 2), (args.batch, 1)):  # batch 1: the mean of two images
        runs = [parts(cap, inputs[i * b : (i + 1) * b], args.new_tokens) for i in range(count)]
        vision, decode, whole = (sum(r[k] for r in runs) / count for k in range(3))
        print(f"| {b} | {vision:.0f} | {decode:.0f} | {whole:.0f} |", flush=True)


if __name__ == "__main__":
    main()
