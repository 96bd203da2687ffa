"""catalog/schema.py's DDL, and a connection creating only what a catalog lacks, on both backends
(SQLite, and a real PostgreSQL server: tests/pgserver.py)."""

import json
import os
import uuid
from pathlib import Path

import pytest

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.catalog import overrides
from mlc_pipeline.catalog.schema import SCHEMA, creates, postgres_schema
from mlc_pipeline.config import parse_config


def test_creates_names_every_table_and_index_and_refuses_other_statements():
    names = [name for name, _ in creates(SCHEMA)]
    assert names == [name for name, _ in creates(postgres_schema())]
    assert {"candidates", "events", "events_candidate", "runs", "meta"} <= set(names)
    assert [name for name, _ in creates(overrides.SCHEMA)][:2] == ["review_actions", "review_actions_candidate"]
    with pytest.raises(ValueError, match="not a CREATE"):
        creates("CREATE TABLE IF NOT EXISTS a (x INTEGER); DROP TABLE b")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_open_creates_the_tables_and_indexes_a_catalog_lacks(backend, request, tmp_path: Path):
    """The PostgreSQL open ran the whole schema when one relation was missing, read off by one
    regex, and the review tables by another: one reader of the DDL now, statement by statement."""
    settings = {}
    if backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        settings = {"catalog": {"url": server.create_database("t_" + uuid.uuid4().hex[:12])}}
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        with c.transaction():
            overrides.create_tables(c)
        c.db.execute("DROP INDEX events_candidate")
        c.db.execute("DROP INDEX review_actions_candidate")
        c.db.execute("DROP TABLE review_version_rows")
        assert not c.has_table("events_candidate") and not c.has_table("review_version_rows")
    with Catalog(cfg.catalog_path) as c:
        assert c.has_table("events_candidate")
        with c.transaction():
            overrides.create_tables(c)
        assert all(c.has_table(n) for n in ("review_actions_candidate", "review_version_rows",
                                            "review_version_rows_candidate"))


# --- schema versions (catalog/migrate.py) -------------------------------------------------------

def catalog_of(backend: str, request, tmp_path: Path):
    settings = {}
    if backend == "postgresql":
        settings = {"catalog": {"url": request.getfixturevalue("pg_url")}}
    return parse_config({"data_dir": str(tmp_path / "data"), **settings,
                         "classes": {"ants": {"queries": ["ants"], "count": 1}},
                         "other": {"queries": ["scenery"], "count": 1}})


def meta_of(c: Catalog) -> dict:
    return {r["key"]: r["value"] for r in c.db.execute("SELECT key, value FROM meta")}


