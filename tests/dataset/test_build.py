"""The build against `source.licenses` (the collect25 audit, D3): photos collected from the bundled
server under `licenses: any`, then the setting narrowed to open licences. The build publishes only
the licences the setting allows now, says what it left out and why, and widening the setting again
brings them back: the catalog is not changed."""

from __future__ import annotations

import csv
import functools
import html
import http.server
import json
import threading
from collections import Counter

import pytest

from helpers import FIXTURES

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import RESTRICTED_LICENSES, parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.splits import mined_split, split_of
from mlc_pipeline.manifest import MANIFEST_COLUMNS, read_manifest, read_manifest_frame

OPEN = [4, 5, 9, 10, 11]


def settings(data_dir, licenses) -> dict:
    return {"data_dir": str(data_dir),
            "source": {"kind": "local", "licenses": licenses, "sizes": ["url_n", "url_m"], "per_page": 50,
                       "local": {"seed": 11, "scale": 0.1, "port": 0}},
            "classes": {"balloon": {"queries": ["balloon"], "count": 25}, "kite": {"queries": ["kite"], "count": 25}},
            "other": {"queries": ["landscape", "sky"], "count": 25}}


@pytest.fixture(scope="module")
def collected_under_any(tmp_path_factory):
    """Collected and curated with `licenses: any`; returns the data folder and the accepted rows."""
    data = tmp_path_factory.mktemp("anylic") / "data"
    cfg = parse_config(settings(data, "any"))
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as catalog:
        accepted = [dict(r) for r in catalog.candidates(status="accepted")]
    return data, accepted


def test_a_narrowed_licence_setting_leaves_out_what_it_no_longer_allows_until_widened(collected_under_any):
    data, accepted = collected_under_any
    ids = Counter(r["license_id"] for r in accepted)
    assert set(ids) - set(OPEN) and set(ids) & set(OPEN), ids       # the world serves both kinds
    wide = build_dataset(parse_config(settings(data, "any")))
    assert wide.published and wide.counts["restricted_licenses"]

    narrow = build_dataset(parse_config(settings(data, OPEN)))
    assert narrow.published and narrow.version == "v2"
    manifest = read_manifest(narrow.path / "manifest.csv")
    assert manifest and {int(m["license_id"]) for m in manifest} <= set(OPEN)    # (every licence, until 2026-12-07)
    assert not wide.not_allowed
    assert narrow.counts["images"] == len(read_manifest(wide.path / "manifest.csv")) - sum(narrow.not_allowed.values())
    expected = Counter(r["license_name"] for r in accepted if r["license_id"] not in OPEN)
    assert narrow.not_allowed == dict(expected) and narrow.counts["restricted_licenses"] == {}
    meta = json.loads((narrow.path / "dataset.json").read_text())
    assert meta["left_out"]["licence-not-allowed"] == dict(sorted(expected.items()))
    assert meta["params"]["source"] == {"licenses": OPEN}

    card = (narrow.path / "README.md").read_text()
    assert "Licences that restrict use" not in card and "lets in licences" not in card
    assert "- licences allowed: `source.licenses: 4, 5, 9, 10, 11` (only these Flickr licence ids" in card
    n = sum(expected.values())
    assert (f"{n} accepted image(s) in the catalog, collected under an earlier setting, carry a licence "
            "`source.licenses: 4, 5, 9, 10, 11` does not allow: ") in card
    some = RESTRICTED_LICENSES[0]
    if some in expected:
        assert f"{some} ({expected[some]})" in card

    # `mlc inspect` says it too (text and HTML): it read only the curation's counts
    from mlc_pipeline.report.inspect import dataset_summary, format_dataset_summary, html_report
    text = format_dataset_summary(dataset_summary(parse_config(settings(data, OPEN)), "v2"))
    named = ", ".join(f"{k} {v}" for k, v in sorted(expected.items()))
    assert f"  licence not in source.licenses: {named}" in text.split("Left out by the build")[1], text
    page = html_report(parse_config(settings(data, OPEN)), "v2")
    assert "id='left-out'" in page and html.escape(f"licence not in source.licenses: {named}") in page

    with Catalog(parse_config(settings(data, OPEN)).catalog_path) as catalog:   # not a catalog change
        assert sorted(r["id"] for r in catalog.candidates(status="accepted")) == sorted(r["id"] for r in accepted)
    again = build_dataset(parse_config(settings(data, "any")))
    assert again.published and again.version == "v3" and again.fingerprint == wide.fingerprint
    assert not again.not_allowed


