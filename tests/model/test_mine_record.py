"""model/mine_record.py: a mining round's number (from the catalog), its record in the bundle, and the
warning about pool queries that overlap a class (docs/training.md, "Mining hard negatives")."""

from __future__ import annotations

import csv

import pytest

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config
from mlc_pipeline.model.mine_record import (next_round, overlapping_queries, pool_overlaps, publish_record, record_round,
                                            shared_word)


def config(tmp_path, classes: dict[str, list[str]] | None = None, pool: list[str] | None = None, **extra):
    classes = classes or {"kite": ["kite"]}
    data = {"data_dir": str(tmp_path / "data"),
            "classes": {name: {"queries": qs, "count": 5} for name, qs in classes.items()},
            "other": {"queries": ["landscape"], "count": 5}, **extra}
    if pool is not None:
        data["mine"] = {"pool": {"queries": pool, "count": 5}}
    return parse_config(data)


# ---- round numbers -------------------------------------------------------------------------------

def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "pool", "other", "toys", "http://img.test/x.jpg", "url_m", 500, 375, 4,
                 "CC BY", "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")


def catalog_with(cfg, *marks: tuple[str, str | None, int | None]) -> None:
    """A catalog whose pool candidates have these (status, reason, mined_round)."""
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("mine")
        c.upsert_found([found(str(i)) for i in range(len(marks))], run)
        for i, (status, reason, mined) in enumerate(marks):
            cid = c.get_by_photo("flickr", str(i))["id"]
            c.set_status(cid, status, reason, run, "mine")
            c.update_fields(cid, mined_round=mined)


def test_the_first_round_is_1_without_a_catalog_and_none_is_made(tmp_path):
    cfg = config(tmp_path)
    assert next_round(cfg) == 1
    assert not (tmp_path / "data").exists()          # asking made no catalog (nor data root)


def test_the_first_round_is_1_when_the_catalog_records_no_mining(tmp_path, catalog_settings):
    cfg = config(tmp_path, **catalog_settings)
    catalog_with(cfg, ("accepted", None, None), ("rejected", "too-small", None))
    assert next_round(cfg) == 1


@pytest.mark.parametrize("marks, expected", [
    ([("accepted", "hard-negative", 2)], 3),                                 # mined
    ([("accepted", "held:like-class:kite:round=4", None)], 5),               # held
    ([("accepted", "not-a-negative:round=3", None), ("accepted", "hard-negative", 1)], 4),   # put back
    ([("accepted", "held:query-overlaps:kite:round=12", None), ("accepted", "hard-negative", 11)], 13),
])
def test_rounds_are_numbered_on_from_the_highest_the_catalog_records(tmp_path, catalog_settings, marks, expected):
    cfg = config(tmp_path, **catalog_settings)
    catalog_with(cfg, ("accepted", None, None), *marks)
    assert next_round(cfg) == expected


# ---- a round's record ----------------------------------------------------------------------------

COLUMNS = ["candidate_id", "photo_id", "score", "decision"]


def read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def decision(cid: int, what: str, score: str = "0.9") -> dict:
    return {"candidate_id": cid, "photo_id": f"p{cid}", "score": score, "decision": what}


def recorded(folder, round_no: int, decisions: list[dict]) -> None:
    """A round's record as a mining round that committed leaves it: pending, then published."""
    publish_record(record_round(folder, round_no, decisions, COLUMNS, "20261207T000000-abcdef"))


def as_read(*rows: dict) -> list[dict]:
    return [{k: str(v) for k, v in r.items()} for r in rows]


