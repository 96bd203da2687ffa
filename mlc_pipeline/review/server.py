"""`mlc review`: start the app with uvicorn, on loopback unless told otherwise (then with a token)."""

from __future__ import annotations

import logging

from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.review.security import TOKEN_ENV, is_loopback, resolve_token

log = logging.getLogger(__name__)


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8777) -> int:
    """The app until Ctrl-C. On an object-store data root it works on the cache: fetched first, its
    changes published when it stops (sync.served)."""
    from mlc_pipeline.sync import served
    with served(cfg, "review"):
        return run_app(cfg, host, port)


def run_app(cfg: Config, host: str, port: int) -> int:
    import uvicorn
    from mlc_pipeline.review.app import create_app
    if not cfg.catalog.url and not cfg.catalog_path.exists():     # a PostgreSQL catalog is a database, not a file
        raise ConfigError(f"no catalog at {cfg.catalog_path}: run `mlc collect` and `mlc curate` first")
    token = None
    if not is_loopback(host):
        try:
            token, where = resolve_token(cfg.data_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # The token itself is never printed: only where to read it.
        print(f"mlc review: listening on {host}:{port} beyond loopback; log in with the token from {where} "
              f"(or set {TOKEN_ENV})", flush=True)
    app = create_app(cfg, token=token)
    print(f"mlc review: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/  (Ctrl-C to stop)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
    return 0
