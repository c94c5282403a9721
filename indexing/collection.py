"""A collection root <-> one archive's captions, catalog and published index versions across nights.

Layout (a local path or any fsspec URL):

    ROOT/collection.json          format version; written once
    ROOT/CURRENT                  {"version": "v000003"}: the published version, replaced atomically
    ROOT/versions/v000003/        complete and immutable: catalog.parquet (one row per live key),
                                  shards.parquet (fingerprints), index/ (a FAISS index directory),
                                  version.json (counts), written under a temporary name first
    ROOT/captions/*.parquet       caption cache: every caption ever made, keyed by (sha256,
                                  model_version); one file per flush of a caption worker
    ROOT/failures/*.parquet       images that could not be read, decoded or captioned, per run
    ROOT/embeddings/<embedder>/   caption vectors keyed by the caption text's sha256
    ROOT/runs/<run_id>.json       one summary per update
    ROOT/LOCK                     the running update's owner and heartbeat

Publishing writes the version directory under a temporary name, renames it, and only then
replaces CURRENT (write a temporary file, then rename; on object stores, whose renames are copies,
CURRENT is the last object written). A reader that follows CURRENT always finds a whole version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow.parquet as pq

from indexing.errors import IndexingError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
COLLECTION_FILE = "collection.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = "LOCK"
VERSIONS_DIR = "versions"
CAPTIONS_DIR = "captions"
FAILURES_DIR = "failures"
EMBEDDINGS_DIR = "embeddings"
RUNS_DIR = "runs"
VERSION_FILE = "version.json"
CATALOG_FILE = "catalog.parquet"
SHARDS_FILE = "shards.parquet"
INDEX_DIR = "index"
_VERSION_RE = re.compile(r"^v(\d{6,})$")
TMP_PREFIX = ".tmp-"


class CollectionError(IndexingError):
    """A collection that cannot be used as it is: the message says what is wrong."""


class CollectionLocked(CollectionError):
    """Another update holds the collection's lock."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    created_at: str
    run_id: str
    counts: dict[str, Any]
    current: bool


def is_collection(root: str | os.PathLike[str]) -> bool:
    fs, path = fsspec.core.url_to_fs(str(root))
    return bool(fs.exists(f"{path}/{COLLECTION_FILE}"))


def version_name(number: int) -> str:
    return f"v{number:06d}"


