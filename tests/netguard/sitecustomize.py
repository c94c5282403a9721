"""Loaded by every Python process the test suite starts (tests/conftest.py puts this folder on
PYTHONPATH): any connection to an address outside the loopback range fails at once, so no test
and no subprocess of one (the CLI, Beam workers) can reach a network. Loopback stays open: Beam's
multi-process runner and local servers talk over it."""

from __future__ import annotations

import ipaddress
import socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


class NetworkBlocked(OSError):
    """A test tried to reach an address outside the loopback range."""


def _allowed(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:  # a host name: resolving it would itself use the network
        return False


def _guarded(original):
    def connect(self: socket.socket, address: object, *args: object) -> object:
        if not _allowed(address):
            raise NetworkBlocked(f"the test suite blocks network access (to {address!r})")
        return original(self, address, *args)

    return connect


def install() -> None:
    socket.socket.connect = _guarded(_connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded(_connect_ex)  # type: ignore[method-assign]


install()
