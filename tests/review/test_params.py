"""review/params.py: what a review request asks for, checked at the edge (docs/review.md, "Bad
requests"): its numbers, its browse filters, its client, and what a page shows of a candidate's next
build. Requests are real Starlette requests built from an ASGI scope, as the app receives them."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from mlc_pipeline.catalog.labels import FROM_POOL
from mlc_pipeline.review.params import SQL_INT_MAX, client_of, effective, filters_of, fits_sql, known_id, whole_number

BIG = 2**63                   # one past SQLite's and PostgreSQL's BIGINT


def request(query: str | dict = "", headers: dict[str, str] | None = None,
            client: tuple[str, int] | None = ("127.0.0.1", 50123)) -> Request:
    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "scheme": "http",
             "query_string": (urlencode(query) if isinstance(query, dict) else query).encode("latin-1"),
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]}
    if client is not None:
        scope["client"] = client
    return Request(scope)


# ---- whole numbers -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(0, 0), (12, 12), (-3, -3), (BIG * 4, BIG * 4)])
def test_a_json_integer_is_a_whole_number_whatever_its_size(value, expected):
    assert whole_number(value, "id") == expected         # the range is fits_sql's to check


@pytest.mark.parametrize("value", [True, False, 1.0, 1e400, float("nan"), "12", "abc", None, [1], {"id": 1}])
def test_anything_else_from_json_is_refused_naming_what(value):
    with pytest.raises(ValueError) as refused:
        whole_number(value, "action_id")
    assert str(refused.value) == "action_id must be a whole number"


@pytest.mark.parametrize("text, expected", [("12", 12), (" 12 ", 12), ("-7", -7), ("0", 0), ("-0", 0),
                                            ("007", 7), ("1" * 40, int("1" * 40)), (str(BIG), BIG), (5, 5)])
def test_a_string_of_digits_from_a_url_is_a_whole_number(text, expected):
    assert whole_number(text, "page_no", from_url=True) == expected


@pytest.mark.parametrize("text", ["", " ", "abc", "1.5", "1e3", "+3", "--1", "0x10", "1_000", "1 2",
                                  "\uff11\uff12",          # fullwidth digits: int() takes them, a URL number does not
                                  "\u0661\u0662",          # Arabic-Indic digits
                                  "1" * 41, "true", True])
def test_anything_else_from_a_url_is_refused(text):
    with pytest.raises(ValueError, match="^page_no must be a whole number$"):
        whole_number(text, "page_no", from_url=True)


def test_fits_sql_at_the_edges_of_bigint():
    assert SQL_INT_MAX == BIG - 1
    assert [fits_sql(n) for n in (0, BIG - 1, BIG, -BIG, -BIG - 1, 10**30)] == [True, True, False, True, False, False]


def test_an_id_past_sql_names_no_candidate():
    assert known_id(1) == 1
    assert known_id(BIG - 1) == BIG - 1
    assert known_id(-1) == -1          # SQL holds it: the lookup finds no candidate and says so
    for cid in (BIG, -BIG - 1):
        with pytest.raises(HTTPException) as refused:
            known_id(cid)
        assert (refused.value.status_code, refused.value.detail) == (404, f"no candidate {cid}")


# ---- browse filters ------------------------------------------------------------------------------

def test_no_query_no_filters():
    assert filters_of(request()) == {}


def test_the_browse_filters_are_taken_stripped_and_nothing_else():
    query = {"set": " train ", "label": "kite", "status": "accepted", "reason": "hard-negative", "licence": " 4 ",
             "round": "2", "version": "v3", "split": "test", "reviewed": "1", "sort": "score",
             "page_no": "3", "foo": "bar", "id": "7"}
    assert filters_of(request(query)) == {"set": "train", "label": "kite", "status": "accepted",
                                          "reason": "hard-negative", "licence": "4", "round": "2", "version": "v3",
                                          "split": "test", "reviewed": "1", "sort": "score"}


def test_blank_filters_are_no_filters():
    assert filters_of(request("set=&label=%20%20&licence=&round=%20&status=accepted")) == {"status": "accepted"}


def test_unknown_values_of_text_filters_are_passed_on_as_they_are():
    # only the numbers are checked here: an unknown set or status matches no candidate in the catalog
    query = {"set": "bogus", "status": "nonsense", "label": "100%_kite", "sort": "random"}
    assert filters_of(request(query)) == query


@pytest.mark.parametrize("value", ["maybe", "2", "yes", "true", "01"])
def test_a_reviewed_filter_other_than_0_or_1_is_400(value):
    """Any value but 0 listed the reviewed images, as 1 does: ?reviewed=maybe looked like an answer."""
    with pytest.raises(HTTPException) as refused:
        filters_of(request({"reviewed": value}))
    assert refused.value.status_code == 400
    assert refused.value.detail == ("the reviewed filter is 0 (no review decision in force) or 1 (one in force), "
                                    f"not {value!r}")
    assert filters_of(request({"reviewed": " 0 "})) == {"reviewed": "0"}


@pytest.mark.parametrize("licence", ["0", "-1", str(BIG - 1), str(-BIG), "0004"])
def test_a_licence_sql_holds_is_kept_as_given(licence):
    assert filters_of(request({"licence": licence, "round": licence})) == {"licence": licence, "round": licence}


@pytest.mark.parametrize("name", ["licence", "round"])
@pytest.mark.parametrize("value, why", [
    ("abc", "must be a whole number"), ("1.5", "must be a whole number"), ("1e3", "must be a whole number"),
    ("true", "must be a whole number"), ("\uff13", "must be a whole number"), ("9" * 41, "must be a whole number"),
    (str(BIG), "is out of range"), (str(-BIG - 1), "is out of range"), ("9" * 40, "is out of range"),
])
def test_a_licence_or_round_that_is_no_number_sql_holds_is_400(name, value, why):
    with pytest.raises(HTTPException) as refused:
        filters_of(request({name: value}))
    assert refused.value.status_code == 400
    assert refused.value.detail == f"the {name} {why} (the licence and round filters are numbers)"


def test_the_licence_is_checked_before_the_round_and_the_last_of_repeated_values_counts():
    with pytest.raises(HTTPException) as refused:
        filters_of(request({"licence": "x", "round": "y"}))
    assert refused.value.detail.startswith("the licence must be a whole number")
    assert filters_of(request("licence=abc&licence=2")) == {"licence": "2"}
    with pytest.raises(HTTPException):
        filters_of(request("licence=2&licence=abc"))


# ---- the client ----------------------------------------------------------------------------------

def test_the_client_is_the_address_and_the_tab():
    assert client_of(request(headers={"X-MLC-Client": "tab-7f3a"})) == "127.0.0.1 tab=tab-7f3a"
    assert client_of(request()) == "127.0.0.1 tab=-"
    assert client_of(request(headers={"X-MLC-Client": ""})) == "127.0.0.1 tab=-"
    assert client_of(request(headers={"X-MLC-Client": "t1"}, client=None)) == "? tab=t1"


def test_a_tab_id_is_cut_to_40_characters_and_unprintable_ones_go():
    assert client_of(request(headers={"X-MLC-Client": "a" * 50})) == "127.0.0.1 tab=" + "a" * 40
    assert client_of(request(headers={"X-MLC-Client": "\x1b[31mred\x07\x7f"})) == "127.0.0.1 tab=[31mred"


# ---- what the next build does with a candidate ---------------------------------------------------

def cand(purpose="train", status="accepted", label="kite", curated_label="kite", **override) -> dict:
    return {"purpose": purpose, "status": status, "label": label, "curated_label": curated_label,
            "file_path": "/data/images/x.jpg", "reason": None, **override}


@pytest.mark.parametrize("row, shown", [
    (cand(), {"labels": "kite", "state": "in", "reviewed": False}),
    (cand(review_labels="balloon"), {"labels": "balloon", "state": "in", "reviewed": True}),
    (cand(review_include="rejected"), {"labels": "kite", "state": "out (rejected in review)", "reviewed": True}),
    (cand(status="removed", review_labels="balloon"), {"labels": "balloon", "state": "out (taken down)",
                                                       "reviewed": False}),
    (cand(status="duplicate", curated_label=None, review_include="accepted"),
     {"labels": "kite", "state": "in (put back in review)", "reviewed": True}),
    (cand(status="downloaded", curated_label=None), {"labels": "kite", "state": "out (not curated yet: the next "
                                                     "curate decides)", "reviewed": False}),
    (cand(status="rejected", curated_label=None), {"labels": "kite", "state": "out", "reviewed": False}),
    (cand(purpose="pool", label="other", curated_label="other"),
     {"labels": "other", "state": "out (in the mining pool: save labels to train on it)", "reviewed": False}),
    (cand(purpose="pool", label="other", curated_label="other", review_include=FROM_POOL, review_labels="kite"),
     {"labels": "kite", "state": "in (a pool image labelled in review)", "reviewed": True}),
    (cand(purpose="probe", label="other", curated_label=None), {"labels": "other", "state": "in", "reviewed": False}),
    (cand(purpose="probe", label="other", curated_label=None, review_include="rejected"),
     {"labels": "other", "state": "out (rejected in review)", "reviewed": True}),
])
def test_effective_shows_the_next_builds_labels_and_state(row, shown):
    assert effective(row) == shown
