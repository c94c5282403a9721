"""Image inputs (folders, WebDataset/img2dataset tars, Parquet) via fsspec -> streamed ShardEntry.

``list_shards`` turns a path, glob, brace pattern or fsspec URL into sorted ``Shard`` records (the
unit of parallelism); ``iter_shard`` streams one shard's samples as ``ShardEntry`` records, one
member or record batch at a time. A damaged input yields failure entries (``data is None`` with an
``error`` code), never an exception: only ``list_shards`` raises, with ``InputError``, when the
input cannot be used at all.

Keys (unique within one ``list_shards`` input):

* folder images: the path relative to the input's root, *with* its extension
  (``"sub/img 1.jpg"``), because ``a.jpg`` and ``a.png`` side by side are common and dropping the
  extension would merge them. The root is the common parent of every directory, glob prefix and
  explicitly named file in the input. Sidecars are looked up by stem: ``sub/img 1.txt``/``.json``.
* tar members: the WebDataset rule, member path up to the first dot of its basename
  (``"dir/000000123.jpg"`` -> ``"dir/000000123"``). img2dataset tars have no directories, so their
  keys are the bare ``"000000123"``; keeping directories stops ``a/1.jpg`` and ``b/1.jpg`` from
  merging into one sample.
* parquet rows: the ``key`` column, else ``f"{file stem}-{row:09d}"``.
* failures that belong to no known sample: ``<shard>`` (the whole file), ``<truncated>``,
  ``<corrupt@OFFSET>`` / ``<corrupt>`` (tar damage), ``<unreadable>`` (I/O error mid-stream).
  ``<shard>``, ``<truncated>``, ``<corrupt>`` and ``<unreadable>`` have an empty member (their
  message names the last member read), so no failure row shares its member with an image.
"""

import json
import logging
import lzma
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tiff", ".tif")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")  # "r|*" streams the compressed ones just as well
PARQUET_EXTENSIONS = (".parquet",)
SHARD_KINDS = ("tar", "parquet", "file")

# Keys of failures that belong to no sample are in angle brackets.
SHARD_KEY = "<shard>"  # the whole file: cannot open, not a tar/parquet, no image column
TRUNCATED_KEY = "<truncated>"  # reading stopped at a cut-off tar
CORRUPT_KEY = "<corrupt>"  # reading stopped at damage it cannot skip (pax header, bad gzip)
UNREADABLE_KEY = "<unreadable>"  # reading stopped on an I/O error

_PROTOCOL_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
_MAX_BRACE_EXPANSION = 1_000_000
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_IMAGE_SUFFIXES = frozenset(ext[1:] for ext in IMAGE_EXTENSIONS)
# tarfile's header errors are undocumented (absent from typeshed) but unchanged since Python 3.2.
_InvalidHeader: type[tarfile.HeaderError] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_EmptyHeader: type[tarfile.HeaderError] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_EOFHeader: type[tarfile.HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]


