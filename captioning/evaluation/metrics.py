"""Predicted captions + reference captions (+ true objects) -> COCO caption metrics and accuracy.

The metrics are pycocoevalcap's (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), on PTB-tokenized text as in
the COCO caption evaluation server. Only predicted images are evaluated: references for images
without a prediction are ignored, so a partial run is scored on what it captioned.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioning.archives.synthetic.world import named_pairs
from captioning.errors import CaptioningError, MissingInputError

logger = logging.getLogger(__name__)

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

# PTBTokenizer drops exactly these tokens (after -lowerCase, so "-LRB-" is never dropped: "(" stays
# as "-lrb-"); the python fallback copies that quirk to give the same scores.
_PTB_DROPPED = frozenset(ptbtokenizer.PUNCTUATIONS) | {'"'}
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_TOKEN = re.compile(
    r"\w+(?=n't\b)"  # "don't" -> "do" "n't", as PTB splits it
    r"|n't\b"
    r"|'\w+"  # "it's" -> "it" "'s"
    r"|(?:[^\W\d_]\.){2,}"  # "e.g.", "u.s." keep their dots
    r"|\w+(?:[-.&/]\w+)*"  # "left-hand", "3.5", "a&b" stay whole
    r"|\.\.\.|--|\S"
)
_JAVA_MISSING = "java not found on PATH"


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    scores: dict[str, float | None]  # every METRIC_KEYS key; None where a metric is unavailable
    attribute_accuracy: float | None  # None when no structured truth was given
    count: int  # images evaluated
    notes: tuple[str, ...]  # why a metric is missing or approximate

    def as_dict(self) -> dict[str, float | int | None]:
        """METRIC_KEYS, then "attribute_accuracy" and "count", in that order."""
        out: dict[str, float | int | None] = {k: self.scores[k] for k in METRIC_KEYS}
        out["attribute_accuracy"] = self.attribute_accuracy
        out["count"] = self.count
        return out


def evaluate_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    truths: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> EvaluationReport:
    """Score predicted captions against references, COCO style.

    Needs `java` on PATH for the official PTB tokenizer and METEOR. Without it METEOR is None and
    a python tokenizer that mimics PTB's is used; both are said in `notes`. CIDEr-D weighs n-grams
    by their document frequency over the evaluated references, so it needs at least 2 images and
    is None (with a note) for one.

    Args:
        predictions: image key -> predicted caption. Only these images are evaluated.
        references: image key -> reference captions; keys without a prediction are ignored.
        truths: image key -> true (colour, shape) pairs, for attribute_accuracy.

    Returns:
        The corpus-level scores (BLEU is corpus BLEU; the others are means over images).

    Raises:
        ValueError: no predictions, a predicted key without references, or (with truths) a
            predicted key without truth.
    """
    keys = sorted(predictions)
    if not keys:
        raise CaptioningError("no predictions to evaluate")
    _require_keys(keys, references, "references")
    empty = [k for k in keys if len(references[k]) == 0]
    if empty:
        raise CaptioningError(
            f"{len(empty)} predicted image(s) have an empty reference list: {_examples(empty)}"
        )
    accuracy = attribute_accuracy(predictions, truths) if truths is not None else None

    notes: list[str] = []
    java = shutil.which("java")
    started = time.perf_counter()
    gts, res = _tokenize(
        {k: [_one_line(r) for r in references[k]] for k in keys},
        {k: [_one_line(predictions[k])] for k in keys},
        java,
        notes,
    )
    scores: dict[str, float | None] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        scores[f"BLEU-{n}"] = float(value)
    scores["METEOR"] = _meteor(gts, res, java, notes)
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if len(keys) < 2:
        scores["CIDEr"] = None
        notes.append("CIDEr unavailable: it needs at least 2 images (its IDF over 1 image is 0)")
    else:
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    logger.info("scored %d captions in %.1f s", len(keys), time.perf_counter() - started)
    return EvaluationReport(
        scores={k: scores[k] for k in METRIC_KEYS},
        attribute_accuracy=accuracy,
        count=len(keys),
        notes=tuple(notes),
    )


def attribute_accuracy(
    predictions: Mapping[str, str], truths: Mapping[str, Sequence[tuple[str, str]]]
) -> float:
    """Fraction of images whose caption names exactly their true (colour, shape) pairs.

    Sizes, counts and relations are not checked: "two red circles" is right for two red circles
    and for one. Names are compared as sets, so order and repetition do not matter.

    Args:
        predictions: image key -> predicted caption.
        truths: image key -> (colour, shape) pairs of its objects; keys without a prediction
            are ignored.

    Returns:
        Correct images / predicted images, in [0, 1].

    Raises:
        ValueError: no predictions, or a predicted key without truth.
    """
    keys = sorted(predictions)
    if not keys:
        raise CaptioningError("no predictions to evaluate")
    _require_keys(keys, truths, "structured truth (objects)")
    correct = 0
    for key in keys:
        true_pairs = {(c.strip().lower(), s.strip().lower()) for c, s in truths[key]}
        correct += named_pairs(predictions[key]) == true_pairs
    return correct / len(keys)


# --------------------------------------------------------------------------- tokenizing


def python_tokenize(caption: str) -> str:
    """PTB-like tokenizing without java: lowercase, split clitics and punctuation, drop what
    PTBTokenizer drops. Same output as pycocoevalcap's PTBTokenizer on ordinary captions."""
    tokens = (_PTB_BRACKETS.get(t, t) for t in _TOKEN.findall(caption.lower()))
    return " ".join(t for t in tokens if t not in _PTB_DROPPED)


