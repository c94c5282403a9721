"""WebDataset/img2dataset tar Shard (any fsspec URL) -> ShardEntry per sample, member by member."""

import logging
import lzma
import tarfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import fsspec

from captioning.archives.records import (
    CORRUPT_KEY,
    IMAGE_EXTENSIONS,
    SHARD_KEY,
    TRUNCATED_KEY,
    UNREADABLE_KEY,
    Shard,
    ShardEntry,
    failure_entry,
    parse_metadata,
    sidecar_caption,
)

# The readers log under the public module's name, as they did before the split into modules.
logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = frozenset(ext[1:] for ext in IMAGE_EXTENSIONS)
# tarfile's header errors are undocumented (absent from typeshed) but unchanged since Python 3.2.
_InvalidHeader: type[tarfile.HeaderError] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_EmptyHeader: type[tarfile.HeaderError] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_EOFHeader: type[tarfile.HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
# What opening the stream, or reading a header or member from it, can raise.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


@dataclass(slots=True)
class _Sample:
    """Members of one tar sample seen so far (mutable accumulator)."""

    key: str
    member: str = ""
    data: bytes | None = None
    caption: str | None = None
    metadata: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    def add(self, role: str, name: str, payload: bytes) -> None:
        """Keep the bytes of member `name` as the sample's image, caption or metadata."""
        if role == "image":
            self.data, self.member = payload, name
        elif role == "caption":
            self.caption = sidecar_caption(payload)
        else:
            self.metadata, note = parse_metadata(payload, f"{name} sidecar")
            self.notes.extend([note] if note else [])
        self.member = self.member or name

    def entry(self, shard: Shard) -> ShardEntry:
        if self.data is None:
            if self.damaged:
                reason = f"damaged tar header for {', '.join(self.damaged)}; no image member read"
                return failure_entry(shard, self.key, self.damaged[0], "corrupt_tar_header", reason)
            reason = "sample has no image member"
            return failure_entry(shard, self.key, self.member, "no_image", reason, logging.DEBUG)
        message = "; ".join(self.notes) or None
        return ShardEntry(
            self.key,
            shard.uri,
            self.member,
            self.data,
            self.caption,
            self.metadata,
            message=message,
        )


def _split_member(name: str) -> tuple[str, str] | None:
    """WebDataset split: ``"dir/000.seg.png"`` -> (``"dir/000"``, ``"seg.png"``)."""
    name = name.removeprefix("./")
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:  # hidden files ("._x.jpg" from macOS) and names without extension
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _role(ext: str) -> str | None:
    if ext.rsplit(".", 1)[-1] in _IMAGE_SUFFIXES:
        return "image"
    return {"txt": "caption", "json": "metadata"}.get(ext)


def _header_name(buf: bytes) -> str | None:
    try:
        name = buf[:100].split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if name and name.isprintable() else None


@dataclass(frozen=True, slots=True)
class _HeaderProblem:
    offset: int
    error: tarfile.HeaderError
    name: str | None


def _recording_tarinfo(problems: list[_HeaderProblem]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records every header ``TarFile.next`` rejects.

    ``TarFile.next`` swallows header errors: without ``ignore_zeros`` a damaged header mid-archive
    ends iteration silently; with it (our choice, so reading resumes at the next valid header) the
    damage is skipped silently. Recording them is how damage and truncation become failure entries.
    """

    class RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            try:
                return super().frombuf(buf, encoding, errors)
            except _InvalidHeader as exc:
                exc.add_note(_header_name(bytes(buf)) or "")
                raise

        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
            offset = tarfile_.offset
            try:
                return super().fromtarfile(tarfile_)
            except tarfile.HeaderError as exc:
                if offset == 0 and isinstance(exc, _InvalidHeader):
                    # ignore_zeros would scan a non-tar file to its end; fail fast instead.
                    raise tarfile.ReadError(f"not a tar archive ({exc})") from exc
                name = (getattr(exc, "__notes__", None) or [""])[0] or None
                problems.append(_HeaderProblem(offset, exc, name))
                raise

    return RecordingTarInfo


def iter_tar(shard: Shard) -> Iterator[ShardEntry]:
    """Stream a tar shard's samples; damage becomes failure entries (see ``iter_shard``)."""
    try:
        f = fsspec.open(shard.uri, "rb").open()
    except OSError as exc:
        yield failure_entry(shard, SHARD_KEY, "", "read_error", f"cannot open {shard.uri}: {exc}")
        return
    problems: list[_HeaderProblem] = []
    with f:
        try:
            tar = tarfile.open(
                fileobj=f, mode="r|*", tarinfo=_recording_tarinfo(problems), ignore_zeros=True
            )
        except _READ_ERRORS as exc:
            yield failure_entry(shard, SHARD_KEY, "", "corrupt_tar", f"not a readable tar: {exc}")
            return
        with tar:
            yield from _tar_samples(shard, tar, problems)


@dataclass(slots=True)
class _Grouping:
    """Consecutive members with one key make a sample; a new key finishes the one before."""

    shard: Shard
    pending: _Sample | None = None
    last_member: str = ""  # the last member header read, for messages

    def start(self, key: str) -> Generator[ShardEntry, None, _Sample]:
        """Yield the sample in progress if it is another key's; return `key`'s sample."""
        if self.pending is not None and self.pending.key != key:
            yield self.pending.entry(self.shard)
            self.pending = None
        self.pending = self.pending or _Sample(key)
        return self.pending

    def finish(self) -> Iterator[ShardEntry]:
        if self.pending is not None:
            yield self.pending.entry(self.shard)

    def abort(self, exc: BaseException) -> Iterator[ShardEntry]:
        return _abort(self.shard, self.pending, self.last_member, exc)


def _tar_samples(
    shard: Shard, tar: tarfile.TarFile, problems: list[_HeaderProblem]
) -> Iterator[ShardEntry]:
    """Members in stream order -> one entry per sample; damage ends or annotates samples."""
    samples = _Grouping(shard)
    while True:
        try:
            info = tar.next()
        except _READ_ERRORS as exc:
            yield from samples.abort(exc)
            return
        yield from _damaged_header(samples, problems, at_end=info is None)
        if info is None:
            break
        problems.clear()  # what is left now is only the end of the archive
        # Stream mode still keeps every TarInfo it has read; drop them so memory stays flat.
        tar.members = []  # type: ignore[attr-defined]
        samples.last_member = info.name
        split = _split_member(info.name) if info.isfile() else None
        if split is None:
            logger.debug("%s: skipping tar member %s", shard.uri, info.name)
            continue
        sample = yield from samples.start(split[0])
        role = _wanted_role(sample, split[1], info.name)
        if role is None:
            continue  # not read: tarfile skips its bytes in the stream
        try:
            payload = tar.extractfile(info).read()  # type: ignore[union-attr]  # isfile() checked
        except _READ_ERRORS as exc:
            yield from samples.abort(exc)
            return
        sample.add(role, info.name, payload)
    if _ended_cleanly(problems):
        yield from samples.finish()
    else:
        yield from samples.abort(EOFError("archive ends without its end-of-archive marker"))


def _damaged_header(
    samples: _Grouping, problems: list[_HeaderProblem], at_end: bool
) -> Iterator[ShardEntry]:
    """A damaged header before this member: a note on its sample, or a failure of its own when
    its name gives no sample key."""
    for problem in _first_damage(problems, at_end):
        split = _split_member(problem.name) if problem.name else None
        where = f"damaged tar header at byte {problem.offset} ({problem.error})"
        if split is None:
            yield failure_entry(
                samples.shard,
                f"<corrupt@{problem.offset}>",
                problem.name or f"header at byte {problem.offset}",
                "corrupt_tar_header",
                f"{where}; skipped to the next valid header",
            )
            continue
        sample = yield from samples.start(split[0])
        sample.damaged.append(problem.name or "")
        sample.notes.append(f"{where}; member {problem.name} skipped")


def _wanted_role(sample: _Sample, ext: str, name: str) -> str | None:
    """The role of member `name` if its bytes are to be read: not unknown, not a second image."""
    role = _role(ext)
    if role == "image" and sample.data is not None:
        sample.notes.append(f"ignored extra image member {name}")
        return None
    return role


def _first_damage(problems: list[_HeaderProblem], at_end: bool) -> list[_HeaderProblem]:
    """The first damaged header since the last good member (the rest are its data blocks)."""
    for problem in problems:
        if at_end and isinstance(problem.error, _EOFHeader):
            break  # bytes after the end-of-archive marker belong to no member
        if isinstance(problem.error, _InvalidHeader):
            return [problem]
    return []


def _ended_cleanly(problems: list[_HeaderProblem]) -> bool:
    """A tar ends with zero blocks; a last member followed by anything else was cut short."""
    return not problems or any(isinstance(p.error, _EOFHeader) for p in problems)


def _abort(
    shard: Shard, pending: _Sample | None, member: str, exc: BaseException
) -> Iterator[ShardEntry]:
    """End a tar that cannot be read further: the sample in progress, then one failure entry."""
    if isinstance(exc, EOFError) or "unexpected end of data" in str(exc):
        error, placeholder = "truncated_tar", TRUNCATED_KEY
        message = f"tar is truncated after member {member or '(none)'}: {exc}"
    elif isinstance(exc, tarfile.TarError | zlib.error | lzma.LZMAError):
        error, placeholder = "corrupt_tar", CORRUPT_KEY
        message = f"tar is corrupt after member {member or '(none)'}: {exc}"
    else:
        error, placeholder = "read_error", UNREADABLE_KEY
        message = f"reading stopped after member {member or '(none)'}: {exc}"
    if pending is not None and pending.data is None:
        yield failure_entry(shard, pending.key, member, error, message)
        return
    if pending is not None:
        yield pending.entry(shard)
    # No member: `member` may be the image just yielded, and (source, member) names one image.
    yield failure_entry(shard, placeholder, "", error, message)
