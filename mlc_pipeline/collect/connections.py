"""The connection a download uses, reachable from another thread from before its request is sent, so
the download can be cut (its socket shut) while it waits for the headers as well as while it reads the
body: requests hands over the response only once the headers arrived, and a host that is slow to
answer then held a stopping run until it did. `Deadline` cuts an API call so (flickr.py): its client
reads the whole reply in one call, which a per-read timeout never ends while bytes trickle in.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import threading

import requests
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


def start_thread(target, *args, name: str, daemon: bool = False) -> threading.Thread:
    """Start a thread of the collect (a download worker, a watchdog) in a copy of its starter's context
    (contextvars), as asyncio does for a task: what the caller's context says about the work goes with
    it. A Prefect flow run is such a context: a line a download worker logs is credited to the run that
    started the download, even with two runs in one process (the review of 2026-12-07: a filter guessed
    the run, and with two it guessed wrong)."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target, *args), name=name, daemon=daemon)
    thread.start()
    return thread


_current = threading.local()           # .live: the Live of the request this thread is making
TICK_S = 0.1


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


WATCHED_POOLS = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """Connections handed to the thread's Live, direct or through an HTTP(S) proxy (HTTP_PROXY,
    HTTPS_PROXY). A SOCKS proxy keeps urllib3's own pools, whose connections are not handed over."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager


def close_session(session: requests.Session) -> None:
    """Close a session's connection pools, then the session. requests' `close` only empties urllib3's
    pool managers (urllib3 2 closes no pool there): each pool's connections were then closed by its
    finalizer, whenever the garbage collector got to it, and in `mlc run` that was while training
    allocated: a Ctrl-C that landed in one was lost (audit dayone26 D2, interrupts.py)."""
    for adapter in session.adapters.values():
        for manager in [getattr(adapter, "poolmanager", None), *getattr(adapter, "proxy_manager", {}).values()]:
            if manager is not None:
                for key in manager.pools.keys():
                    manager.pools[key].close()
    session.close()


class Deadline:
    """`with Deadline(seconds) as d:` a watchdog shuts the connection of the requests this thread makes
    in the block once `seconds` have passed (a blocked read of the headers or of the body returns at
    once; one still connecting is cut as soon as it has a socket). After the block, `d.passed` says
    whether it did: the error the cut caused is the deadline's."""

    def __init__(self, seconds: float):
        self.seconds, self.live, self.passed = seconds, Live(), False
        self._done, self._lock = threading.Event(), threading.Lock()

    def __enter__(self) -> "Deadline":
        watch(self.live)
        start_thread(self._watch, name="api-deadline", daemon=True)
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:               # a cut under way finishes first: `passed` is final after this
            self._done.set()
        watch(None)

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        while True:
            with self._lock:
                if self._done.is_set():
                    return
                if self.live.cut():
                    self.passed = True
                    return
            self._done.wait(TICK_S)     # no socket yet: connecting (bounded by the connect timeout)
