"""(source, member) as the caption tables record them -> that image's original bytes.

The three layouts the readers list (see ``listing.py``):

* folder image: the source is the image file's own URI; the member (its key) is not needed.
* tar member: the source is the tar and the member its member name. An uncompressed tar's
  member offsets are read once (headers only, data skipped by seeking) and kept per tar, so a
  read is one seek; the index is rebuilt when the tar's size or mtime changes. A compressed tar
  cannot seek cheaply and is scanned as a stream up to the member.
* Parquet row: the member is ``"row N"``; that row's image column (``ReadConfig.image_column``,
  img2dataset's ``jpg``) is read from the row group holding it.

A source or member that is gone raises ``MemberNotFound`` (also a ``FileNotFoundError``); one
that is there but cannot be read raises ``ArchiveReadError``.
"""

from __future__ import annotations

import logging
import re
import tarfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from captioning.archives.listing import shard_kind
from captioning.archives.records import DEFAULT_READ_CONFIG, ReadConfig
from captioning.errors import CaptioningError

logger = logging.getLogger(__name__)

_ROW = re.compile(r"^row (\d+)$")
_COMPRESSED = (".tar.gz", ".tgz")
# Tars whose member offsets are kept; an entry is one dict of member name -> (offset, size).
TAR_INDEX_CACHE = 256
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class MemberNotFound(CaptioningError, FileNotFoundError):
    """The archive file, or the member inside it, is not there (any more)."""


class ArchiveReadError(CaptioningError):
    """The archive is there but the member cannot be read from it (damage, wrong kind)."""


@dataclass(frozen=True, slots=True)
class _TarIndex:
    fingerprint: tuple[Any, ...]
    members: dict[str, tuple[int, int]]  # member name -> (data offset, size)


class MemberReader:
    """Reads members; holds the per-tar member offsets (thread-safe, LRU of TAR_INDEX_CACHE)."""

    def __init__(self, config: ReadConfig = DEFAULT_READ_CONFIG, cache_size: int = TAR_INDEX_CACHE):
        self._config = config
        self._cache_size = cache_size
        self._tars: OrderedDict[str, _TarIndex] = OrderedDict()
        self._lock = threading.Lock()
        self.index_builds = 0  # how many tars were scanned for offsets (tests read it)

    def read(self, source: str, member: str) -> bytes:
        """The bytes of ``member`` of ``source`` (see the module docstring).

        Raises:
            MemberNotFound: the source or the member is gone.
            ArchiveReadError: it is there but unreadable, or the source is of no known kind.
        """
        kind = shard_kind(source)
        if kind == "file":
            return _read_file(source)
        if kind == "tar":
            if source.lower().endswith(_COMPRESSED):
                return _scan_tar(source, member)
            return self._read_tar(source, member)
        if kind == "parquet":
            return _read_row(source, member, self._config.image_column)
        raise ArchiveReadError(f"{source}: not an image, tar or Parquet file")

    def _read_tar(self, source: str, member: str) -> bytes:
        fs, path = _filesystem(source)
        fingerprint = _fingerprint(fs, path, source)
        index = self._tar_index(source, fs, path, fingerprint)
        place = index.members.get(member)
        if place is None:
            raise MemberNotFound(f"{source} has no member {member!r}")
        offset, size = place
        try:
            with fs.open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except FileNotFoundError as exc:
            raise MemberNotFound(f"{source} is gone: {exc}") from exc
        except OSError as exc:
            raise ArchiveReadError(f"cannot read {member!r} from {source}: {exc}") from exc
        if len(data) != size:
            raise ArchiveReadError(f"{source} is truncated inside member {member!r}")
        return bytes(data)

    def _tar_index(
        self, source: str, fs: fsspec.AbstractFileSystem, path: str, fingerprint: tuple[Any, ...]
    ) -> _TarIndex:
        with self._lock:
            cached = self._tars.get(source)
            if cached is not None and cached.fingerprint == fingerprint:
                self._tars.move_to_end(source)
                return cached
        index = _TarIndex(fingerprint, _member_offsets(fs, path, source))
        with self._lock:
            self.index_builds += 1
            self._tars[source] = index
            self._tars.move_to_end(source)
            while len(self._tars) > self._cache_size:
                self._tars.popitem(last=False)
        return index


_DEFAULT_READER: MemberReader | None = None
_DEFAULT_LOCK = threading.Lock()


def read_member(source: str, member: str) -> bytes:
    """The bytes of ``member`` of ``source``, through one process-wide MemberReader with the
    default ReadConfig (see MemberReader.read for what it raises)."""
    global _DEFAULT_READER
    with _DEFAULT_LOCK:
        if _DEFAULT_READER is None:
            _DEFAULT_READER = MemberReader()
        reader = _DEFAULT_READER
    return reader.read(source, member)