def test_a_round_record_and_mined_csv_hold_the_decisions(tmp_path):
    first = [decision(1, "added"), decision(2, "held:like-class:kite"), decision(3, "over-cap")]
    recorded(tmp_path, 1, first)
    assert read(tmp_path / "mined-r1.csv") == as_read(*first)
    assert (tmp_path / "mined.csv").read_bytes() == (tmp_path / "mined-r1.csv").read_bytes()
    assert (tmp_path / "mined-r1.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_a_round_mined_again_adds_to_its_record_and_a_redecided_image_takes_its_new_decision(tmp_path):
    recorded(tmp_path, 1, [decision(1, "added"), decision(2, "over-cap"), decision(3, "held:like-class:kite")])
    recorded(tmp_path, 1, [decision(2, "added", "0.8"), decision(4, "added")])
    expected = as_read(decision(1, "added"), decision(3, "held:like-class:kite"),
                       decision(2, "added", "0.8"), decision(4, "added"))
    assert read(tmp_path / "mined-r1.csv") == expected
    assert read(tmp_path / "mined.csv") == expected
    # mined again with nothing to decide: the record stays
    recorded(tmp_path, 1, [])
    assert read(tmp_path / "mined-r1.csv") == expected


def test_each_round_has_its_own_record_and_mined_csv_is_the_latest(tmp_path):
    recorded(tmp_path, 1, [decision(1, "added")])
    recorded(tmp_path, 2, [decision(1, "added"), decision(5, "over-cap")])
    assert read(tmp_path / "mined-r1.csv") == as_read(decision(1, "added"))
    assert read(tmp_path / "mined-r2.csv") == as_read(decision(1, "added"), decision(5, "over-cap"))
    assert read(tmp_path / "mined.csv") == read(tmp_path / "mined-r2.csv")


def test_a_round_that_decided_nothing_leaves_an_empty_record(tmp_path):
    recorded(tmp_path, 3, [])
    assert (tmp_path / "mined-r3.csv").read_text().splitlines() == [",".join(COLUMNS)]
    assert read(tmp_path / "mined.csv") == []


# ---- pool queries that overlap a class -----------------------------------------------------------

def test_no_pool_no_overlap(tmp_path):
    assert overlapping_queries(config(tmp_path)) == {}
    assert pool_overlaps(config(tmp_path)) == []


@pytest.mark.parametrize("pool_query, shared", [
    ("kite", ["kite"]),                    # the class's own query
    ("red kite festival", ["kite"]),       # a pool query that contains it
    ("kites", ["kite"]),                   # a plural
    ("Kite.", ["kite"]),                   # case and punctuation
    ("kite,string", ["kite"]),             # punctuation splits words
    ("kite_surfing", ["kite"]),            # so does an underscore
    ("KITES!!", ["kite"]),
    ("kit", None),                         # a word that merely starts the same
    ("kiteboard", None),                   # one word is not two
    ("beach", None),
])
def test_a_pool_query_overlaps_a_class_as_search_matches_words(tmp_path, pool_query, shared):
    cfg = config(tmp_path, {"kite": ["kite"]}, [pool_query, "landscape"])
    assert overlapping_queries(cfg) == ({pool_query: {"kite": shared}} if shared else {})


def test_the_class_name_counts_as_well_as_its_queries(tmp_path):
    # docs/training.md's example: "bear cubs" for a teddy class whose query is "teddy bear"
    cfg = config(tmp_path, {"teddy": ["teddy bear"], "kite": ["flying toy"]}, ["bear cubs", "teddy", "toys"])
    assert overlapping_queries(cfg) == {"bear cubs": {"teddy": ["bear"]}, "teddy": {"teddy": ["teddy"]},
                                        "toys": {"kite": ["toy"]}}


def test_a_pool_query_contained_in_a_class_query_and_one_that_overlaps_two_classes(tmp_path):
    cfg = config(tmp_path, {"kite": ["red kite flying"], "balloon": ["hot air balloon"]},
                 ["red kites", "kite and balloon festival"])
    assert overlapping_queries(cfg) == {"red kites": {"kite": ["kite", "red"]},
                                        "kite and balloon festival": {"kite": ["kite"], "balloon": ["balloon"]}}


def test_words_of_two_letters_or_fewer_do_not_count(tmp_path):
    cfg = config(tmp_path, {"kite": ["a kite in sky"]}, ["a day in town", "sky"])
    assert overlapping_queries(cfg) == {"sky": {"kite": ["sky"]}}


def test_filler_words_do_not_count(tmp_path):
    """'the beach' warned for a class queried 'the kite' (the unit-tests helper's note)."""
    cfg = config(tmp_path, {"kite": ["the kite with string"]}, ["the beach", "dog with the ball", "the kite"])
    assert overlapping_queries(cfg) == {"the kite": {"kite": ["kite"]}}


def test_the_warning_names_the_query_the_words_and_the_class(tmp_path):
    cfg = config(tmp_path, {"teddy": ["teddy bear"]}, ["bear cubs", "toys"])
    assert pool_overlaps(cfg) == [
        "mine.pool query 'bear cubs' shares ['bear'] with class 'teddy': it may return teddy images, which "
        "mining would turn into negatives (the images it finds that the model takes for teddy are held for "
        "review, not mined)"]


@pytest.mark.parametrize("plural, word", [
    ("kites", "kite"), ("kite", "kite"), ("houses", "house"), ("boxes", "box"), ("glasses", "glass"),
    ("glass", "glass"), ("beaches", "beach"), ("dishes", "dish"), ("buzzes", "buzz"), ("toys", "toy"),
    ("gas", "gas"), ("sky", "sky"), ("buses", "bus"), ("lenses", "lens"), ("lens", "lens"),
    ("tomatoes", "tomato"), ("gases", "gas"), ("kites", "kites"),
])
def test_a_word_and_its_plural_share_the_word(plural, word):
    assert shared_word(plural, word) == word and shared_word(word, plural) == word


@pytest.mark.parametrize("a, b", [("kit", "kites"), ("bus", "bust"), ("kiteboard", "kite"), ("gas", "glass"),
                                  ("tom", "tomatoes"), ("hero", "heron"), ("hat", "hates")])
def test_words_that_are_not_a_plural_of_each_other_share_nothing(a, b):
    assert shared_word(a, b) is None


@pytest.mark.parametrize("class_name, pool_query", [("bus", "city buses"), ("lens", "camera lenses"),
                                                    ("tomato", "tomatoes")])
def test_a_plural_es_of_a_word_ending_in_s_or_o_overlaps_its_class(tmp_path, class_name, pool_query):
    cfg = config(tmp_path, {class_name: [class_name]}, [pool_query])
    assert overlapping_queries(cfg) == {pool_query: {class_name: [class_name]}}
