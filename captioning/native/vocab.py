"""Captions <-> token ids; the vocabulary comes from training captions and ships with the model."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase words; punctuation is dropped (the COCO tokenizer does the same)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Vocabulary:
    tokens: tuple[str, ...]  # id -> word; the four specials come first

    def __post_init__(self) -> None:
        if self.tokens[:4] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {self.tokens[:4]}")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted(w for w, n in counts.items() if n >= min_count)
        return cls((*SPECIALS, *words))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.tokens)}

    def encode(self, caption: str, max_length: int) -> list[int]:
        """<start> w1 .. wn <end>, words past max_length cut."""
        index = self.index
        ids = [index.get(w, UNK_ID) for w in tokenize(caption)][:max_length]
        return [START_ID, *ids, END_ID]

    def decode(self, ids: Sequence[int]) -> str:
        words = []
        for i in ids:
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            words.append(self.tokens[i])
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"tokens": list(self.tokens)}, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            return cls(tuple(json.loads(Path(path).read_text())["tokens"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not an imgindex vocabulary: {e}") from e