def _filesystem(source: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as exc:
        raise ArchiveReadError(f"cannot open {source}: {exc}") from exc


def _fingerprint(fs: fsspec.AbstractFileSystem, path: str, source: str) -> tuple[Any, ...]:
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise MemberNotFound(f"{source} is gone") from exc
    except OSError as exc:
        raise ArchiveReadError(f"cannot stat {source}: {exc}") from exc
    if info.get("type") != "file":
        raise MemberNotFound(f"{source} is not a file")
    return (info.get("size"), info.get("mtime"), info.get("ETag") or info.get("etag"))


def _member_offsets(
    fs: fsspec.AbstractFileSystem, path: str, source: str
) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of every regular file in an uncompressed tar."""
    members: dict[str, tuple[int, int]] = {}
    try:
        with fs.open(path, "rb") as f:
            _check_first_header(f.read(tarfile.BLOCKSIZE), source)
            f.seek(0)
            # Random access: headers are read, data is skipped by seeking. ignore_zeros as the
            # stream reader has it, so members after a zero block (concatenated tars) are found.
            with tarfile.open(fileobj=f, mode="r:", ignore_zeros=True) as tar:
                for info in tar:
                    if info.isfile():
                        members.setdefault(info.name, (info.offset_data, info.size))
                    tar.members = []  # type: ignore[attr-defined]  # keep memory flat
    except FileNotFoundError as exc:
        raise MemberNotFound(f"{source} is gone") from exc
    except _TAR_ERRORS as exc:
        if not members:
            raise ArchiveReadError(f"{source} is not a readable tar: {exc}") from exc
        logger.warning("%s: member index stops at damage (%s)", source, exc)
    logger.debug("indexed %d members of %s", len(members), source)
    return members


def _check_first_header(block: bytes, source: str) -> None:
    """ignore_zeros would skip a file that is no tar at all block by block: refuse it here."""
    if len(block) < tarfile.BLOCKSIZE:
        raise ArchiveReadError(f"{source} is not a readable tar: shorter than one block")
    if block.count(0) == len(block):
        return  # an empty tar
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise ArchiveReadError(f"{source} is not a readable tar: {exc}") from exc


def _scan_tar(source: str, member: str) -> bytes:
    """A compressed tar: stream it up to ``member``."""
    fs, path = _filesystem(source)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if info.name == member and info.isfile():
                    handle = tar.extractfile(info)
                    if handle is None:
                        break
                    return handle.read()
                tar.members = []  # type: ignore[attr-defined]
    except FileNotFoundError as exc:
        raise MemberNotFound(f"{source} is gone") from exc
    except _TAR_ERRORS as exc:
        raise ArchiveReadError(f"cannot read {member!r} from {source}: {exc}") from exc
    raise MemberNotFound(f"{source} has no member {member!r}")


def _read_file(source: str) -> bytes:
    fs, path = _filesystem(source)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError as exc:
        raise MemberNotFound(f"{source} is gone") from exc
    except IsADirectoryError as exc:
        raise MemberNotFound(f"{source} is not a file") from exc
    except OSError as exc:
        raise ArchiveReadError(f"cannot read {source}: {exc}") from exc


def _read_row(source: str, member: str, column: str) -> bytes:
    """Row N's ``column`` of a Parquet file, reading only the row group that holds it."""
    match = _ROW.match(member)
    if match is None:
        raise MemberNotFound(f"{source}: member {member!r} is not a row ('row N')")
    row = int(match.group(1))
    fs, path = _filesystem(source)
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            if column not in parquet.schema_arrow.names:
                raise MemberNotFound(f"{source} has no image column {column!r}")
            group, start = _row_group_of(parquet, row, source)
            values = parquet.read_row_group(group, columns=[column]).column(column)
            data = values[row - start].as_py()
    except MemberNotFound:
        raise
    except FileNotFoundError as exc:
        raise MemberNotFound(f"{source} is gone") from exc
    except (pa.ArrowException, OSError) as exc:
        raise ArchiveReadError(f"cannot read {member!r} of {source}: {exc}") from exc
    if data is None:
        raise MemberNotFound(f"{source}: {member} has no image (null {column!r})")
    if not isinstance(data, bytes):
        raise ArchiveReadError(
            f"{source}: column {column!r} holds {type(data).__name__}, not bytes"
        )
    return data


def _row_group_of(parquet: pq.ParquetFile, row: int, source: str) -> tuple[int, int]:
    """(row group, its first row) holding ``row``."""
    start = 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if row < start + rows:
            return group, start
        start += rows
    raise MemberNotFound(f"{source} has {start} rows, no row {row}")
