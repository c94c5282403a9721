"""evaluate_captions on hand-checked examples and attribute accuracy.

Java starts at most twice here (one PTB tokenizer run, one METEOR run, ~10 s together); every
other metric test hides java so the pure-python tokenizer is used and METEOR is skipped.
"""

from __future__ import annotations

import io
import math
import shutil
import threading

import pytest

from captioning.evaluation import metrics as evaluate
from captioning.evaluation.metrics import (
    METRIC_KEYS,
    EvaluationReport,
    attribute_accuracy,
    evaluate_captions,
    python_tokenize,
)

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java not on PATH")

# Three images whose references share few n-grams, so CIDEr's IDF can tell them apart.
REFERENCES = {
    "001": ["a large red circle", "a big red circle on a plain background"],
    "002": ["two small blue squares", "there are two tiny blue squares"],
    "003": ["a green star left of a yellow hexagon", "a yellow hexagon right of a green star"],
}
RIGHT = {"001": "A large red circle.", "002": "two small blue squares", "003": "a green star"}


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)


def scores_without_java(predictions, references) -> dict[str, float | None]:
    report = evaluate_captions(predictions, references)
    assert any("PTB tokenizer unavailable" in n for n in report.notes)
    return report.scores


# --------------------------------------------------------------------------- metrics


def test_bleu_exact_match(no_java):
    # 3 of 3 unigrams, 2 of 2 bigrams, 1 of 1 trigram match and the lengths agree (BP = 1):
    # BLEU-1 = BLEU-2 = BLEU-3 = 1.
    s = scores_without_java({"a": "a red circle"}, {"a": ["a red circle"]})
    assert s["BLEU-1"] == pytest.approx(1.0)
    assert s["BLEU-3"] == pytest.approx(1.0)
    assert s["ROUGE-L"] == pytest.approx(1.0)