def test_a_setting_that_allows_none_of_the_accepted_images_is_nothing_to_build(collected_under_any):
    from mlc_pipeline.dataset.build import NothingToBuild
    data, _ = collected_under_any
    with pytest.raises(NothingToBuild, match=r"every accepted image's licence is one source.licenses \(17\) does"):
        build_dataset(parse_config(settings(data, [17])))      # an id no photo carries (Flickr's list ends at 16)


# ------------------------------------------------------------------ outside text in manifest.csv

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# A URL list's rows as a source may give them: its `photo_page` is the manifest's `source_file`.
HOSTILE_ROWS = [
    {"title": "a\x00b", "owner": "\x1b]0;pwned\x07\x1b[2J", "photo_page": '=HYPERLINK("http://evil.example/","x")'},
    {"title": "two\tcolumns\nand lines\r\nkept", "owner": "o\x7fp\x85q", "photo_page": "+cmd|' /C calc'!A0"},
    {"title": "\x00=1+1", "owner": "@SUM(1)", "photo_page": "-2+3"},
    {"title": "plain", "owner": "someone", "photo_page": "https://example.org/photos/3"},
]


@pytest.fixture(scope="module")
def hostile_list(tmp_path_factory):
    """A URL list of real photos served on loopback, its attribution as HOSTILE_ROWS, collected,
    curated and built; returns (the config, the version folder)."""
    tmp = tmp_path_factory.mktemp("hostile")
    cats = sorted((FIXTURES / "pets" / "cat").glob("*.jpg"))[:len(HOSTILE_ROWS)]
    dogs = sorted((FIXTURES / "pets" / "dog").glob("*.jpg"))[:2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(FIXTURES / "pets")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with (tmp / "list.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, ["url", "label", "license", "title", "owner", "photo_page"])
            w.writeheader()
            w.writerows([{"url": f"{host}/cat/{p.name}", "label": "cat", "license": "CC BY 2.0", **row}
                         for p, row in zip(cats, HOSTILE_ROWS)])
            w.writerows([{"url": f"{host}/dog/{p.name}", "label": "other"} for p in dogs])
        cfg = parse_config({"data_dir": str(tmp / "data"), "source": {"kind": "urls", "csv": str(tmp / "list.csv")},
                            "classes": {"cat": {"queries": ["cat"], "count": len(cats)}},
                            "other": {"queries": ["other"], "count": len(dogs)}})
        collect(cfg, progress=False)
        curate(cfg)
        version = build_dataset(cfg).path
    finally:
        server.shutdown()
        server.server_close()
    return cfg, version


def manifest_cells(version) -> dict[str, dict]:
    """manifest.csv's cells as a spreadsheet or any CSV reader sees them, by image URL."""
    with open(version / "manifest.csv", newline="") as f:
        return {r["url"]: r for r in csv.DictReader(f)}


def test_a_source_file_a_spreadsheet_would_take_for_a_formula_is_written_as_text(hostile_list):
    """`source_file` (a folder's file name, a URL list's `photo_page`) went into manifest.csv as it
    came, while the other text columns had a `'` before a cell starting with = + - @: a URL list's
    `=HYPERLINK(...)` or `+cmd|...` was a live formula in Excel or LibreOffice. Guarded now, and read
    back as the source gave it."""
    cfg, version = hostile_list
    pages = {r["photo_page"] for r in HOSTILE_ROWS}
    cells = manifest_cells(version).values()
    assert {r["source_file"] for r in cells if r["labels"] == "cat"} == {"'" + p if p[0] in "=+-@" else p for p in pages}
    assert not [(k, v) for r in cells for k, v in r.items() if v.startswith(("=", "+", "-", "@"))]
    rows = read_manifest(version / "manifest.csv")
    assert {r["source_file"] for r in rows if r["labels"] == "cat"} == pages
    frame = read_manifest_frame(version / "manifest.csv")
    assert set(frame[frame["labels"] == "cat"]["source_file"]) == pages
    assert [r["page"] for r in rows if r["page"]] == ["https://example.org/photos/3"]   # only an http(s) one


def test_control_characters_in_outside_text_are_u_fffd_in_the_manifest_and_the_rest_reads_back(hostile_list):
    """A NUL in a title (or an ESC in an owner's name) went into manifest.csv as it came: Python's csv
    before 3.11 refused the line and pandas' C parser has cut the cell at it; an ESC drove the terminal
    that showed the file. Each control character but a tab or a line break is U+FFFD now, as in the
    card; every other field reads back exactly as the catalog has it."""
    cfg, version = hostile_list
    text = (version / "manifest.csv").read_text()
    assert not {c for c in text if (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) and c not in "\t\n\r"}, repr(text)
    rows = {r["url"]: r for r in read_manifest(version / "manifest.csv")}
    by_page = {r["source_file"]: r for r in rows.values()}
    shown = [(by_page[r["photo_page"]]["title"], by_page[r["photo_page"]]["owner"]) for r in HOSTILE_ROWS]
    assert shown == [("a\ufffdb", "\ufffd]0;pwned\ufffd\ufffd[2J"), ("two\tcolumns\nand lines\r\nkept", "o\ufffdp\ufffdq"),
                     ("\ufffd=1+1", "@SUM(1)"), ("plain", "someone")], shown
    assert manifest_cells(version)[by_page["-2+3"]["url"]]["title"] == "\ufffd=1+1"      # no formula: no `'`
    with Catalog(cfg.catalog_path) as catalog:
        accepted = {r["url"]: r for r in catalog.candidates(status="accepted")}
    assert len(rows) == len(accepted) == len(HOSTILE_ROWS) + 2
    for url, r in rows.items():
        c = accepted[url]
        assert (r["photo_id"], r["sha256"], r["license"], r["source_file"] or None) == \
            (c["photo_id"], c["sha256"], c["license_name"] or "", c["source_file"]), r
    frame = read_manifest_frame(version / "manifest.csv")
    assert frame[MANIFEST_COLUMNS].to_dict("records") == list(rows.values())


# ------------------------------------------------------------------ splits

def planted_world(tmp_path, pool_in_test: int):
    """A flickr catalog with noise pictures downloaded for class "cat", for "other", and for the mining
    pool, curated for real; the pool's photo ids are ones `split_of` puts in test. Returns the config."""
    from mlc_pipeline.catalog import Found
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"cat": {"queries": ["cat"], "count": 20}},
                        "other": {"queries": ["o"], "count": 8}, "mine": {"pool": {"queries": ["p"], "count": 8}},
                        "curate": {"workers": 1}})
    in_test = (f"pool{k}" for k in range(10_000) if split_of("flickr", f"pool{k}", cfg.build.split) == "test")
    photos = ([(f"cat{k}", "train", "cat") for k in range(20)] + [(f"o{k}", "train", "other") for k in range(8)]
              + [(next(in_test), "pool", "other") for _ in range(pool_in_test)])
    plant(cfg, [Found("flickr", pid, purpose, label, label, f"http://h/{pid}", "url_m", None, None, 4,
                      "CC BY 2.0", "o", "o", "t", None, None, label) for pid, purpose, label in photos])
    return cfg


