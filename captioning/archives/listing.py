"""Image inputs (folders, WebDataset/img2dataset tars, Parquet) via fsspec -> streamed ShardEntry.

``list_shards`` turns a path, glob, brace pattern or fsspec URL into sorted ``Shard`` records (the
unit of parallelism); ``iter_shard`` streams one shard's samples as ``ShardEntry`` records, one
member or record batch at a time. A damaged input yields failure entries (``data is None`` with an
``error`` code), never an exception: only ``list_shards`` raises, with ``InputError``, when the
input cannot be used at all.

img2dataset's output is read as it is laid out (see ``img2dataset.py``): a ``NNNNN.parquet`` beside
a same-stem ``NNNNN.tar`` is that tar's sidecar, not a shard, and is read after the tar for the
samples img2dataset failed; ``NNNNN_stats.json`` is never a shard. Its failed rows (status other
than ``"success"``, in a sidecar or a Parquet shard) are failure entries whose error is the status
and whose message is img2dataset's error_message, so every sample it attempted is counted once.

Keys (unique within one ``list_shards`` input):

* folder images: the path relative to the input's root, *with* its extension
  (``"sub/img 1.jpg"``), because ``a.jpg`` and ``a.png`` side by side are common and dropping the
  extension would merge them. The root is the common parent of every directory, glob prefix and
  explicitly named file in the input. Sidecars are looked up by stem: ``sub/img 1.txt``/``.json``.
* tar members: the WebDataset rule, member path up to the first dot of its basename
  (``"dir/000000123.jpg"`` -> ``"dir/000000123"``). img2dataset tars have no directories, so their
  keys are the bare ``"000000123"``; keeping directories stops ``a/1.jpg`` and ``b/1.jpg`` from
  merging into one sample.
* parquet rows: the ``key`` column, else ``f"{file stem}-{row:09d}"``; failures from a sidecar
  have the sidecar as their source and ``row N`` as their member.
* failures that belong to no known sample: ``<shard>`` (the whole file), ``<truncated>``,
  ``<corrupt@OFFSET>`` / ``<corrupt>`` (tar damage), ``<unreadable>`` (I/O error mid-stream).
  ``<shard>``, ``<truncated>``, ``<corrupt>`` and ``<unreadable>`` have an empty member (their
  message names the last member read), so no failure row shares its member with an image.
"""

import logging
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

from captioning.archives.img2dataset import sidecar_path
from captioning.archives.parquet import iter_parquet
from captioning.archives.records import (
    CORRUPT_KEY,
    DEFAULT_READ_CONFIG,
    IMAGE_EXTENSIONS,
    PARQUET_EXTENSIONS,
    SHARD_KEY,
    SHARD_KINDS,
    TAR_EXTENSIONS,
    TRUNCATED_KEY,
    UNREADABLE_KEY,
    ReadConfig,
    Shard,
    ShardEntry,
    SourceFields,
    failure_entry,
    parse_metadata,
    sidecar_caption,
    source_fields,
)
from captioning.archives.tar import iter_tar
from captioning.errors import CaptioningError

__all__ = [
    "CORRUPT_KEY",
    "DEFAULT_READ_CONFIG",
    "IMAGE_EXTENSIONS",
    "PARQUET_EXTENSIONS",
    "SHARD_KEY",
    "SHARD_KINDS",
    "TAR_EXTENSIONS",
    "TRUNCATED_KEY",
    "UNREADABLE_KEY",
    "InputError",
    "ReadConfig",
    "Shard",
    "ShardEntry",
    "SourceFields",
    "expand_braces",
    "iter_shard",
    "list_shards",
    "shard_kind",
    "source_fields",
]

logger = logging.getLogger(__name__)

_PROTOCOL_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
_MAX_BRACE_EXPANSION = 1_000_000
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class InputError(CaptioningError):
    """Input that cannot be used at all (no such path, nothing matched, missing fsspec extra)."""


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


@dataclass(slots=True)
class _Matched:
    """The files one expanded pattern names, and the directories all of whose files they are."""

    files: list[str]
    root: str  # the key root of folder images
    explicit: bool  # one file, named
    walked: set[str] = field(default_factory=set)


def _match(fs: fsspec.AbstractFileSystem, path: str) -> _Matched | None:
    """The files of one expanded pattern; None if it names nothing."""
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
            return _Matched(files, _literal_prefix(path), False, walked)
        # No glob hit: the name may contain a literal "[" or "?", so try it as a plain path.
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info["type"] == "directory":
        return _Matched(sorted(fs.find(path)), path, False, {path})
    return _Matched([path], posixpath.dirname(path), True)


