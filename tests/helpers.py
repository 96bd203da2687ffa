"""Small helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

import socket


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
