"""Ports and hosts: one rule for picking a free port and for telling loopback from the rest."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now, probed on IPv4 loopback for any loopback ``host`` (so a
    port picked for ``::1`` or ``localhost`` is free where listeners bind by default), on
    every interface otherwise. Another process may take it before it is used: callers that
    bind it should be ready to pick again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1" if is_loopback(host) else "", 0))
        return sock.getsockname()[1]
