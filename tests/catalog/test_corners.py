"""catalog/corners.py: the corner hashes of published test files, kept by digest between curates, on
both backends (conftest's `catalog_settings`: SQLite, and a real PostgreSQL server)."""

from pathlib import Path

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import parse_config


def test_corner_hashes_are_kept_by_digest_overwritten_and_dropped_once_unpublished(catalog_settings, tmp_path: Path):
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **catalog_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    a, b, c_ = "a" * 64, "b" * 64, "c" * 64
    with Catalog(cfg.catalog_path) as c:
        assert c.kept_corner_hashes("m1") == {}
        assert c.keep_corner_hashes("m1", {a: "1,2", b: "3,4"}, published=[a, b]) == 0
        assert c.keep_corner_hashes("m0", {a: "9"}, published=[a]) == 2          # m1's: another method
        assert c.kept_corner_hashes("m0") == {a: "9"} and c.kept_corner_hashes("m1") == {}
        assert c.keep_corner_hashes("m1", {a: "1,2", b: "3,4"}, published=[a, b]) == 1   # m0's
        with c.transaction():               # in the caller's transaction: overwritten, and b no longer published
            assert c.keep_corner_hashes("m1", {a: "5,6", c_: "7,8"}, published=[a]) == 1     # b
    with Catalog(cfg.catalog_path) as c:    # committed
        assert c.kept_corner_hashes("m1") == {a: "5,6", c_: "7,8"} and c.kept_corner_hashes("m0") == {}
