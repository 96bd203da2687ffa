"""catalog/schema.py's DDL, and a connection creating only what a catalog lacks, on both backends
(SQLite, and a real PostgreSQL server: tests/pgserver.py)."""

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