def test_bleu_partial_match(no_java):
    # "a red square" vs "a red circle": unigrams a, red match -> p1 = 2/3; bigrams: "a red"
    # matches, "red square" does not -> p2 = 1/2. Same length, BP = 1.
    # BLEU-1 = 2/3 = 0.6667; BLEU-2 = sqrt(2/3 * 1/2) = sqrt(1/3) = 0.5774.
    s = scores_without_java({"a": "a red square"}, {"a": ["a red circle"]})
    assert s["BLEU-1"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["BLEU-2"] == pytest.approx(math.sqrt(1 / 3), abs=1e-6)


def test_bleu_brevity_penalty(no_java):
    # "a red" vs "a red circle": p1 = 2/2 = 1, but c = 2 < r = 3, so
    # BP = exp(1 - r/c) = exp(1 - 3/2) = exp(-0.5) = 0.6065 = BLEU-1.
    s = scores_without_java({"a": "a red"}, {"a": ["a red circle"]})
    assert s["BLEU-1"] == pytest.approx(math.exp(-0.5), abs=1e-6)


def test_rouge_l_hand_checked(no_java):
    # "a red circle" vs "a big red shiny circle": LCS = "a red circle" = 3 tokens.
    # P = 3/3 = 1, R = 3/5 = 0.6, beta = 1.2:
    # F = (1 + 1.44) * P * R / (R + 1.44 * P) = 1.464 / 2.04 = 0.717647.
    s = scores_without_java({"a": "a red circle"}, {"a": ["a big red shiny circle"]})
    assert s["ROUGE-L"] == pytest.approx(1.464 / 2.04, abs=1e-6)


def test_cider_prefers_right_captions(no_java):
    keys = sorted(REFERENCES)
    wrong = {k: RIGHT[keys[(i + 1) % 3]] for i, k in enumerate(keys)}  # each gets another's
    right = scores_without_java(RIGHT, REFERENCES)
    shuffled = scores_without_java(wrong, REFERENCES)
    assert right["CIDEr"] > 1.0 > shuffled["CIDEr"]
    assert right["BLEU-1"] > shuffled["BLEU-1"]


def test_cider_is_unavailable_for_one_image_not_zero(no_java):
    report = evaluate_captions({"a": "a red circle"}, {"a": ["a red circle"]})
    assert report.scores["CIDEr"] is None
    assert any(n.startswith("CIDEr unavailable") for n in report.notes)


def test_without_java_meteor_is_none_with_a_note(no_java):
    report = evaluate_captions(RIGHT, REFERENCES)
    assert report.scores["METEOR"] is None
    assert "METEOR unavailable: java not found on PATH" in report.notes
    assert all(report.scores[k] is not None for k in METRIC_KEYS if k != "METEOR")
    assert report.as_dict()["METEOR"] is None


@pytest.fixture(scope="module")
def java_report() -> EvaluationReport:
    if not HAS_JAVA:
        pytest.skip("java not on PATH")
    return evaluate_captions(RIGHT, REFERENCES)


@needs_java
def test_with_java_meteor_is_a_score(java_report):
    assert java_report.notes == ()
    assert 0.0 < java_report.scores["METEOR"] <= 1.0
    assert java_report.count == 3


@needs_java
def test_python_tokenizer_gives_the_ptb_scores(java_report, monkeypatch):
    # On ordinary captions the fallback tokenizes as PTB does, so the scores agree.
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    fallback = evaluate_captions(RIGHT, REFERENCES).scores
    for k in METRIC_KEYS:
        if k != "METEOR":
            assert fallback[k] == pytest.approx(java_report.scores[k]), k


def test_a_failed_meteor_is_none_and_its_process_is_stopped(monkeypatch):
    class FakeProcess:
        stdin, stdout, stderr = io.BytesIO(), io.BytesIO(), io.BytesIO()
        killed = False

        def kill(self):
            self.killed = True

        def wait(self):
            return -9

    class DyingMeteor:  # as pycocoevalcap's Meteor behaves when java exits mid-run
        def __init__(self):
            self.lock = threading.Lock()
            self.meteor_p = FakeProcess()

        def compute_score(self, gts, res):
            self.lock.acquire()
            return float(b"")  # what readline() gives once the process is gone

    made: list[DyingMeteor] = []
    monkeypatch.setattr(evaluate, "Meteor", lambda: made.append(DyingMeteor()) or made[-1])
    notes: list[str] = []
    assert evaluate._meteor({"a": ["x"]}, {"a": ["x"]}, "/usr/bin/java", notes) is None
    assert notes and notes[0].startswith("METEOR unavailable: the METEOR java process failed")
    # The lock is free again (Meteor.__del__ takes it) and the process is gone.
    assert not made[0].lock.locked()
    assert made[0].meteor_p.killed and made[0].meteor_p.stdin.closed


@needs_java
def test_python_tokenizer_matches_ptb_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [
        "A red circle, left of the Blue square.",
        "Two (green) triangles; isn't it? \"Yes\" -- it's 3.5 left-hand A&B...",
        "e.g. a U.S. flag: 50% of it / half!",
        "",
    ]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    for i, c in enumerate(captions):
        assert python_tokenize(c) == ptb[i][0], c


def test_report_as_dict_order():
    report = EvaluationReport(
        scores=dict.fromkeys(METRIC_KEYS, 0.5), attribute_accuracy=None, count=2, notes=()
    )
    assert list(report.as_dict()) == [*METRIC_KEYS, "attribute_accuracy", "count"]


def test_only_predicted_images_are_evaluated(no_java):
    refs = {**REFERENCES, "999": ["an unused reference"]}
    report = evaluate_captions(RIGHT, refs)
    assert report.count == 3
    assert report.scores == evaluate_captions(RIGHT, REFERENCES).scores


def test_predictions_without_references_are_refused():
    preds = {f"k{i}": "a red circle" for i in range(7)}
    with pytest.raises(ValueError, match=r"7 predicted image\(s\) have no references") as info:
        evaluate_captions(preds, {})
    assert "'k0', 'k1', 'k2', 'k3', 'k4' and 2 more" in str(info.value)


def test_empty_predictions_are_refused():
    with pytest.raises(ValueError, match="no predictions"):
        evaluate_captions({}, REFERENCES)


# --------------------------------------------------------------------------- attributes

TRUTHS = {
    "rel": [("red", "circle"), ("blue", "square")],
    "two": [("green", "triangle"), ("green", "triangle")],
    "cross": [("white", "cross")] * 3,
    "missing": [("red", "circle"), ("blue", "square")],
    "colour": [("red", "circle")],
}
CAPTIONS = {
    "rel": "a large red circle left of a small blue square",  # right
    "two": "two small green triangles",  # right: plural, pairs compared as sets
    "cross": "three large white crosses",  # right: "crosses" -> "cross"
    "missing": "a large red circle",  # wrong: the blue square is not named
    "colour": "a large blue circle",  # wrong colour
}


def test_attribute_accuracy_hand_made():
    assert attribute_accuracy(CAPTIONS, TRUTHS) == pytest.approx(3 / 5)
    assert attribute_accuracy({"rel": CAPTIONS["rel"]}, TRUTHS) == 1.0
    assert attribute_accuracy({"colour": CAPTIONS["colour"]}, TRUTHS) == 0.0


def test_attribute_accuracy_needs_truth_for_every_prediction():
    with pytest.raises(ValueError, match="no structured truth"):
        attribute_accuracy({"nope": "a red circle"}, TRUTHS)
    with pytest.raises(ValueError, match="no predictions"):
        attribute_accuracy({}, TRUTHS)


def test_evaluate_reports_attribute_accuracy(no_java):
    refs = {k: [c] for k, c in CAPTIONS.items()}
    assert evaluate_captions(CAPTIONS, refs, TRUTHS).attribute_accuracy == pytest.approx(0.6)
    assert evaluate_captions(CAPTIONS, refs).attribute_accuracy is None
