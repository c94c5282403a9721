"""`imgindex serve`: flags -> ServiceConfig and ServeOptions, bad PATH -> one line and exit 2,
a real server process answering over loopback, and the --workers factory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import pipelines.serve as serve_module
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from indexing.embed import TextEmbedder, resolve_embedder
from indexing.service.config import ServiceConfig
from tests.indexing.service.conftest import archive_rows, publish_version


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, tiny_embedder_dir: Path) -> Path:
    """A small collection (one version) over a real tar archive, embedded with the tiny model."""
    base = tmp_path_factory.mktemp("serve-cli")
    write_archive(str(base / "archive"), ArchiveConfig(images=6, shards=1, seed=11, format="tar"))
    rows = archive_rows(base / "archive")
    embedder = TextEmbedder(resolve_embedder(str(tiny_embedder_dir)), device="cpu")
    vectors = embedder.embed([row["caption"] for row in rows])
    publish_version(base / "collection", rows, vectors, embedder)
    return base / "collection"


@pytest.fixture
def started(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[ServiceConfig, serve_module.ServeOptions]]:
    """run_server, recorded instead of serving."""
    calls: list[tuple[ServiceConfig, serve_module.ServeOptions]] = []
    monkeypatch.setattr(serve_module, "run_server", lambda c, o: calls.append((c, o)))
    monkeypatch.delenv("IMGINDEX_TOKEN", raising=False)
    return calls


def test_defaults_bind_loopback_and_take_the_token_from_the_environment(
    imgindex_main, started, collection: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = imgindex_main("serve", str(collection))
    assert result.code == 0, result.err
    config, options = started[0]
    assert (options.host, options.port, options.workers) == ("127.0.0.1", 8080, 1)
    assert options.threads == 1
    assert config.path == str(collection) and config.token is None
    assert "warning" not in result.err and "http://127.0.0.1:8080/" in result.err

    monkeypatch.setenv("IMGINDEX_TOKEN", "from-env")
    assert imgindex_main("serve", str(collection), "--port", "9000").code == 0
    assert started[1][0].token == "from-env" and started[1][1].port == 9000


def test_a_public_address_without_a_token_is_warned_about(
    imgindex_main, started, collection: Path
) -> None:
    result = imgindex_main("serve", str(collection), "--host", "0.0.0.0")
    assert result.code == 0
    assert "warning: serving on 0.0.0.0 without a token" in result.err
    quiet = imgindex_main("serve", str(collection), "--host", "0.0.0.0", "--token", "t0k")
    assert quiet.code == 0 and "warning" not in quiet.err
    assert started[-1][0].token == "t0k"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/path"], "does not exist"),
        (["{tmp}"], "neither a collection root"),
        (["{collection}", "--port", "70000"], "--port"),
        (["{collection}", "--workers", "0"], "--workers"),
        (["{collection}", "--token", "with space"], "--token"),
        (["{collection}", "--reload-interval", "-1"], "reload_interval_s"),
        (["{collection}", "--image-column", ""], "image_column"),
        (["{collection}", "--threads", "-1"], "--threads"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_server(
    imgindex_main, started, collection: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.format(tmp=tmp_path, collection=collection) for a in args]
    result = imgindex_main("serve", *args)
    assert result.code == 2, result.err
    assert result.err.startswith("error: ") and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert started == []


def test_workers_run_the_factory_which_rebuilds_the_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, collection: Path
) -> None:
    import uvicorn

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.delenv(serve_module.CONFIG_ENV, raising=False)
    config = ServiceConfig(path=str(collection), token="abc")
    serve_module.run_server(config, serve_module.ServeOptions(workers=3, image_column="img"))
    (target,), kwargs = calls[0]
    assert target == serve_module.FACTORY and kwargs["factory"] and kwargs["workers"] == 3
    assert json.loads(os.environ[serve_module.CONFIG_ENV])["image_column"] == "img"
    threads: list[int] = []
    monkeypatch.setattr(serve_module, "set_torch_threads", threads.append)
    app = serve_module.app_from_env()
    assert threads == [1]
    assert app.state.service.config == config


def test_the_factory_without_its_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(serve_module.CONFIG_ENV, raising=False)
    with pytest.raises(serve_module.UsageError, match=serve_module.CONFIG_ENV):
        serve_module.app_from_env()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_real_server_answers_and_stops_on_sigint(collection: Path, tmp_path: Path) -> None:
    port = _free_port()
    imgindex = Path(sys.executable).parent / "imgindex"
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "IMGINDEX_TOKEN": "t0ken"}
    proc = subprocess.Popen(
        [str(imgindex), "serve", str(collection), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/search?q=circle").status_code == 401
        response = httpx.get(
            f"{base}/api/search", params={"q": "circle", "k": 3},
            headers={"Authorization": "Bearer t0ken"},
        )  # fmt: skip
        assert response.status_code == 200 and response.json()["version"] == "v000001"
        assert len(response.json()["hits"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode in (0, -signal.SIGINT, 130)