SAID_3 = ("catalog migrated from schema 2 to 3 (the columns and tables added since mlc-pipeline 0.2.0 are part of "
          "the schema; mlc-pipeline older than 0.3.0 refuses to write to this catalog from now on (upgrade every "
          "machine that uses it))")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_catalog_of_0_2_0_is_migrated_to_schema_3_once_and_the_migration_recorded(backend, request, tmp_path):
    """Columns and tables were added after 0.2.0 with schema_version left at 2, so code could not tell
    a catalog 0.3.0 writes from one 0.2.0 wrote, and 0.2.0 opened it without a word (the upgrade29
    audit, finding 7). Schema 3 now, the migration recorded beside migrated_to_2 and said once."""
    from mlc_pipeline.catalog import SCHEMA_VERSION, untold_migrations
    cfg = catalog_of(backend, request, tmp_path)
    with Catalog(cfg.catalog_path) as c:
        assert meta_of(c) == {"schema_version": "3"} and SCHEMA_VERSION == 3    # a new catalog: no migration
        assert untold_migrations(c) == []
        c.db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")   # as 0.2.0 left it
    with Catalog(cfg.catalog_path) as c:
        meta = meta_of(c)
        assert meta["schema_version"] == "3" and "migrated_to_2" not in meta
        record = json.loads(meta["migrated_to_3"])
        assert record["from"] == 2 and record["at"] > 0 and record["told"] is False
        said = untold_migrations(c)
        assert said == [SAID_3], said
        assert untold_migrations(c) == []           # handed to one summary only
        assert json.loads(meta_of(c)["migrated_to_3"]) == {**record, "told": True}
    with Catalog(cfg.catalog_path) as c:            # once: the next open changes nothing
        assert meta_of(c) == {**meta, "migrated_to_3": json.dumps({**record, "told": True})}
        assert untold_migrations(c) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_next_curate_says_a_migration_another_command_made_once(backend, request, tmp_path):
    """The review30 audit, finding 4: the line a summary says was kept per process, so after `mlc
    collect` (or review, remove, build, train) had migrated the catalog, `mlc curate`, a new process,
    said `"upgrade": []`; and in the review app, a long-lived process, the list only grew. The catalog
    records it untold now: whichever summary comes next, in any process or on any machine, says it, once."""
    import subprocess
    import yaml
    from helpers import ENV, MLC
    from mlc_pipeline.catalog import migrate
    cfg = catalog_of(backend, request, tmp_path)
    with Catalog(cfg.catalog_path) as c:
        c.db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")   # as 0.2.0 left it
    Catalog(cfg.catalog_path).close()          # another command's writable open (mlc collect's) migrates it
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                      **({"catalog": {"url": cfg.catalog_path.url}} if backend == "postgresql" else {}),
                                      "classes": {"ants": {"queries": ["ants"], "count": 1}},
                                      "other": {"queries": ["scenery"], "count": 1}}))
    upgrades = []
    for _ in range(2):
        res = subprocess.run([*MLC, "curate", "-c", str(config), "--no-progress"], capture_output=True, text=True,
                             env={**ENV, "PGPASSWORD": os.environ.get("PGPASSWORD", "")}, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        upgrades.append(json.loads(res.stdout)["upgrade"])
    assert upgrades == [[SAID_3], []]
    assert not hasattr(migrate, "UNTOLD")      # no list in this process (the review app's): nothing to grow


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_catalog_of_a_newer_schema_is_refused_before_anything_is_written_read_only_too(backend, request, tmp_path):
    """A newer mlc-pipeline's catalog: this code must not read it as its own, nor alter it. 0.2.0 raised
    a RuntimeError (a traceback) after adding its columns, and read-only commands read it without a word."""
    from mlc_pipeline.catalog import SCHEMA_VERSION, CatalogError
    cfg = catalog_of(backend, request, tmp_path)
    with Catalog(cfg.catalog_path) as c:
        c.db.execute("DROP TABLE kept_corners")          # what a newer schema may have dropped
        c.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
        where = c.where
    says = (f"catalog {where} has schema version {SCHEMA_VERSION + 1}, written by a newer mlc-pipeline; this one "
            f"reads schema versions up to {SCHEMA_VERSION}: upgrade mlc-pipeline here (to the version that wrote "
            f"it, or later) before using this catalog")
    for readonly in (False, True):
        with pytest.raises(CatalogError) as caught:
            Catalog(cfg.catalog_path, readonly=readonly)
        assert str(caught.value) == says
    if backend == "postgresql":
        import psycopg
        with psycopg.connect(cfg.catalog_path.url) as db:
            assert db.execute("SELECT to_regclass('kept_corners')").fetchone() == (None,)      # not re-created
    else:
        import sqlite3
        db = sqlite3.connect(cfg.catalog_path)
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='kept_corners'").fetchone()   # not re-created
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION + 1),)
        db.close()
        import subprocess
        from helpers import ENV, MLC
        config = tmp_path / "c.yaml"
        config.write_text(f"data_dir: {tmp_path / 'data'}\nclasses: {{ants: {{queries: [ants], count: 1}}}}\n"
                          f"other: {{queries: [scenery], count: 1}}\n")
        for command in (["inspect"], ["curate"]):
            res = subprocess.run([*MLC, *command, "-c", str(config)], capture_output=True, text=True, env=ENV)
            assert (res.returncode, res.stderr) == (1, f"mlc: {says}\n"), (command, res.stderr)
