"""The catalog: every image candidate, its history, the runs and takedowns. Every SQL statement of
the project lives in this package.

  schema.py    the tables (written once) and the plain data types
  store.py     `Catalog`: the statements both backends share
  sqlite.py    the embedded SQLite file under data_dir (the default)
  postgres.py  a PostgreSQL database (`catalog: {url: postgresql://...}`), several writers at once
  migrate.py   the schema versions, and the migration of an older catalog on a writable open
  copy.py      `mlc catalog migrate`: a SQLite catalog copied into PostgreSQL
  pairs.py     near-duplicate pair scores kept between curates (a cache)
  corners.py   the corner hashes of published test files kept between curates (a cache)

Where a catalog lives (a SQLite file, or a PostgreSQL URL checked and shown without a password) is
mlc_pipeline/catalog_address.py, below both this package and the config that names it.
"""

from mlc_pipeline.catalog_address import PostgresCatalog, catalog_exists, check_url, display_url
from .schema import (FILE_STATUSES, PHOTO_FIELDS, PURPOSE_RANK, SCHEMA, SCHEMA_VERSION, SQL_INT_MAX, CatalogBusy, CatalogError,
                     CatalogFull, CatalogLost, CatalogTooNew, Found, merge_labels, run_end_status)
from .store import Catalog
from .migrate import untold as untold_migrations

__all__ = ["Catalog", "CatalogBusy", "CatalogError", "CatalogFull", "CatalogLost", "CatalogTooNew", "FILE_STATUSES", "Found", "PHOTO_FIELDS", "PURPOSE_RANK", "PostgresCatalog",
           "SCHEMA", "SCHEMA_VERSION", "SQL_INT_MAX", "catalog_exists", "check_url", "display_url", "merge_labels", "run_end_status",
           "untold_migrations"]
