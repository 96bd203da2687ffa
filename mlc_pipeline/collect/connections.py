"""The connection a download uses, reachable from another thread from before its request is sent, so
the download can be cut (its socket shut) while it waits for the headers as well as while it reads the
body: requests hands over the response only once the headers arrived, and a host that is slow to
answer then held a stopping run until it did.
"""

from __future__ import annotations

import logging
import socket
import threading

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool

log = logging.getLogger(__name__)


class Live:
    """The connection one download uses, from before its request is sent: what a cut shuts."""

    def __init__(self) -> None:
        self.conn = None

    def cut(self) -> bool:
        """Shut the socket down: a blocked read (of the headers or the body) returns at once. False
        while there is no socket yet (still connecting): the caller tries again a tick later."""
        sock = getattr(self.conn, "sock", None)
        if sock is None:
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:         # closed between our look and the shutdown: nothing left to cut
            log.debug("cutting a download: %s", exc)
        return True


_current = threading.local()           # .live: the Live of the request this thread is making


def watch(live: Live | None) -> None:
    """The Live that this thread's next requests hand their connections to (None: no more)."""
    _current.live = live


class WatchedHTTPPool(HTTPConnectionPool):
    """Hands the connection a request takes to the thread's Live, so it can be cut while the request
    still waits for its headers (requests gives the response only once they arrived)."""

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        live = getattr(_current, "live", None)
        if live is not None:
            live.conn = conn
        return conn


class WatchedHTTPSPool(WatchedHTTPPool, HTTPSConnectionPool):
    pass


class WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}