def _tokenize(
    gts: dict[str, list[str]], res: dict[str, list[str]], java: str | None, notes: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Tokenize references and predictions together, with one java start."""
    folder = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    why_not = _JAVA_MISSING if java is None else None
    if why_not is None and not os.access(folder, os.W_OK):
        why_not = f"pycocoevalcap writes its temporary file to {folder}, which is not writable"
    if why_not is not None:
        notes.append(
            f"PTB tokenizer unavailable ({why_not}): used a python tokenizer that "
            "mimics it; scores may differ slightly from the official ones"
        )
        return (
            {k: [python_tokenize(c) for c in v] for k, v in gts.items()},
            {k: [python_tokenize(c) for c in v] for k, v in res.items()},
        )
    both: dict[Hashable, list[dict[str, str]]] = {}
    for side, captions in (("gts", gts), ("res", res)):
        for k, v in captions.items():
            both[(side, k)] = [{"caption": c} for c in v]
    out = PTBTokenizer().tokenize(both)
    lost = [k for k, v in both.items() if len(out.get(k, ())) != len(v)]
    if lost:
        raise RuntimeError(
            f"PTBTokenizer returned no tokens for {len(lost)} caption group(s), e.g. {lost[0]}; "
            f"check that `{java} -version` works and that {folder} holds stanford-corenlp-3.4.1.jar"
        )
    return {k: out[("gts", k)] for k in gts}, {k: out[("res", k)] for k in res}


# --------------------------------------------------------------------------- METEOR


def _meteor(
    gts: dict[str, list[str]], res: dict[str, list[str]], java: str | None, notes: list[str]
) -> float | None:
    if java is None:
        notes.append(f"METEOR unavailable: {_JAVA_MISSING}")
        return None
    # "|||" separates fields in METEOR's stdin protocol; one inside a caption would derail it.
    gts = {k: [c.replace("|||", " ") for c in v] for k, v in gts.items()}
    res = {k: [c.replace("|||", " ") for c in v] for k, v in res.items()}
    started = time.perf_counter()
    meteor = Meteor()  # starts `java -jar meteor-1.5.jar` and loads its paraphrase table (seconds)
    try:
        score, _ = meteor.compute_score(gts, res)
    except (OSError, ValueError) as exc:  # the java process died: a broken pipe or an empty line
        notes.append(f"METEOR unavailable: the METEOR java process failed ({_one_line(str(exc))})")
        return None
    finally:
        _close_meteor(meteor)
    logger.info("METEOR took %.1f s", time.perf_counter() - started)
    return float(score)


def _close_meteor(meteor: Meteor) -> None:
    """Stop METEOR's java process now rather than whenever the object is collected."""
    # A compute_score that failed keeps the lock, and Meteor.__del__ would wait on it forever.
    if meteor.lock.locked():
        meteor.lock.release()
    close = getattr(meteor, "close", None)
    if callable(close):  # newer pycocoevalcap
        close()
        return
    proc = meteor.meteor_p
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.kill()
    proc.wait()


# --------------------------------------------------------------------------- loading


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
            f"({_examples(without)}); give objects for every image or for none"
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
        raise CaptioningError(f"{f}: not a readable Parquet file ({_one_line(str(exc))})") from exc
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


# --------------------------------------------------------------------------- helpers


def _require_keys(keys: Sequence[str], have: Mapping[str, Any], what: str) -> None:
    missing = [k for k in keys if k not in have]
    if missing:
        raise CaptioningError(
            f"{len(missing)} predicted image(s) have no {what}: {_examples(missing)}"
        )


def _examples(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _one_line(text: str) -> str:
    # METEOR and PTB read one caption per line; any line break inside one would shift the rest.
    return " ".join(text.split())