def plant(cfg, found: list) -> None:
    """`found` in the catalog, each downloaded as a noise picture, then curated for real."""
    from PIL import Image
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found(found, run)
        for f in found:
            dest = cfg.layout.raw("flickr") / f"{f.photo_id}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.effect_noise((96, 96), 60).convert("RGB").save(dest)
            c.set_status(c.get_by_photo("flickr", f.photo_id)["id"], "downloaded", None, run, "download",
                         file_path=str(dest))
    curate(cfg)


def test_pool_images_labelled_in_review_never_enter_test_and_the_test_set_stays(tmp_path):
    """docs/review.md: a pool image labelled in review trains "with the split mined negatives take
    (training, or the share that calibrates; never test)". Every pool photo here is one `split_of`
    would put in test: built as a dataset image, the next version's test set would change and rounds
    would be compared on other test images (the mutation27 audit: the one test checked two images whose
    two splits agreed). Every image of v1 keeps its split in v2."""
    from mlc_pipeline.catalog.overrides import act, ensure_schema
    cfg = planted_world(tmp_path, pool_in_test=6)
    v1 = build_dataset(cfg)
    before = {r["photo_id"]: r["split"] for r in read_manifest(v1.path / "manifest.csv")}
    assert "test" in before.values(), "the split put no image in test: a useless test"
    with Catalog(cfg.catalog_path) as c:
        ensure_schema(c)
        pool = c.candidates(purpose="pool", status="accepted")
        assert len(pool) == 6 and not {r["photo_id"] for r in pool} & before.keys()
        for k, r in enumerate(pool):
            act(c, r["id"], "relabel", "seen", "test", list(cfg.classes), labels=["cat" if k % 2 else "other"])
    v2 = build_dataset(cfg)
    after = {r["photo_id"]: r for r in read_manifest(v2.path / "manifest.csv")}
    for r in pool:
        row = after[r["photo_id"]]
        assert row["purpose"] == "pool" and row["split"] != "test", row
        assert row["split"] == mined_split("flickr", r["photo_id"], cfg.mine.calibration_share)
    assert {pid: r["split"] for pid, r in after.items() if pid in before} == before
    assert {pid for pid, r in after.items() if r["split"] == "test"} == {pid for pid, s in before.items() if s == "test"}


