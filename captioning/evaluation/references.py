"""Prediction and reference files -> the mappings evaluate_captions scores.

Predictions come from `imgindex describe --json` (JSON Lines) or a caption run (Parquet);
references from one JSON file or a folder of KEY.json sidecars, as the synthetic world writes them.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from captioning.errors import CaptioningError, MissingInputError
from captioning.evaluation.text import key_examples, one_line


def load_predictions(path: str) -> dict[str, str]:
    """Read predicted captions.

    Args:
        path: a JSON Lines file (objects with "caption" and "key", or "path" whose file stem is
            the key), a Parquet file with `key` and `caption` columns, or a directory holding
            such files (*.jsonl, *.parquet, searched recursively).

    Returns:
        key -> caption.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a file cannot be read as predictions, a key repeats, or no captions found.
    """
    root = Path(path)
    if not root.exists():
        raise MissingInputError(f"{path}: no such file or directory")
    files = (
        sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in (".jsonl", ".parquet"))
        if root.is_dir()
        else [root]
    )
    out: dict[str, str] = {}
    for f in files:
        rows = _read_parquet(f) if _is_parquet(f) else _read_jsonl(f)
        for key, caption in rows:
            if key in out:
                raise CaptioningError(f"{f}: key {key!r} has more than one prediction")
            out[key] = caption
    if not out:
        raise CaptioningError(f"{path}: no captions found")
    return out


def load_references(
    path: str,
) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, str]]] | None]:
    """Read reference captions and, where given, the true objects.

    Args:
        path: a JSON file mapping key -> [reference, ...] or key -> {"references": [...],
            "objects": [{"shape", "color", "size"}, ...]}; or a directory of KEY.json sidecars
            in that object form (searched recursively; the file stem is the key). An object
            without "references" uses its "caption".

    Returns:
        (key -> references, key -> [(colour, shape), ...] or None when no entry has objects).

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a file is not valid JSON or not in these forms, a key repeats, only some
            entries have objects, or no captions found.
    """
    root = Path(path)
    if not root.exists():
        raise MissingInputError(f"{path}: no such file or directory")
    entries: dict[str, tuple[list[str], list[tuple[str, str]] | None]] = {}
    if root.is_dir():
        for f in sorted(root.rglob("*.json")):
            if f.stem in entries:
                raise CaptioningError(f"{f}: key {f.stem!r} has more than one sidecar")
            entries[f.stem] = _reference_entry(f, f.stem, _read_json(f))
    else:
        data = _read_json(root)
        if not isinstance(data, dict):
            raise CaptioningError(
                f"{root}: expected a JSON object mapping key -> references, "
                f"got {type(data).__name__}"
            )
        for key, value in data.items():
            entries[str(key)] = _reference_entry(root, str(key), value)
    if not entries:
        raise CaptioningError(f"{path}: no captions found")
    references = {k: refs for k, (refs, _) in entries.items()}
    with_objects = [k for k, (_, pairs) in entries.items() if pairs is not None]
    if not with_objects:
        return references, None
    if len(with_objects) < len(entries):
        without = [k for k in entries if entries[k][1] is None]
        raise CaptioningError(
            f"{path}: {len(with_objects)} entries have 'objects' and {len(without)} do not "
            f"({key_examples(without)}); give objects for every image or for none"
        )
    return references, {k: pairs for k, (_, pairs) in entries.items() if pairs is not None}


def _reference_entry(
    source: Path, key: str, value: Any
) -> tuple[list[str], list[tuple[str, str]] | None]:
    where = f"{source}: entry {key!r}"
    refs: Any
    objects: Any = None
    if isinstance(value, list):
        refs = value
    elif isinstance(value, dict):
        refs = value.get("references")
        if refs is None and isinstance(value.get("caption"), str):
            refs = [value["caption"]]
        objects = value.get("objects")
    else:
        raise CaptioningError(
            f"{where} must be a list of captions or an object with 'references', "
            f"got {type(value).__name__}"
        )
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise CaptioningError(f"{where}: no captions found (need a non-empty list of strings)")
    if objects is None:
        return refs, None
    if not isinstance(objects, list) or not all(
        isinstance(o, dict) and isinstance(o.get("color"), str) and isinstance(o.get("shape"), str)
        for o in objects
    ):
        raise CaptioningError(
            f"{where}: 'objects' must be a list of objects with 'color' and 'shape'"
        )
    return refs, [(o["color"], o["shape"]) for o in objects]


def _read_json(f: Path) -> Any:
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CaptioningError(f"{f}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise CaptioningError(f"{f}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_jsonl(f: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    try:
        lines = f.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CaptioningError(f"{f}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaptioningError(f"{f}: invalid JSON at line {n}: {exc.msg}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("caption"), str):
            raise CaptioningError(f"{f}: line {n} is not an object with a string 'caption'")
        if isinstance(row.get("key"), str):
            key = row["key"]
        elif isinstance(row.get("path"), str):
            key = PurePosixPath(row["path"].replace("\\", "/")).stem
        else:
            raise CaptioningError(f"{f}: line {n} has neither a string 'key' nor a 'path'")
        rows.append((key, row["caption"]))
    return rows


def _is_parquet(f: Path) -> bool:
    with f.open("rb") as fh:
        return fh.read(4) == b"PAR1"


def _read_parquet(f: Path) -> list[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(f).names
        missing = [c for c in ("key", "caption") if c not in names]
        if missing:
            raise CaptioningError(
                f"{f}: missing column(s) {', '.join(missing)} (has: {', '.join(names) or 'none'})"
            )
        table = pq.read_table(f, columns=["key", "caption"])
    except pa.ArrowException as exc:
        raise CaptioningError(f"{f}: not a readable Parquet file ({one_line(str(exc))})") from exc
    keys = table.column("key").to_pylist()
    captions = table.column("caption").to_pylist()
    for i, (k, c) in enumerate(zip(keys, captions, strict=True)):
        if not isinstance(k, str) or not isinstance(c, str):
            raise CaptioningError(f"{f}: row {i} needs a string key and caption, got {k!r}, {c!r}")
    # A caption run over a folder keys images by relative path with extension ("sub/a.jpg");
    # sidecar references are keyed by stem ("sub/a").
    return [(_strip_image_extension(k), c) for k, c in zip(keys, captions, strict=True)]


def _strip_image_extension(key: str) -> str:
    from captioning.archives.listing import IMAGE_EXTENSIONS

    p = PurePosixPath(key)
    return str(p.with_suffix("")) if p.suffix.lower() in IMAGE_EXTENSIONS else key