class InputError(ValueError):
    """Input that cannot be used at all (no such path, nothing matched, missing fsspec extra)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One unit of parallel reading.

    Attributes:
        uri: full URL with protocol, e.g. ``"file:///data/shard-00000.tar"``.
        kind: ``"tar"``, ``"parquet"`` or ``"file"`` (a single image from a folder input).
        key: for ``kind="file"``, the sample key ``list_shards`` derived from the input root;
            ``None`` for tar/parquet (and for a hand-built file shard: the basename is used).
    """

    uri: str
    kind: str
    key: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SHARD_KINDS:
            raise ValueError(f"Shard.kind must be one of {SHARD_KINDS}, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One image's bytes plus its sidecars, or a read failure (``data is None``, ``error`` set).

    ``message`` is a one-line human message: the failure reason, or on a successful entry a
    non-fatal note (an unparseable JSON sidecar, extra image members that were ignored).
    """

    key: str
    source: str
    member: str
    data: bytes | None
    caption: str | None
    metadata: dict[str, Any] | None
    error: str | None = None
    message: str | None = None

    @property
    def failed(self) -> bool:
        return self.data is None


@dataclass(frozen=True, slots=True)
class ReadConfig:
    """How to read Parquet shards (tar and folder layouts are fixed by convention)."""

    image_column: str = "jpg"
    caption_column: str = "caption"
    key_column: str = "key"
    parquet_batch_rows: int = 64

    def __post_init__(self) -> None:
        for name in ("image_column", "caption_column", "key_column"):
            if not getattr(self, name):
                raise ValueError(f"ReadConfig.{name} must be a non-empty column name")
        if self.parquet_batch_rows < 1:
            raise ValueError(
                f"ReadConfig.parquet_batch_rows must be >= 1, got {self.parquet_batch_rows}"
            )


DEFAULT_READ_CONFIG = ReadConfig()


# ---------------------------------------------------------------------------------------------
# Listing


def shard_kind(path: str) -> str | None:
    """Return the shard kind a file name implies (case-insensitive), or None for other files."""
    name = path.lower()
    if name.endswith(TAR_EXTENSIONS):
        return "tar"
    if name.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    if name.endswith(IMAGE_EXTENSIONS):
        return "file"
    return None


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{a,b}`` lists and ``{00000..00099}`` numeric ranges.

    Written here because ``braceexpand`` is not a dependency. Zero padding is kept when either
    bound has a leading zero; braces nest; a brace group that is neither a list nor a range (``{}``,
    ``{x}``) or is unbalanced stays literal. Order follows the shell: leftmost group varies slowest.

    Raises:
        InputError: a pattern expanding to more than a million paths.
    """
    start = pattern.find("{")
    while start != -1:
        end = _matching_brace(pattern, start)
        if end is None:
            return [pattern]
        options = _brace_options(pattern[start + 1 : end])
        if options is not None:
            middles = [m for option in options for m in expand_braces(option)]
            tails = expand_braces(pattern[end + 1 :])
            if len(middles) * len(tails) > _MAX_BRACE_EXPANSION:
                raise InputError(f"brace pattern {pattern!r} expands to over a million paths")
            return [pattern[:start] + m + t for m in middles for t in tails]
        start = pattern.find("{", start + 1)
    return [pattern]


def _matching_brace(text: str, start: int) -> int | None:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _brace_options(body: str) -> list[str] | None:
    parts, depth, last = [], 0, 0
    for i, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    if parts:
        return [*parts, body[last:]]
    match = _RANGE.match(body)
    if match is None:
        return None
    lo, hi = match.group(1), match.group(2)
    padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in (lo, hi))
    width = max(len(lo), len(hi)) if padded else 0
    a, b = int(lo), int(hi)
    if abs(b - a) >= _MAX_BRACE_EXPANSION:
        raise InputError(f"brace range {{{body}}} expands to over a million paths")
    step = 1 if b >= a else -1
    return [f"{n:0{width}d}" for n in range(a, b + step, step)]


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    protocol = fsspec.utils.get_protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        extra = _PROTOCOL_EXTRAS.get(protocol)
        fix = f"pip install 'imgindex[{extra}]'" if extra else f"install what fsspec asks: {exc}"
        raise InputError(f"cannot read {url!r}: {protocol}:// support is missing; {fix}") from exc
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise
        raise InputError(f"cannot read {url!r}: fsspec knows no protocol {protocol!r}") from exc


def _has_magic(path: str) -> bool:
    return any(char in path for char in "*?[")


def _literal_prefix(path: str) -> str:
    parts = path.split("/")
    literal = next(i for i, part in enumerate(parts + ["*"]) if _has_magic(part))
    return "/".join(parts[:literal])


def _under(path: str, directories: set[str]) -> bool:
    parent = posixpath.dirname(path)
    while parent not in directories and parent not in ("", "/", path):
        path, parent = parent, posixpath.dirname(parent)
    return parent in directories


def _match(fs: fsspec.AbstractFileSystem, path: str) -> tuple[list[str], str, bool] | None:
    """Return (file paths, key root, named explicitly) for one expanded pattern, None if none."""
    if _has_magic(path):
        hits = fs.glob(path, detail=True)
        if hits:
            files: list[str] = []
            walked: set[str] = set()
            for hit, info in sorted(hits.items()):
                if _under(hit, walked):  # "**" also matches every subdirectory of a walked one
                    continue
                if info["type"] == "directory":
                    walked.add(hit)
                    files.extend(fs.find(hit))
                else:
                    files.append(hit)
            return files, _literal_prefix(path), False
        # No glob hit: the name may contain a literal "[" or "?", so try it as a plain path.
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info["type"] == "directory":
        return sorted(fs.find(path)), path, False
    return [path], posixpath.dirname(path), True


