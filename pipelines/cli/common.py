"""What every `imgindex` command shares: the typer app, consoles, one-line errors, shared flags.

Flags that several commands take are declared once, as a group of typer parameters whose defaults
are the config dataclass's own field defaults; `flag_group` splices a group into a command's
signature and hands the command one value built from it (`captioner_flags` -> `CaptionerFlags`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from captioning.api import Captioner, CaptionerOptions
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

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    raise UsageError(message)


def stderr_line(text: str) -> None:
    """One line on stderr, never wrapped or styled: scripts grep these."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    stderr_line(f"error: {message}")


def field_default(config: type, name: str) -> Any:
    """The default of a config dataclass field: the one place a flag's default comes from."""
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{config.__name__}.{name} has no default")


def flag(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """One typer parameter of a flag group: `annotation` is an Annotated[type, typer.Option]."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def flag_group(
    placeholder: str, flags: Sequence[inspect.Parameter], build: Callable[..., Any]
) -> Callable[[F], F]:
    """A decorator that gives a command the `flags`, declared once for every command taking them.

    The command names a `placeholder` parameter; typer sees `flags` in its place (typer reads
    `inspect.signature`, which honours `__signature__`) and the command is called with
    `placeholder=build(**values of the flags)`.
    """
    names = [f.name for f in flags]

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        if placeholder not in signature.parameters:
            raise TypeError(f"{command.__name__} has no {placeholder!r} parameter")
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            # Keyword-only, so that flags with defaults may precede arguments without one;
            # click calls a command with keywords only.
            params.extend(flags if p.name == placeholder else [p.replace(kind=p.KEYWORD_ONLY)])

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            value = build(**{name: kwargs.pop(name) for name in names})
            return command(**kwargs, **{placeholder: value})

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__annotations__["return"] = signature.return_annotation
        return wrapper  # type: ignore[return-value]

    return decorate


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model: a native model DIR, native:DIR, or hf:NAME_OR_PATH. "
        "Default: the shipped imgindex model.",
    ),
]
CpuHeapOpt = Annotated[
    str,
    typer.Option(
        "--cpu-heap",
        help="On a CPU: keep (freed memory stays with the process for the next batch; glibc) "
        "or system (the C library's default, which returns it).",
    ),
]
_CAPTIONER_OPTIONS: dict[str, Any] = {
    "device": Annotated[str, typer.Option("--device", help="auto, cpu, cuda[:N]")],
    "beam_size": Annotated[int, typer.Option("--beam-size", help="1 = greedy.")],
    "max_length": Annotated[int, typer.Option("--max-length", help="Most words (new tokens).")],
    "num_return_sequences": Annotated[
        int,
        typer.Option(
            "--num-return-sequences", help="Candidates kept per image (at most --beam-size)."
        ),
    ],
    "dtype": Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto, float32, float16, bfloat16. auto: bf16 on GPU; on CPU fp32, except the "
            "native model's encoder, bf16 where the CPU has native bf16.",
        ),
    ],
    "prompt": Annotated[
        str | None,
        typer.Option(
            "--prompt", help="Instruction or task prompt for hf: models (e.g. <CAPTION>)."
        ),
    ],
    "trust_remote_code": Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow hf: models that ship Python code (Florence-2)."
        ),
    ],
    "allow_pickle": Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Allow hf: models with only pickled weights (pytorch_model.bin).",
        ),
    ],
    "threads": Annotated[
        int | None,
        typer.Option("--threads", help="torch CPU threads per process (cores / processes)."),
    ],
    "cpu_heap": CpuHeapOpt,
}
CAPTIONER_FLAGS = [flag("model", ModelOpt, None)] + [
    flag(name, option, field_default(CaptionerOptions, name))
    for name, option in _CAPTIONER_OPTIONS.items()
]


@dataclass(frozen=True, slots=True)
class CaptionerFlags:
    """--model and the captioner flags of describe, caption and run, parsed once."""

    model: str | None  # None = the shipped default
    options: CaptionerOptions

    @classmethod
    def from_flags(cls, model: str | None, **options: Any) -> CaptionerFlags:
        return cls(model, CaptionerOptions(**options))

    def load(self) -> Captioner:
        """Set this process up for the options (threads, CPU heap), then load the model."""
        from captioning.registry import load_captioner

        self.options.set_up_process()
        return load_captioner(self.model, self.options)


captioner_flags = flag_group("captioner", CAPTIONER_FLAGS, CaptionerFlags.from_flags)
