"""`mlc review`: start the app with uvicorn, on loopback unless told otherwise (then with a token)."""

from __future__ import annotations

import errno
import logging
import socket

from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.review.security import TOKEN_ENV, is_loopback, resolve_token, url_host

log = logging.getLogger(__name__)


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8777) -> int:
    """The app until Ctrl-C. On an object-store data root it works on the cache: fetched first, its
    changes published when it stops (sync.served). The port is taken first: a busy one fetches nothing."""
    from mlc_pipeline.sync import served
    with bound_socket(host, port) as sock, served(cfg, "review"):
        return run_app(cfg, host, port, sock)


def bound_socket(host: str, port: int) -> socket.socket:
    """The app's socket, bound here rather than by uvicorn: a port in use is then one line and exit
    code 2, as for `mlc serve-flickr` and `mlc collect`, not uvicorn's log lines and its exit code 3."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is 0-65535")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)      # as uvicorn: a restart reuses the port at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (another `mlc review` or another "
                              f"server may hold it); pick another with --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_app(cfg: Config, host: str, port: int, sock: socket.socket) -> int:
    import uvicorn
    from mlc_pipeline.review.app import create_app
    port = sock.getsockname()[1]           # --port 0: the free port the system chose
    from mlc_pipeline.catalog import catalog_exists
    if not catalog_exists(cfg.catalog_path):
        raise ConfigError(f"no catalog at {cfg.catalog_path}: run `mlc collect` and `mlc curate` first")
    token = None
    if not is_loopback(host):
        try:
            token, where = resolve_token(cfg.data_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # The token itself is never printed: only where to read it.
        print(f"mlc review: listening on {url_host(host)}:{port} beyond loopback; log in with the token from {where} "
              f"(or set {TOKEN_ENV})", flush=True)
    app = create_app(cfg, token=token, host=host)
    shown = url_host("127.0.0.1" if host in ("0.0.0.0", "::") else host)      # [::1]: a URL's IPv6 form
    print(f"mlc review: http://{shown}:{port}/  (Ctrl-C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=True))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM) is how the app is stopped, not a failure: uvicorn.run ends the same way,
        # after the server has shut down cleanly.
        log.debug("mlc review stopped")
    return 0