def list_shards(pattern: str) -> list[Shard]:
    """List the shards of an input, sorted by URI and without duplicates.

    Args:
        pattern: a path or fsspec URL (no protocol = local) to a directory, an image, a ``.tar``
            or a ``.parquet`` file; braces (``shard-{00000..00099}.tar``, ``{a,b}``) expand first,
            then globs (``*``, ``?``, ``**``). Directories, also those a glob matches, are walked
            recursively; sidecars and other files in them are not shards.

    Returns:
        Shards; folder images carry their sample key (see the module docstring).

    Raises:
        InputError: an expansion matched nothing or names a missing path, a file named
            explicitly is of an unknown kind, or the protocol's fsspec package is not installed.
    """
    if not pattern.strip():
        raise InputError("empty input: pass a directory, file, glob or fsspec URL")
    found: dict[str, tuple[str, str, str]] = {}  # uri -> (kind, path, key root)
    problems: list[str] = []
    for expanded in expand_braces(pattern):
        fs, path = _filesystem(expanded)
        match = _match(fs, path)
        if match is None:
            missing = "no input matched" if _has_magic(path) else "input path does not exist:"
            problems.append(f"{missing} {expanded!r}")
            continue
        files, root, explicit = match
        usable = 0
        for file_path in files:
            kind = shard_kind(file_path)
            if kind is None:
                logger.debug("skipping %s: not an image, tar or parquet file", file_path)
                continue
            usable += 1
            found.setdefault(fs.unstrip_protocol(file_path), (kind, file_path, root))
        if not usable:
            what = "is not an" if explicit else "holds no"
            problems.append(
                f"{expanded!r} {what} image ({'/'.join(IMAGE_EXTENSIONS)}), .tar or .parquet"
            )
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        origin = "" if problems[0].endswith(f"{pattern!r}") else f" (from {pattern!r})"
        raise InputError("; ".join(problems[:3]) + more + origin)
    return _build_shards(found)


def _build_shards(found: dict[str, tuple[str, str, str]]) -> list[Shard]:
    roots = {root for kind, _, root in found.values() if kind == "file"}
    protocols = {uri.split("://", 1)[0] for uri, (kind, _, _) in found.items() if kind == "file"}
    common: str | None = None
    if roots and len(protocols) == 1:
        try:
            common = posixpath.commonpath(sorted(roots))
        except ValueError:  # absolute and relative roots mixed: fall back to full paths
            common = None
    shards = []
    for uri in sorted(found):
        kind, path, _ = found[uri]
        key = None
        if kind == "file":
            key = posixpath.relpath(path, common) if common else path.lstrip("/")
        shards.append(Shard(uri=uri, kind=kind, key=key))
    return shards


# ---------------------------------------------------------------------------------------------
# Reading


def iter_shard(shard: Shard, config: ReadConfig = DEFAULT_READ_CONFIG) -> Iterator[ShardEntry]:
    """Stream one shard's samples.

    Args:
        shard: from ``list_shards`` (or built by hand).
        config: Parquet column names and batch size.

    Yields:
        One entry per sample. Damage becomes failure entries (``data is None``) with an error
        code: ``read_error``, ``corrupt_tar``, ``corrupt_tar_header``, ``truncated_tar``,
        ``no_image``, ``corrupt_parquet``, ``missing_column``, ``bad_column_type``,
        ``missing_image``.
    """
    if shard.kind == "file":
        yield _read_file(shard)
    elif shard.kind == "tar":
        yield from _iter_tar(shard)
    else:
        yield from _iter_parquet(shard, config)


def _failure(
    shard: Shard, key: str, member: str, error: str, message: str, level: int = logging.WARNING
) -> ShardEntry:
    """A failure entry; per-sample reasons that can be frequent log at DEBUG (counters count)."""
    message = _one_line(message)
    logger.log(level, "%s [%s] %s: %s", shard.uri, key, error, message)
    return ShardEntry(key, shard.uri, member, None, None, None, error=error, message=message)


def _one_line(text: str) -> str:
    """Library errors (pyarrow's thrift ones) carry newlines and raw control bytes: one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _caption(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return text.strip() or None


def _metadata(raw: bytes | str | None, what: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a JSON object; an unparseable one is a note, not a failure of the image."""
    if raw is None:
        return None, None
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"unparseable {what}: {exc}"
    if not isinstance(parsed, dict):
        return None, f"{what} is a JSON {type(parsed).__name__}, not an object"
    return parsed, None


