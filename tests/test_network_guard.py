"""The suite's network guard (tests/netguard): outside addresses fail, loopback works, and a
subprocess started by a test is guarded too."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def test_outside_address_is_refused_in_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.connect(("198.51.100.7", 443))


def test_loopback_still_connects() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            conn, _ = server.accept()
            conn.close()


def test_subprocesses_are_guarded() -> None:
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.connect(('203.0.113.9', 80))\n"
        "except OSError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "blocks network access" in out.stdout, out.stdout + out.stderr