def list_shards(pattern: str) -> list[Shard]:
    """List the shards of an input, sorted by URI and without duplicates.

    Args:
        pattern: a path or fsspec URL (no protocol = local) to a directory, an image, a ``.tar``
            or a ``.parquet`` file; braces (``shard-{00000..00099}.tar``, ``{a,b}``) expand first,
            then globs (``*``, ``?``, ``**``). Directories, also those a glob matches, are walked
            recursively; sidecars and other files in them are not shards.

    Returns:
        Shards; folder images carry their sample key, and a tar with a same-stem ``.parquet``
        beside it (img2dataset's sidecar) carries that file's URL instead of listing it.

    Raises:
        InputError: an expansion matched nothing or names a missing path, a file named
            explicitly is of an unknown kind, or the protocol's fsspec package is not installed.
    """
    if not pattern.strip():
        raise InputError("empty input: pass a directory, file, glob or fsspec URL")
    found: dict[str, tuple[str, str, str]] = {}  # uri -> (kind, path, key root)
    sidecars = _Sidecars()
    problems: list[str] = []
    for expanded in expand_braces(pattern):
        fs, path = _filesystem(expanded)
        match = _match(fs, path)
        if match is None:
            missing = "no input matched" if _has_magic(path) else "input path does not exist:"
            problems.append(f"{missing} {expanded!r}")
            continue
        files, root, explicit = match.files, match.root, match.explicit
        listed = set(files)
        usable = 0
        for file_path in files:
            kind = shard_kind(file_path)
            if kind is None:
                logger.debug("skipping %s: not an image, tar or parquet file", file_path)
                continue
            usable += 1
            uri = fs.unstrip_protocol(file_path)
            found.setdefault(uri, (kind, file_path, root))
            if kind == "tar":
                sidecars.look_up(fs, uri, file_path, listed, match.walked)
        if not usable:
            what = "is not an" if explicit else "holds no"
            problems.append(
                f"{expanded!r} {what} image ({'/'.join(IMAGE_EXTENSIONS)}), .tar or .parquet"
            )
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        origin = "" if problems[0].endswith(f"{pattern!r}") else f" (from {pattern!r})"
        raise InputError("; ".join(problems[:3]) + more + origin)
    paired = sidecars.owned
    if paired:
        logger.info("%d img2dataset sidecar .parquet files are read with their tars", len(paired))
    found = {uri: item for uri, item in found.items() if uri not in paired}
    return _build_shards(found, sidecars.of)


@dataclass(slots=True)
class _Sidecars:
    """Tar URI -> the URI of the same-stem ``.parquet`` beside it (img2dataset's sidecar).

    A tar in a walked directory is looked up among the files already listed; any other tar (named,
    or matched by a glob that left the sidecar out) costs one listing of its directory, once.
    """

    of: dict[str, str] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)  # the values of `of`
    _names: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def look_up(
        self,
        fs: fsspec.AbstractFileSystem,
        uri: str,
        tar_path: str,
        listed: set[str],
        walked: set[str],
    ) -> None:
        path = sidecar_path(tar_path)
        if path is None or uri in self.of:
            return
        if path in listed:
            found = True
        elif _under(tar_path, walked):
            found = False  # every file of its directory is listed
        else:
            found = posixpath.basename(path) in self._directory(fs, posixpath.dirname(path))
        sidecar = fs.unstrip_protocol(path) if found else None
        if sidecar is not None and sidecar not in self.owned:  # x.tar, x.tar.gz: one owner
            self.of[uri] = sidecar
            self.owned.add(sidecar)

    def _directory(self, fs: fsspec.AbstractFileSystem, directory: str) -> set[str]:
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        cache_key = (protocol, directory)
        if cache_key not in self._names:
            try:
                listed = fs.ls(directory or ".", detail=False)
            except OSError as exc:
                logger.debug("cannot list %s for img2dataset sidecars: %s", directory, exc)
                listed = []
            self._names[cache_key] = {posixpath.basename(str(p).rstrip("/")) for p in listed}
        return self._names[cache_key]


def _build_shards(found: dict[str, tuple[str, str, str]], sidecars: dict[str, str]) -> list[Shard]:
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
        shards.append(Shard(uri=uri, kind=kind, key=key, sidecar=sidecars.get(uri)))
    return shards


# ---------------------------------------------------------------------------------------------
# Reading


def iter_shard(shard: Shard, config: ReadConfig = DEFAULT_READ_CONFIG) -> Iterator[ShardEntry]:
    """Stream one shard's samples.

    Args:
        shard: from ``list_shards`` (or built by hand).
        config: Parquet column names and batch size.

    Yields:
        One entry per sample: a tar's, then its sidecar's failed rows. Damage becomes failure
        entries (``data is None``) with an error code: ``read_error``, ``corrupt_tar``,
        ``corrupt_tar_header``, ``truncated_tar``, ``no_image``, ``corrupt_parquet``,
        ``missing_column``, ``bad_column_type``, ``missing_image``; a sample img2dataset failed
        has its status as the code (``failed_to_download``, ``failed_to_resize``).
    """
    if shard.kind == "file":
        yield _read_file(shard)
    elif shard.kind == "tar":
        yield from iter_tar(shard)
        if shard.sidecar is not None:
            yield from iter_parquet(Shard(shard.sidecar, "parquet"), config, sidecar=True)
    else:
        yield from iter_parquet(shard, config)


def _read_file(shard: Shard) -> ShardEntry:
    fs, path = fsspec.core.url_to_fs(shard.uri)
    directory, name = posixpath.split(path)
    key = shard.key or name
    try:
        data = fs.cat_file(path)
    except OSError as exc:
        return failure_entry(shard, key, key, "read_error", f"cannot read {shard.uri}: {exc}")
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
    metadata, note = parse_metadata(sidecars["json"], ".json sidecar")
    notes.extend([note] if note else [])
    return ShardEntry(
        key,
        shard.uri,
        key,
        data,
        sidecar_caption(sidecars["txt"]),
        metadata,
        message="; ".join(notes) or None,
    )
