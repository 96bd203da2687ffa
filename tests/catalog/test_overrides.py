"""catalog/overrides.py, the review's override store as the build, mining, the report and takedowns
read it, on both backends (SQLite, and a real PostgreSQL server: tests/pgserver.py). It lived in
catalog/review.py, the review app's queries, whose `record_removal` (a line in the review log) shared
its name with `Catalog.record_removal` (the takedown itself)."""

from pathlib import Path

from mlc_pipeline.catalog import Catalog, Found, overrides, review
from mlc_pipeline.catalog.labels import FROM_POOL
from mlc_pipeline.config import parse_config

CLASSES = ["ants", "bees"]


def found(photo_id: str, purpose: str = "train") -> Found:
    return Found("flickr", photo_id, purpose, "ants", "ants", "http://img.test/x.jpg", "url_m", 500, 375, 4, "CC BY",
                 "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")


def accepted_catalog(tmp_path: Path, settings: dict) -> tuple[Path, dict[str, int]]:
    """A catalog of four accepted training images ("1" to "4") and one accepted pool image ("5")."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **settings,
                        "classes": {c: {"queries": [c], "count": 1} for c in CLASSES},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("curate")
        c.upsert_found([found(str(i)) for i in range(1, 5)] + [found("5", "pool")], run)
        ids = {str(i): c.get_by_photo("flickr", str(i))["id"] for i in range(1, 6)}
        for cid in ids.values():
            c.set_status(cid, "accepted", None, run, "curate", curated_label="ants")
    return cfg.catalog_path, ids


def test_build_and_mining_read_the_review_decisions_in_force(catalog_settings, tmp_path: Path):
    path, ids = accepted_catalog(tmp_path, catalog_settings)
    with Catalog(path) as c:
        # A catalog the review app never opened: the curated rows as they are.
        assert not overrides.has_review_tables(c)
        assert overrides.overrides(c) == {} and overrides.review_changed_photos(c) == []
        assert [r["id"] for r in overrides.build_candidates(c)] == [ids[p] for p in "1234"]
        overrides.ensure_schema(c)
        overrides.act(c, ids["1"], "reject", "blurry", "t", CLASSES)
        overrides.act(c, ids["2"], "relabel", "both", "t", CLASSES, labels=["bees", "ants"])
        overrides.act(c, ids["5"], "relabel", "a bee", "t", CLASSES, labels=["bees"])
        relabel = overrides.act(c, ids["3"], "relabel", "oops", "t", CLASSES, labels=["bees"])
        overrides.undo(c, ids["3"], relabel.action_id, "undone", "t")
        assert overrides.overrides(c) == {ids["1"]: {"labels": None, "include": "rejected"},
                                          ids["2"]: {"labels": "ants bees", "include": None},
                                          ids["5"]: {"labels": "bees", "include": FROM_POOL}}
        assert overrides.review_changed_photos(c) == ["flickr:1", "flickr:2", "flickr:5"]
        built = {r["id"]: (r["curated_label"], r["from_pool"]) for r in overrides.build_candidates(c)}
        assert built == {ids["2"]: ("ants bees", False), ids["3"]: ("ants", False), ids["4"]: ("ants", False),
                         ids["5"]: ("bees", True)}
        assert [a["action"] for a in overrides.actions(c, ids["3"])] == ["relabel", "undo"]
        assert overrides.latest_undoable(c, ids["3"]) is None


def test_a_takedown_hold_and_the_review_apps_removal_log(catalog_settings, tmp_path: Path):
    """`hold` (takedowns) is a reject an undo takes back, asked once; `log_removal` writes the review
    app's takedown into the review log, final, without touching the override; the review app's query
    module no longer holds either (nor a second `record_removal`)."""
    path, ids = accepted_catalog(tmp_path, catalog_settings)
    with Catalog(path) as c:
        with c.transaction():
            held = overrides.hold(c, ids["1"], "looks like a photo taken down", "remove")
        assert held is not None and overrides.override_of(c, ids["1"]) == {"labels": None, "include": "rejected"}
        assert c.takedown_held() == {ids["1"]}
        overrides.undo(c, ids["1"], held, "another picture", "t")
        assert overrides.override_of(c, ids["1"]) == overrides.EMPTY and c.takedown_held() == set()
        with c.transaction():
            assert overrides.hold(c, ids["1"], "looks like a photo taken down", "remove") is None   # not asked again
        before = overrides.override_of(c, ids["2"])
        logged = overrides.log_removal(c, ids["2"], "owner asked", "tab1", 3)
        (entry,) = overrides.actions(c, ids["2"])
        assert entry["id"] == logged and entry["action"] == "remove" and entry["detail"] == {"files_deleted": 3}
        assert entry["before_state"] is None and overrides.latest_undoable(c, ids["2"]) is None
        assert overrides.override_of(c, ids["2"]) == before
        assert c.get(ids["2"])["status"] == "accepted"          # the log line is no takedown: Catalog.record_removal is
    for name in ("record_removal", "log_removal", "act", "undo", "hold", "build_candidates", "ensure_schema", "SCHEMA"):
        assert not hasattr(review, name), name


def test_a_relabel_to_the_labels_in_force_changes_and_logs_nothing(catalog_settings, tmp_path: Path):
    """A user's audit (review25): saving the labels an image already has logged a `relabel` that
    changed nothing (before and after the same), then offered as "undo relabel"."""
    path, ids = accepted_catalog(tmp_path, catalog_settings)
    with Catalog(path) as c:
        overrides.ensure_schema(c)
        same = overrides.act(c, ids["1"], "relabel", "r", "t", CLASSES, labels=["ants", "ants"])    # its curated one
        assert same == overrides.ActionResult(None, overrides.EMPTY) and overrides.actions(c, ids["1"]) == []
        both = overrides.act(c, ids["1"], "relabel", "r", "t", CLASSES, labels=["ants", "bees"])
        assert overrides.act(c, ids["1"], "relabel", "r", "t", CLASSES, labels=["bees", "ants"], seen_action=both.action_id
                             ) == overrides.ActionResult(None, {"labels": "ants bees", "include": None})
        pool = overrides.act(c, ids["5"], "relabel", "r", "t", CLASSES, labels=["other"])       # a pool image: decided
        assert pool.action_id is not None and pool.state == {"labels": "other", "include": FROM_POOL}
        assert overrides.act(c, ids["5"], "relabel", "r", "t", CLASSES, labels=["other"]).action_id is None
        assert [a["id"] for a in overrides.actions(c, ids["1"])] == [both.action_id]
        assert overrides.latest_undoable(c, ids["1"])["id"] == both.action_id