SPLIT_SCRIPT = """
import json, sys
from mlc_pipeline.dataset.splits import mined_split, split_of
ids = [(s, f"{s}-{k}") for s in ("flickr", "local", "urls") for k in range(400)]
print(json.dumps([[split_of(s, p, {"train": 0.7, "valid": 0.15, "test": 0.15}), mined_split(s, p, 1 / 3)]
                  for s, p in ids]))
"""


def test_an_images_split_is_a_function_of_its_photo_alone_in_every_process():
    """build.py: "an image never changes split between versions", and every `mlc build` is a new
    process. A split drawn from anything salted per process (Python's str hash) agrees with itself
    inside one build and moves test images into train at the next; a test that builds twice in one
    process cannot see it (the mutation27 audit: caught only by chance). Two processes with other
    hash seeds must agree with each other and with this one, and a few photos' splits are pinned: a
    change of the hashing moves every existing data root's test images too."""
    import os
    import subprocess
    import sys
    runs = [subprocess.run([sys.executable, "-c", SPLIT_SCRIPT], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": seed}) for seed in ("1", "2")]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second
    ids = [(s, f"{s}-{k}") for s in ("flickr", "local", "urls") for k in range(400)]
    fractions = {"train": 0.7, "valid": 0.15, "test": 0.15}
    assert first == [[split_of(s, p, fractions), mined_split(s, p, 1 / 3)] for s, p in ids]
    assert {split for split, _ in first} == {"train", "valid", "test"}
    pinned = {"50000000000": "train", "50000000001": "valid", "50000000017": "test", "50000000046": "test",
              "50000000003": "valid", "50000000002": "train"}
    assert {pid: split_of("flickr", pid, fractions) for pid in pinned} == pinned
    assert [mined_split("flickr", f"5000000000{k}", 1 / 3) for k in range(4)] == ["train", "valid", "train", "valid"]


def paged_world(tmp_path, rest_url: str):
    """A flickr catalog curated for real: "cat" photos whose images are on Flickr's servers, "other"
    photos from a server of its own (the bundled one, as `kind: flickr`: ids that name no Flickr photo)."""
    from mlc_pipeline.catalog import Found
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"cat": {"queries": ["cat"], "count": 8}},
                        "other": {"queries": ["o"], "count": 8}, "curate": {"workers": 1},
                        "source": {"kind": "flickr", "rest_url": rest_url}})
    photos = [(f"5301{k}", "cat", f"https://live.staticflickr.com/65535/5301{k}_ab12_n.jpg") for k in range(8)] + \
             [(f"5302{k}", "other", f"http://127.0.0.1:31900/static/1/5302{k}_ab12.jpg") for k in range(8)]
    plant(cfg, [Found("flickr", pid, "train", label, label, url, "url_n", None, None, 4, "CC BY 2.0",
                      "12@N01", "Owner", "t", None, None, label) for pid, label, url in photos])
    return cfg, photos


