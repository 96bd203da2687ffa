"""`mlc catalog ...`: commands about the catalog itself (registered by mlc_pipeline/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_catalog_parser(sub, add_writer) -> None:
    p = sub.add_parser("catalog", help="the catalog itself: copy a SQLite catalog into PostgreSQL")
    actions = p.add_subparsers(dest="action", required=True)
    m = actions.add_parser("migrate", help="copy the SQLite catalog into a PostgreSQL one (idempotent; "
                                           "row counts verified), then mark the SQLite one moved (catalog.moved): "
                                           "a config still naming it is refused")
    add_writer(m)
    m.add_argument("--to", help="postgresql://user@host:5432/db (default: the config's catalog.url); the "
                                "password comes from PGPASSWORD or ~/.pgpass")
    m.add_argument("--from", dest="source", help="the SQLite catalog (default: <data_dir>/catalog.sqlite)")
    m.set_defaults(func=cmd_catalog_migrate)


def cmd_catalog_migrate(args: argparse.Namespace) -> int:
    from mlc_pipeline.config import ConfigError, load_config, parse_overrides
    from mlc_pipeline.locking import data_root_lock, files_lock
    from mlc_pipeline.catalog_address import PostgresCatalog, check_url
    from mlc_pipeline.catalog.copy import TargetNotEmpty, copy_catalog
    cfg = load_config(args.config, parse_overrides(args.set))
    url = args.to or cfg.catalog.url
    if not url:
        raise ConfigError("catalog migrate: name the PostgreSQL catalog with --to postgresql://user@host/db, "
                          "or set catalog.url in the config")
    try:
        url = check_url(url)
    except ValueError as exc:
        raise ConfigError(f"--to: {exc}") from None
    source = Path(args.source) if args.source else cfg.layout.catalog
    from_store = cfg.data_url is not None and not args.source     # the store's catalog, not the cache's
    if not from_store:      # before the locks: a mistyped data_dir gets no lock files either
        require_source(source, "--from" if args.source else f"data_dir {cfg.data_dir}")
    # The files lock too: a takedown (which takes only that one) between the copy's tables would
    # leave the copy's row not removed while its file is gone.
    with data_root_lock(cfg.data_dir, "mlc catalog migrate", wait=not args.no_wait), \
            files_lock(cfg.data_dir, "mlc catalog migrate", wait=not args.no_wait):
        if from_store:
            fetch_catalog(cfg)
            require_source(source, f"data_dir {cfg.data_url}, cached in {cfg.data_dir}")
        # Under the locks, no command of the old config starts meanwhile; and the marker is written while the
        # copy still holds the SQLite catalog's write lock, which a running review app's actions wait for.
        mark = None if from_store else lambda: mark_moved_here(source, url)
        try:
            result = copy_catalog(source, PostgresCatalog(url, cfg.data_dir), mark_moved=mark)
        except TargetNotEmpty as exc:       # refused before writing: the wrong --to, as a usage error
            raise ConfigError(str(exc)) from None
    if from_store:
        mark_moved(cfg, url)
    print(json.dumps(result.__dict__, indent=2))
    if not cfg.catalog.url:
        print(f"set catalog.url: {result.target} in {args.config} to use it")
    return 0


def moved_record(url: str) -> str:
    """What a `catalog.moved` marker says: where the catalog went (no password), when, from which host."""
    import socket
    import time
    from mlc_pipeline.catalog_address import display_url
    return json.dumps({"to": display_url(url), "on": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "host": socket.gethostname()})


def mark_moved(cfg, url: str) -> None:
    """Tell every machine still configured with the store's SQLite catalog (`objectstore.MOVED`): one
    publishing it now would delete from the store the files only the PostgreSQL catalog names."""
    from mlc_pipeline.objectstore import MOVED, store_errors, store_of
    store = store_of(cfg)
    with store_errors(store):
        store.write_text(MOVED, moved_record(url))


def mark_moved_here(source: Path, url: str) -> None:
    """A local or shared-filesystem catalog: the marker beside the SQLite file (`catalog.moved`), written
    whole (a rerun rewrites it), which every open of that file for a command refuses (sqlite.refuse_moved):
    a takedown recorded there, on a machine left on the old config, was undone by the next collect."""
    from mlc_pipeline.catalog.sqlite import moved_marker
    from mlc_pipeline.fsutil import write_text_atomic
    write_text_atomic(moved_marker(source), moved_record(url))


def require_source(source: Path, where: str) -> None:
    from mlc_pipeline.config import ConfigError
    if not source.is_file():
        raise ConfigError(f"{source}: no SQLite catalog to copy ({where}; run `mlc collect` with the SQLite "
                          f"catalog first, or check data_dir / --from)")


def fetch_catalog(cfg) -> None:
    """An object-store data root: the store's current SQLite catalog into the cache, as every command
    fetches what it reads (sync.py), even where the config already names the PostgreSQL catalog
    (`catalog.url`), for which sync fetches no SQLite. Nothing is published back: the copy does not
    change the SQLite catalog."""
    from mlc_pipeline.objectstore import store_errors, store_of
    from mlc_pipeline.sync import pull_catalog
    store = store_of(cfg)
    sqlite_cfg = cfg.model_copy(update={"catalog": cfg.catalog.model_copy(update={"url": None})})
    with store_errors(store):
        store.check()
        pull_catalog(store, sqlite_cfg)