class Collection:
    """One collection root. `open` checks its format; `create=True` makes a new one."""

    def __init__(self, root: str, fs: fsspec.AbstractFileSystem, path: str):
        self.root, self.fs, self.path = root, fs, path.rstrip("/")

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = False) -> Collection:
        root = str(root)
        fs, path = fsspec.core.url_to_fs(root)
        col = cls(root, fs, path)
        marker = col.join(COLLECTION_FILE)
        if not fs.exists(marker):
            if not create:
                raise CollectionError(
                    f"{root} is not an imgindex collection (no {COLLECTION_FILE}): "
                    "run `imgindex update INPUT --collection ROOT` to create one"
                )
            if fs.exists(path) and fs.isdir(path) and fs.ls(path):
                raise CollectionError(
                    f"{root} is not empty and not a collection: pick an empty or new folder"
                )
            fs.makedirs(path, exist_ok=True)
            doc = {"format_version": FORMAT_VERSION, "created_at": _now()}
            col.write_json_atomic(COLLECTION_FILE, doc)
            return col
        col.check_format()
        return col

    def check_format(self) -> None:
        doc = self.read_json(COLLECTION_FILE, "the collection marker")
        version = doc.get("format_version")
        if not isinstance(version, int):
            raise CollectionError(f"{self.join(COLLECTION_FILE)}: no integer format_version")
        if version > FORMAT_VERSION:
            raise CollectionError(
                f"{self.root} was written by a newer imgindex (collection format {version}, "
                f"this one reads up to {FORMAT_VERSION}): upgrade imgindex"
            )

    # -- paths and small files ---------------------------------------------------------------
    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def url(self, *parts: str) -> str:
        """A path as a URL other fsspec/Beam code can open (keeps the protocol)."""
        joined = self.join(*parts)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return joined if protocol in ("file", "local") else f"{protocol}://{joined}"

    def read_json(self, name: str, what: str) -> dict[str, Any]:
        try:
            with self.fs.open(self.join(name), "r") as f:
                doc = json.load(f)
        except FileNotFoundError as e:
            raise CollectionError(f"{self.root}: {what} {name} is missing") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CollectionError(f"{self.join(name)}: {what} is corrupt ({e})") from e
        if not isinstance(doc, dict):
            raise CollectionError(f"{self.join(name)}: {what} is not a JSON object")
        return doc

    def write_json_atomic(self, name: str, doc: dict[str, Any]) -> None:
        """Write through a temporary name, then rename over the target."""
        target = self.join(name)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name.rsplit('/', 1)[-1]}"
        with self.fs.open(tmp, "w") as f:
            f.write(json.dumps(doc, indent=2))
        self.fs.mv(tmp, target)

    # -- versions ----------------------------------------------------------------------------
    def current(self) -> str | None:
        """The published version's name, or None before the first publish."""
        if not self.fs.exists(self.join(CURRENT_FILE)):
            return None
        name = self.read_json(CURRENT_FILE, "the current-version pointer").get("version")
        if not isinstance(name, str) or not _VERSION_RE.match(name):
            raise CollectionError(
                f"{self.join(CURRENT_FILE)} is corrupt (version {name!r}): "
                "use `imgindex rollback ROOT --to VERSION` to point it at a kept version"
            )
        if not self.fs.exists(self.join(VERSIONS_DIR, name, VERSION_FILE)):
            raise CollectionError(
                f"{self.join(CURRENT_FILE)} names {name}, which is not a complete version: "
                "use `imgindex rollback ROOT --to VERSION` to point it at a kept version"
            )
        return name

    def version_names(self) -> list[str]:
        """Complete versions (those with version.json), oldest first."""
        base = self.join(VERSIONS_DIR)
        if not self.fs.exists(base):
            return []
        names = []
        for entry in self.fs.ls(base, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if _VERSION_RE.match(name) and self.fs.exists(f"{base}/{name}/{VERSION_FILE}"):
                names.append(name)
        return sorted(names, key=lambda n: int(n[1:]))

    def next_version(self) -> str:
        """One past every version directory ever started (complete or not), so a name is never
        reused, even after a crash left a half-written one."""
        base = self.join(VERSIONS_DIR)
        highest = 0
        if self.fs.exists(base):
            for entry in self.fs.ls(base, detail=False):
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                m = re.search(r"v(\d{6,})$", name)
                if m:
                    highest = max(highest, int(m.group(1)))
        return version_name(highest + 1)

    def versions(self) -> list[VersionInfo]:
        """Published versions, newest first."""
        current = self.current()
        out = []
        for name in reversed(self.version_names()):
            doc = self.read_json(f"{VERSIONS_DIR}/{name}/{VERSION_FILE}", "version record")
            out.append(
                VersionInfo(
                    name=name,
                    created_at=str(doc.get("created_at", "")),
                    run_id=str(doc.get("run_id", "")),
                    counts=dict(doc.get("counts", {})),
                    current=name == current,
                )
            )
        return out

    def version_url(self, name: str, *parts: str) -> str:
        return self.url(VERSIONS_DIR, name, *parts)

    def new_version_dir(self, name: str) -> str:
        """A fresh temporary directory to build version `name` in (local path or URL)."""
        tmp = self.join(VERSIONS_DIR, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}")
        self.fs.makedirs(tmp, exist_ok=True)
        return tmp

    def publish(self, tmp_dir: str, name: str, record: dict[str, Any]) -> None:
        """Seal a version built in `tmp_dir` (version.json last), rename it to its name, then
        switch CURRENT to it."""
        with self.fs.open(f"{tmp_dir}/{VERSION_FILE}", "w") as f:
            f.write(json.dumps({**record, "version": name}, indent=2))
        self.fs.mv(tmp_dir, self.join(VERSIONS_DIR, name), recursive=True)
        self.set_current(name)

    def set_current(self, name: str) -> None:
        if not self.fs.exists(self.join(VERSIONS_DIR, name, VERSION_FILE)):
            raise CollectionError(f"{self.root}: no complete version {name}")
        self.write_json_atomic(CURRENT_FILE, {"version": name, "switched_at": _now()})

    def rollback(self, to: str | None = None) -> str:
        """Make `to` (default: the version before the current one) current; returns its name."""
        names = self.version_names()
        if to is None:
            current = self.current()
            if current is None or current not in names or names.index(current) == 0:
                raise CollectionError(
                    f"{self.root}: there is no version before "
                    f"{current or 'the current one'} to roll back to"
                )
            to = names[names.index(current) - 1]
        elif to not in names:
            kept = ", ".join(names) or "none"
            raise CollectionError(f"{self.root}: no kept version {to!r} (kept: {kept})")
        self.set_current(to)
        return to

    # -- retention ---------------------------------------------------------------------------
    def prune(self, keep: int) -> list[str]:
        """Remove all but the newest `keep` versions (never the current one) and leftovers of
        crashed runs; returns the removed version names."""
        if keep < 1:
            raise CollectionError(f"--keep must be at least 1, got {keep}")
        current = self.current()
        names = self.version_names()
        drop = [n for n in names[:-keep] if n != current]
        for name in drop:
            self.fs.rm(self.join(VERSIONS_DIR, name), recursive=True)
        base = self.join(VERSIONS_DIR)
        if self.fs.exists(base):
            for entry in self.fs.ls(base, detail=False):
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if name.startswith(TMP_PREFIX):
                    self.fs.rm(entry, recursive=True)
        return drop

    def referenced_runs(self) -> set[str]:
        """run_ids whose captions some kept version's catalog uses."""
        runs: set[str] = set()
        for name in self.version_names():
            with self.fs.open(self.join(VERSIONS_DIR, name, CATALOG_FILE), "rb") as f:
                column = pq.read_table(f, columns=["run_id"]).column("run_id")
            runs.update(r for r in column.unique().to_pylist() if r)
        return runs

    def clean_captions(self, keep_runs: set[str]) -> int:
        """Delete caption and failure files of runs no kept version uses (files are named
        <run_id>-*.parquet), except those of `keep_runs` (the run in progress). Returns how many
        files were removed."""
        used = self.referenced_runs() | keep_runs
        removed = 0
        for sub in (CAPTIONS_DIR, FAILURES_DIR):
            base = self.join(sub)
            if not self.fs.exists(base):
                continue
            for entry in self.fs.ls(base, detail=False):
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                run = name.split("--", 1)[0]
                if name.endswith(".parquet") and run not in used:
                    self.fs.rm(entry)
                    removed += 1
        return removed

    # -- the lock ----------------------------------------------------------------------------
    def lock(self, timeout_s: float = 600.0, heartbeat_s: float = 10.0) -> CollectionLock:
        return CollectionLock(self, timeout_s, heartbeat_s)


class CollectionLock:
    """One writer at a time: ROOT/LOCK holds the owner (host, pid, run) and a heartbeat that a
    thread refreshes. A lock whose owner is a dead process on this host, or whose heartbeat is
    older than `timeout_s`, is taken over, with a warning that says so."""

    def __init__(self, col: Collection, timeout_s: float, heartbeat_s: float):
        self.col, self.timeout_s, self.heartbeat_s = col, timeout_s, heartbeat_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.took_over: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CollectionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                break
            holder = self._read()
            if not holder:  # released between our two looks
                continue
            stale = self._stale_reason(holder)
            if stale is None:
                raise CollectionLocked(
                    f"{self.col.root} is being updated by another run (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {holder.get('started_at')}); try again when "
                    f"it ends (a lock without a heartbeat for {self.timeout_s:.0f} s is taken over)"
                )
            self.took_over = stale
            logger.warning("taking over the lock of %s: %s", self.col.root, stale)
            self.col.fs.rm(self.col.join(LOCK_FILE))
        else:
            raise CollectionLocked(f"{self.col.root} is being updated by another run")
        self._thread = threading.Thread(target=self._beat, daemon=True, name="lock-heartbeat")
        self._thread.start()

    def _create(self) -> bool:
        """Create LOCK, whole, only if it does not exist. On a local disk: write a temporary
        file and hard-link it to LOCK (the link fails if LOCK exists, and LOCK is never seen
        half-written); elsewhere, create it exclusively (mode "x") where the store has that."""
        doc = json.dumps({**self.owner, "started_at": _now(), "heartbeat": time.time()})
        target = self.col.join(LOCK_FILE)
        if _is_local(self.col.fs):
            tmp = self.col.join(f"{TMP_PREFIX}{self.owner['token']}-lock")
            with open(tmp, "w") as f:
                f.write(doc)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        try:
            with self.col.fs.open(target, "xb") as f:
                f.write(doc.encode())
        except FileExistsError:
            return False
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._read().get("token") == self.owner["token"]:
                self.col.fs.rm(self.col.join(LOCK_FILE))
        except (FileNotFoundError, CollectionError):
            pass

    def _beat(self) -> None:
        started = self._read().get("started_at", _now())
        while not self._stop.wait(self.heartbeat_s):
            self._write(started=started)

    def _write(self, started: str) -> None:
        doc = {**self.owner, "started_at": started, "heartbeat": time.time()}
        self.col.write_json_atomic(LOCK_FILE, doc)

    def _read(self) -> dict[str, Any]:
        try:
            return self.col.read_json(LOCK_FILE, "the lock")
        except CollectionError as e:
            if "missing" in str(e):
                return {}
            return {"corrupt": True}

    def _stale_reason(self, holder: dict[str, Any]) -> str | None:
        if holder.get("corrupt") or not holder:
            return "the lock file is unreadable"
        if holder.get("host") == self.owner["host"] and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return f"its owner (pid {holder['pid']} on this host) is no longer running"
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > self.timeout_s:
            return (
                f"its owner's last heartbeat was {age:.0f} s ago (timeout {self.timeout_s:.0f} s)"
            )
        return None


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parquet_files(col: Collection, sub: str) -> Iterator[str]:
    """Every complete Parquet file under ROOT/sub (temporary names skipped), as URLs."""
    base = col.join(sub)
    if not col.fs.exists(base):
        return
    for entry in sorted(col.fs.find(base)):
        name = entry.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and not name.startswith(TMP_PREFIX):
            yield col.url(entry.removeprefix(col.path + "/"))