def _read_file(shard: Shard) -> ShardEntry:
    fs, path = fsspec.core.url_to_fs(shard.uri)
    directory, name = posixpath.split(path)
    key = shard.key or name
    try:
        data = fs.cat_file(path)
    except OSError as exc:
        return _failure(shard, key, key, "read_error", f"cannot read {shard.uri}: {exc}")
    stem = posixpath.join(directory, name.rsplit(".", 1)[0])
    sidecars: dict[str, bytes | None] = {}
    notes = []
    for ext in ("txt", "json"):
        try:
            sidecars[ext] = fs.cat_file(f"{stem}.{ext}")
        except FileNotFoundError:
            sidecars[ext] = None
        except OSError as exc:
            sidecars[ext] = None
            notes.append(f"cannot read .{ext} sidecar: {exc}")
    metadata, note = _metadata(sidecars["json"], ".json sidecar")
    notes.extend([note] if note else [])
    return ShardEntry(
        key,
        shard.uri,
        key,
        data,
        _caption(sidecars["txt"]),
        metadata,
        message="; ".join(notes) or None,
    )


# --- tar ---------------------------------------------------------------------------------------


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

    def entry(self, shard: Shard) -> ShardEntry:
        if self.data is None:
            if self.damaged:
                reason = f"damaged tar header for {', '.join(self.damaged)}; no image member read"
                return _failure(shard, self.key, self.damaged[0], "corrupt_tar_header", reason)
            reason = "sample has no image member"
            return _failure(shard, self.key, self.member, "no_image", reason, logging.DEBUG)
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


def _iter_tar(shard: Shard) -> Iterator[ShardEntry]:
    try:
        f = fsspec.open(shard.uri, "rb").open()
    except OSError as exc:
        yield _failure(shard, SHARD_KEY, "", "read_error", f"cannot open {shard.uri}: {exc}")
        return
    problems: list[_HeaderProblem] = []
    with f:
        try:
            tar = tarfile.open(
                fileobj=f, mode="r|*", tarinfo=_recording_tarinfo(problems), ignore_zeros=True
            )
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            yield _failure(shard, SHARD_KEY, "", "corrupt_tar", f"not a readable tar: {exc}")
            return
        with tar:
            yield from _tar_samples(shard, tar, problems)


def _tar_samples(
    shard: Shard, tar: tarfile.TarFile, problems: list[_HeaderProblem]
) -> Iterator[ShardEntry]:
    pending: _Sample | None = None
    last_member = ""
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            yield from _abort(shard, pending, last_member, exc)
            return
        for problem in _first_damage(problems, at_end=info is None):
            split = _split_member(problem.name) if problem.name else None
            where = f"damaged tar header at byte {problem.offset} ({problem.error})"
            if split is None:
                member = problem.name or f"header at byte {problem.offset}"
                yield _failure(
                    shard,
                    f"<corrupt@{problem.offset}>",
                    member,
                    "corrupt_tar_header",
                    f"{where}; skipped to the next valid header",
                )
                continue
            if pending is not None and pending.key != split[0]:
                yield pending.entry(shard)
                pending = None
            pending = pending or _Sample(split[0])
            pending.damaged.append(problem.name or "")
            pending.notes.append(f"{where}; member {problem.name} skipped")
        if info is None:
            break
        problems.clear()  # what is left now is only the end of the archive
        # Stream mode still keeps every TarInfo it has read; drop them so memory stays flat.
        tar.members = []  # type: ignore[attr-defined]
        last_member = info.name
        split = _split_member(info.name) if info.isfile() else None
        if split is None:
            logger.debug("%s: skipping tar member %s", shard.uri, info.name)
            continue
        key, ext = split
        if pending is not None and pending.key != key:
            yield pending.entry(shard)
            pending = None
        pending = pending or _Sample(key)
        role = _role(ext)
        if role is None or (role == "image" and pending.data is not None):
            if role == "image":
                pending.notes.append(f"ignored extra image member {info.name}")
            continue  # not read: tarfile skips its bytes in the stream
        try:
            payload = tar.extractfile(info).read()  # type: ignore[union-attr]  # isfile() checked
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            yield from _abort(shard, pending, last_member, exc)
            return
        if role == "image":
            pending.data, pending.member = payload, info.name
        elif role == "caption":
            pending.caption = _caption(payload)
        else:
            pending.metadata, note = _metadata(payload, f"{info.name} sidecar")
            pending.notes.extend([note] if note else [])
        pending.member = pending.member or info.name
    if _ended_cleanly(problems):
        if pending is not None:
            yield pending.entry(shard)
    else:
        error = EOFError("archive ends without its end-of-archive marker")
        yield from _abort(shard, pending, last_member, error)


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
        yield _failure(shard, pending.key, member, error, message)
        return
    if pending is not None:
        yield pending.entry(shard)
    # No member: `member` may be the image just yielded, and (source, member) names one image.
    yield _failure(shard, placeholder, "", error, message)


