"""Predicted captions + reference captions (+ true objects) -> COCO caption metrics and accuracy.

The metrics are pycocoevalcap's (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), on PTB-tokenized text as in
the COCO caption evaluation server. Only predicted images are evaluated: references for images
without a prediction are ignored, so a partial run is scored on what it captioned.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioning.archives.synthetic.world import named_pairs
from captioning.errors import CaptioningError
from captioning.evaluation.text import key_examples, one_line

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
    _check_references(keys, references)
    accuracy = attribute_accuracy(predictions, truths) if truths is not None else None
    notes: list[str] = []
    java = shutil.which("java")
    started = time.perf_counter()
    gts, res = _tokenize(
        {k: [one_line(r) for r in references[k]] for k in keys},
        {k: [one_line(predictions[k])] for k in keys},
        java,
        notes,
    )
    scores = _scores(gts, res, java, notes)
    logger.info("scored %d captions in %.1f s", len(keys), time.perf_counter() - started)
    return EvaluationReport(
        scores=scores, attribute_accuracy=accuracy, count=len(keys), notes=tuple(notes)
    )


def _check_references(keys: Sequence[str], references: Mapping[str, Sequence[str]]) -> None:
    """Every predicted image needs at least one reference."""
    if not keys:
        raise CaptioningError("no predictions to evaluate")
    _require_keys(keys, references, "references")
    empty = [k for k in keys if len(references[k]) == 0]
    if empty:
        raise CaptioningError(
            f"{len(empty)} predicted image(s) have an empty reference list: {key_examples(empty)}"
        )


def _scores(
    gts: dict[str, list[str]], res: dict[str, list[str]], java: str | None, notes: list[str]
) -> dict[str, float | None]:
    """Tokenized references and predictions -> every METRIC_KEYS score, in that order."""
    scores: dict[str, float | None] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        scores[f"BLEU-{n}"] = float(value)
    scores["METEOR"] = _meteor(gts, res, java, notes)
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if len(res) < 2:
        scores["CIDEr"] = None
        notes.append("CIDEr unavailable: it needs at least 2 images (its IDF over 1 image is 0)")
    else:
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: scores[k] for k in METRIC_KEYS}


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
        notes.append(f"METEOR unavailable: the METEOR java process failed ({one_line(str(exc))})")
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


def _require_keys(keys: Sequence[str], have: Mapping[str, Any], what: str) -> None:
    missing = [k for k in keys if k not in have]
    if missing:
        raise CaptioningError(
            f"{len(missing)} predicted image(s) have no {what}: {key_examples(missing)}"
        )
