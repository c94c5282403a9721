"""The caption job's steps, without Beam: ShardEntry -> ImageInput -> CaptionResult -> table rows.

Each step turns bad input into data (a FailureRow or a CaptionFailure, with the stage and the
reason), so one bad image costs one row. The Beam DoFns and the ModelHandler in
pipelines/caption/ are thin adapters over these functions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from captioning.api import Captioner, CaptionResult
from captioning.archives.records import ShardEntry, source_fields
from captioning.images.decode import DecodeConfig, DecodeError, decode_image
from captioning.images.device_decode import EncodedImage, plain_jpeg_header
from captioning.records import CaptionRow, FailureRow, ImageInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaptionFailure:
    """What the model step returns for an image it could not caption."""

    error_type: str
    message: str
    stage: str = "caption"  # "decode" for an image the model's device could not decode


def one_line(e: BaseException) -> str:
    """An exception as one short human line, for a failure row."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:500]


# --------------------------------------------------------------------------- read and decode


def read_failure(entry: ShardEntry, run_id: str) -> FailureRow:
    """An entry the reader could not read (`entry.data is None`) -> its FailureRow (stage
    "read", or "source" for an image the archive's maker never got), with what the source said
    about the image (an img2dataset row it could not download keeps its url, alt text and
    metadata)."""
    reason = entry.error or "read_error"
    fields = source_fields(entry)
    return FailureRow(
        entry.key,
        entry.source,
        entry.member,
        entry.stage,
        reason,
        entry.message or reason,
        run_id,
        fields.url,
        fields.alt_text,
        fields.metadata,
    )


def decode_entry(
    entry: ShardEntry,
    config: DecodeConfig,
    run_id: str,
    preprocess: Callable[[Image.Image], Any],
    pass_jpeg: bool = False,
) -> ImageInput | FailureRow:
    """One entry's bytes -> an ImageInput (the model's preprocessed input and the image's
    provenance), or a decode FailureRow.

    With `pass_jpeg`, a plain JPEG (no EXIF turn) is not decoded here: only its header is read
    (size, format, the size guard) and its bytes go on as an EncodedImage, for the captioner to
    decode on its device; a file whose pixels turn out broken fails there, with stage "decode".
    """
    assert entry.data is not None
    digest = hashlib.sha256(entry.data).hexdigest()
    fields = source_fields(entry)
    try:
        header = plain_jpeg_header(entry.data, config) if pass_jpeg else None
        if header is not None:
            return ImageInput(
                entry.key,
                entry.source,
                entry.member,
                digest,
                header.width,
                header.height,
                header.format,
                EncodedImage(entry.data),
                fields.url,
                fields.alt_text,
                fields.metadata,
            )
        decoded = decode_image(entry.data, config)
    except DecodeError as e:
        return FailureRow(
            entry.key,
            entry.source,
            entry.member,
            "decode",
            e.reason,
            e.message,
            run_id,
            fields.url,
            fields.alt_text,
            fields.metadata,
        )
    return ImageInput(
        entry.key,
        entry.source,
        entry.member,
        digest,
        decoded.width,
        decoded.height,
        decoded.format,
        preprocess(decoded.image),
        fields.url,
        fields.alt_text,
        fields.metadata,
    )


# --------------------------------------------------------------------------- caption


def caption_batch(model: Captioner, inputs: Sequence[Any]) -> list[CaptionResult | CaptionFailure]:
    """A batch of model inputs -> one CaptionResult or CaptionFailure per input, in order.

    Inputs are the preprocessor's CPU tensors, except plain JPEGs for a captioner that decodes on
    its device: those arrive as EncodedImage and are decoded there first, in one batch. A batch
    that fails as a whole (one bad image, a device error) is retried one input at a time, so one
    bad image costs one failure, not the batch.
    """
    results: list[CaptionResult | CaptionFailure | None] = [None] * len(inputs)
    ready = list(inputs)
    encoded = [i for i, v in enumerate(ready) if isinstance(v, EncodedImage)]
    prepared = decode_on_device(model, [ready[i].data for i in encoded])
    for i, p in zip(encoded, prepared, strict=True):
        if isinstance(p, CaptionFailure):
            results[i] = p
        else:
            ready[i] = p
    todo = [i for i, r in enumerate(results) if r is None]
    for i, r in zip(todo, _caption_with_retry(model, [ready[i] for i in todo]), strict=True):
        results[i] = r
    done = [r for r in results if r is not None]
    assert len(done) == len(inputs)
    return done