# --- parquet -----------------------------------------------------------------------------------


def _is_binary(type_: pa.DataType) -> bool:
    return (
        pa.types.is_binary(type_)
        or pa.types.is_large_binary(type_)
        or pa.types.is_fixed_size_binary(type_)
        or pa.types.is_binary_view(type_)
    )


def _iter_parquet(shard: Shard, config: ReadConfig) -> Iterator[ShardEntry]:
    stem = posixpath.basename(shard.uri).rsplit(".", 1)[0]
    try:
        f = fsspec.open(shard.uri, "rb").open()
    except OSError as exc:
        yield _failure(shard, SHARD_KEY, "", "read_error", f"cannot open {shard.uri}: {exc}")
        return
    with f:
        try:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            yield _failure(
                shard, SHARD_KEY, "", "corrupt_parquet", f"not a readable parquet: {exc}"
            )
            return
        image = config.image_column
        if image not in schema.names:
            message = (
                f"no image column {image!r}; columns are {schema.names}: "
                "select another with --image-column"
            )
            yield _failure(shard, SHARD_KEY, "", "missing_column", message)
            return
        if not _is_binary(schema.field(image).type):
            message = f"image column {image!r} holds {schema.field(image).type}, not bytes"
            yield _failure(shard, SHARD_KEY, "", "bad_column_type", message)
            return
        yield from _parquet_rows(shard, parquet, schema, config, stem)


def _parquet_rows(
    shard: Shard, parquet: pq.ParquetFile, schema: pa.Schema, config: ReadConfig, stem: str
) -> Iterator[ShardEntry]:
    named = (config.image_column, config.key_column, config.caption_column, "json")
    # Other scalar columns become metadata; other binary columns (a second image) are not read.
    extras = [f.name for f in schema if f.name not in named and not _is_binary(f.type)]
    columns = [c for c in named if c in schema.names] + extras
    row = 0
    # One row group at a time, so a damaged group costs its own rows (as failures) and no more.
    for group in range(parquet.metadata.num_row_groups):
        group_end = row + parquet.metadata.row_group(group).num_rows
        batches = parquet.iter_batches(
            batch_size=config.parquet_batch_rows, row_groups=[group], columns=columns
        )
        while True:
            try:
                batch = next(batches, None)
                rows = None if batch is None else batch.to_pylist()
            except (pa.ArrowException, OSError) as exc:
                message = f"row group {group} is unreadable: {exc}"
                logger.warning("%s: rows %d-%d: %s", shard.uri, row, group_end - 1, message)
                for lost in range(row, group_end):
                    key, member = f"{stem}-{lost:09d}", f"row {lost}"
                    yield _failure(shard, key, member, "corrupt_parquet", message, logging.DEBUG)
                break
            if rows is None:
                break
            for values in rows:
                yield _parquet_entry(shard, values, row, stem, config, extras)
                row += 1
        row = max(row, group_end)


def _parquet_entry(
    shard: Shard, values: dict[str, Any], row: int, stem: str, config: ReadConfig, extras: list[str]
) -> ShardEntry:
    key_value = values.get(config.key_column)
    key = str(key_value) if key_value is not None else f"{stem}-{row:09d}"
    member = f"row {row}"
    data = values[config.image_column]
    if data is None:
        message = f"null {config.image_column!r}"
        return _failure(shard, key, member, "missing_image", message, logging.DEBUG)
    metadata: dict[str, Any] | None = {name: values[name] for name in extras} or None
    parsed, note = _metadata(values.get("json"), "'json' column")
    if parsed is not None:
        metadata = {**(metadata or {}), **parsed}
    caption = _caption(values.get(config.caption_column))
    return ShardEntry(key, shard.uri, member, data, caption, metadata, message=note)