def test_a_photo_page_is_known_by_where_the_image_is_not_by_the_builds_rest_url(tmp_path):
    """Audit collect27 D7: the photo-page link existed only if the build's rest_url started with
    https://api.flickr.com/: with www.flickr.com's endpoint (Flickr's too) or a proxy, every row had
    no page, and ATTRIBUTION.md linked the image's CDN URL. A photo whose image is on Flickr's servers
    has its Flickr page whatever the endpoint; one from a server of its own has none."""
    cfg, photos = paged_world(tmp_path, "https://www.flickr.com/services/rest/")
    res = build_dataset(cfg)
    pages = {r["photo_id"]: r["page"] for r in read_manifest(res.path / "manifest.csv")}
    assert pages, "nothing built: a useless test"
    for pid, label, _ in photos:
        if pid in pages:
            assert pages[pid] == (f"https://www.flickr.com/photos/12@N01/{pid}" if label == "cat" else ""), pid
    assert {"cat", "other"} <= {label for pid, label, _ in photos if pid in pages}
    text = (res.path / "ATTRIBUTION.md").read_text()
    assert "](https://www.flickr.com/photos/12@N01/5301" in text and "live.staticflickr.com" not in text


def test_a_changed_attribution_publishes_a_version_where_a_rebuild_said_unchanged(tmp_path):
    """Audit collect27 D7: attribution is no part of the fingerprint, so a rebuild after it changed
    (an owner renamed, a photo page now known) said "unchanged" and kept the old ATTRIBUTION.md. It
    publishes a version with the same images and the fingerprint rules of existing versions hold."""
    from mlc_pipeline.catalog import Found
    from mlc_pipeline.dataset.verify import verify_version
    cfg, photos = paged_world(tmp_path, "https://api.flickr.com/services/rest/")
    first = build_dataset(cfg)
    assert build_dataset(cfg).published is False        # nothing changed: nothing published
    with Catalog(cfg.catalog_path) as c:                # found again: its owner has a new name
        pid, label, url = photos[0]
        c.upsert_found([Found("flickr", pid, "train", label, label, url, "url_n", None, None, 4, "CC BY 2.0",
                              "12@N01", "Renamed Owner", "t", None, None, label)], c.start_run("again"))
    again = build_dataset(cfg)
    assert again.published and again.version == "v2" and again.fingerprint == first.fingerprint
    assert "Renamed Owner" in (again.path / "ATTRIBUTION.md").read_text()
    assert "Renamed Owner" not in (first.path / "ATTRIBUTION.md").read_text()     # v1 stays as published
    verify_version(first.path)
    verify_version(again.path)
    assert build_dataset(cfg).published is False
