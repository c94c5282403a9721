"""What every `imgindex` command shares: the typer app, consoles, one-line errors, model options."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pipelines.errors import UsageError

app = typer.Typer(
    name="imgindex",
    help="Caption very large image archives and search them by text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    raise UsageError(message)


def error_line(message: str) -> None:
    """One line on stderr, never wrapped or styled: scripts grep these."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model: a native model DIR, native:DIR, or hf:NAME_OR_PATH. "
        "Default: the shipped imgindex model.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda[:N]")]
BeamOpt = Annotated[int, typer.Option("--beam-size", help="1 = greedy.")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="Most words (new tokens).")]
NumReturnOpt = Annotated[
    int,
    typer.Option("--num-return-sequences", help="Candidates kept per image (at most --beam-size)."),
]
DTypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto, float32, float16, bfloat16. auto: bf16 on GPU; on CPU fp32, except the "
        "native model's encoder, bf16 where the CPU has native bf16.",
    ),
]
PromptOpt = Annotated[
    str | None,
    typer.Option("--prompt", help="Instruction or task prompt for hf: models (e.g. <CAPTION>)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow hf: models that ship Python code (Florence-2)."
    ),
]
PickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow hf: models with only pickled weights (pytorch_model.bin)."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="torch CPU threads per process (cores / processes).")
]
CpuHeapOpt = Annotated[
    str,
    typer.Option(
        "--cpu-heap",
        help="On a CPU: keep (freed memory stays with the process for the next batch; glibc) "
        "or system (the C library's default, which returns it).",
    ),
]
DecodeOnOpt = Annotated[
    str,
    typer.Option(
        "--decode-on",
        help="Where JPEGs are decoded: cpu, device (the model's GPU; HF models without a "
        "per-image prompt) or auto (device when the model is on a GPU and can).",
    ),
]

ModelCopiesOpt = Annotated[
    int | None,
    typer.Option("--model-copies", help="Share the model across a worker's processes, N copies."),
]
ImageColumnOpt = Annotated[
    str, typer.Option("--image-column", help="Parquet column with image bytes.")
]


def captioner_options(
    device: str,
    beam_size: int,
    max_length: int,
    num_return: int,
    dtype: str,
    prompt: str | None,
    trust_remote_code: bool,
    allow_pickle: bool,
    threads: int | None,
    cpu_heap: str = "keep",
):
    from captioning.api import CaptionerOptions

    return CaptionerOptions(
        device=device,
        beam_size=beam_size,
        max_length=max_length,
        num_return_sequences=num_return,
        dtype=dtype,
        prompt=prompt,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        threads=threads,
        cpu_heap=cpu_heap,
    )
