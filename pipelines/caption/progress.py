"""Live progress of a local run: workers write small count files, the launcher sums and shows them.

Beam's metrics reach the launcher only when a DirectRunner job ends, and its workers may be other
processes; a folder of per-worker JSON files works for both, with no server.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path


class ProgressWriter:
    """Per-worker counts, flushed to `<dir>/<pid>-<id>.json` at most every `interval` seconds."""

    def __init__(self, directory: str, interval: float = 0.5):
        self._path = Path(directory) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._counts = {"captioned": 0, "failed": 0}
        self._interval = interval
        self._last = 0.0

    def add(self, captioned: int = 0, failed: int = 0) -> None:
        self._counts["captioned"] += captioned
        self._counts["failed"] += failed
        if time.monotonic() - self._last >= self._interval:
            self.flush()

    def flush(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._counts))
        os.replace(tmp, self._path)
        self._last = time.monotonic()


def read_progress(directory: str | Path) -> dict[str, int]:
    """Sum of every worker's counts so far."""
    total = {"captioned": 0, "failed": 0}
    for f in Path(directory).glob("*.json"):
        try:
            counts = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being replaced right now; the next poll reads it
        for k in total:
            total[k] += int(counts.get(k, 0))
    return total