def decode_on_device(model: Captioner, datas: list[bytes]) -> list[Any]:
    """Encoded images' bytes -> the model's inputs, or a decode CaptionFailure per file; a batch
    that fails as a whole (a device error) is retried one file at a time."""
    if not datas:
        return []
    try:
        prepared = model.preprocess_encoded(datas)  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - one failure row per file, never a lost batch
        if len(datas) == 1:
            return [CaptionFailure(type(e).__name__, one_line(e), stage="decode")]
        logger.warning("decoding %d files on the device failed (%s); one by one", len(datas), e)
        return [decode_on_device(model, [d])[0] for d in datas]
    return [
        CaptionFailure(p.reason, p.message, stage="decode") if isinstance(p, DecodeError) else p
        for p in prepared
    ]


def _caption_with_retry(
    model: Captioner, inputs: list[Any]
) -> list[CaptionResult | CaptionFailure]:
    if not inputs:
        return []
    try:
        return list(model.caption(inputs))
    except Exception as e:  # noqa: BLE001 - becomes a failure per image, see below
        if len(inputs) == 1:
            return [CaptionFailure(type(e).__name__, one_line(e))]
        logger.warning("a batch of %d failed (%s); retrying one by one", len(inputs), e)
        return [_caption_one(model, x) for x in inputs]


def _caption_one(model: Captioner, inputs: Any) -> CaptionResult | CaptionFailure:
    try:
        return model.caption([inputs])[0]
    except Exception as e:  # noqa: BLE001 - the image's failure row records it
        return CaptionFailure(type(e).__name__, one_line(e))


@dataclass(slots=True)
class BrokenModelWatch:
    """Tells a broken model from bad images by the first batches a model runs.

    When each of the first `batches` batches fails at the caption stage on every image, all with
    the same error type and message (an out-of-memory device, a model that cannot run), the job
    would only turn every image into the same failure row: `see` returns that failure so the
    caller can stop. One success or any other error ends the watch for good.
    """

    batches: int = 3
    _failed: int = field(default=0, init=False, repr=False)
    _failure: CaptionFailure | None = field(default=None, init=False, repr=False)
    _done: bool = field(default=False, init=False, repr=False)

    def see(self, results: Sequence[CaptionResult | CaptionFailure]) -> CaptionFailure | None:
        """One batch's results -> the repeated failure once `batches` batches all had it."""
        if self._done or not results:
            return None
        first = results[0]
        same = isinstance(first, CaptionFailure) and first.stage == "caption"
        same = same and all(r == first for r in results)
        if not same or (self._failure is not None and first != self._failure):
            self._done = True
            return None
        assert isinstance(first, CaptionFailure)
        self._failure, self._failed = first, self._failed + 1
        if self._failed >= self.batches:
            self._done = True
            return first
        return None


# --------------------------------------------------------------------------- rows


def result_row(
    x: ImageInput,
    out: CaptionResult | CaptionFailure,
    run_id: str,
    model: str,
    model_version: str,
    captioned_at: str | None = None,
) -> CaptionRow | FailureRow:
    """The model's answer for one image -> its CaptionRow, or a FailureRow with the stage.

    Args:
        captioned_at: ISO-8601 UTC time; None = now.
    """
    if isinstance(out, CaptionFailure):
        return FailureRow(
            x.key,
            x.source,
            x.member,
            out.stage,
            out.error_type,
            out.message,
            run_id,
            x.url,
            x.alt_text,
            x.metadata,
        )
    return CaptionRow(
        key=x.key,
        source=x.source,
        member=x.member,
        sha256=x.sha256,
        width=x.width,
        height=x.height,
        format=x.format,
        caption=out.caption,
        candidates=list(out.candidates),
        model=model,
        model_version=model_version,
        run_id=run_id,
        captioned_at=captioned_at or datetime.now(UTC).isoformat(timespec="seconds"),
        url=x.url,
        alt_text=x.alt_text,
        metadata=x.metadata,
    )
