"""A URL list as the source (issue 17, missing item 5): an img2dataset-style CSV of real photos
served over real HTTP on loopback, collected, curated and published by the `mlc` command like Flickr
results. Bad rows are reported one line each and skipped; a 404 is a recorded download failure."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
import csv
import json
import time
from collections import Counter

import pytest

from camera_files import AVIF, camera_folder
from helpers import ENV, FIXTURES, MLC

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.urllist import photo_id
from mlc_pipeline.config import load_config
from mlc_pipeline.manifest import read_manifest

PETS = FIXTURES / "pets"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:      # keep the test output to the pipeline's own lines
        pass


@pytest.fixture(scope="module")
def photo_host():
    """A plain HTTP server on loopback serving the fixture photos; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(PETS)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def mlc(*args: str) -> subprocess.CompletedProcess:
    return run_mlc(*args, "--no-progress")


def run_mlc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MLC, *args], env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory, photo_host):
    """A project folder with the CSV beside the config (given relative), collected, curated, built."""
    tmp = tmp_path_factory.mktemp("urls")
    *cats, probe = sorted(p.name for p in (PETS / "cat").iterdir())[:5]
    dogs = sorted(p.name for p in (PETS / "dog").iterdir())[:6]
    rows = [{"url": f"{photo_host}/cat/{n}", "label": "Cat", "license": "CC BY 2.0", "owner": f"owner {i}",
             "title": f"cat photo {i}", "photo_page": f"https://example.org/photos/{i}"} for i, n in enumerate(cats)]
    rows += [{"url": f"{photo_host}/dog/{n}", "label": "dog"} for n in dogs[:3]]
    rows += [{"url": f"{photo_host}/dog/{n}", "label": label} for n, label in zip(dogs[3:], ["", "other", ""])]
    rows += [{"url": rows[0]["url"], "label": "cat"},                        # the same URL again
             {"url": f"{photo_host}/cat/missing.jpg", "label": "cat"},      # a 404
             {"url": "", "label": "cat"},                                   # bad: no url
             {"url": "ftp://example.org/a.jpg", "label": "dog"},            # bad: not http(s)
             {"url": f"{photo_host}/dog/{dogs[0]}", "label": "horse"},      # bad: no set takes horse
             {"url": f"{photo_host}/cat/{probe}", "label": "", "purpose": "probe"}]
    with (tmp / "list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["url", "label", "license", "owner", "title", "photo_page", "purpose"])
        w.writeheader()
        w.writerows(rows)
    (tmp / "project.yaml").write_text(
        "data_dir: data\n"
        "source: {kind: urls, csv: list.csv, retry: {attempts: 2, base_delay_s: 0.01, max_delay_s: 0.05}}\n"
        "classes:\n  cat: {queries: [cat], count: 5}\n  dog: {queries: [dog], count: 3}\n"
        "other: {queries: [other], count: 3}\nprobe: {queries: [other], count: 1}\n"
        "build: {split: {train: 0.5, valid: 0.25, test: 0.25}}\n")
    cfg = tmp / "project.yaml"
    collected = mlc("collect", "-c", str(cfg))
    assert collected.returncode == 0, collected.stderr[-3000:]
    for step in ("curate", "build"):
        res = mlc(step, "-c", str(cfg))
        assert res.returncode == 0, res.stderr[-3000:]
    return tmp, cats, dogs, photo_host, collected, probe


def test_manifest_has_the_images_with_their_labels_and_attribution(project):
    tmp, cats, dogs, host, _, probe = project
    version = sorted((tmp / "data" / "datasets" / "default").glob("v*"))[-1]
    rows = {r["url"]: r for r in read_manifest(version / "manifest.csv")}
    expected = {**{f"{host}/cat/{n}": "cat" for n in cats}, **{f"{host}/dog/{n}": "dog" for n in dogs[:3]},
                **{f"{host}/dog/{n}": "" for n in dogs[3:]}, f"{host}/cat/{probe}": ""}   # "", "other": other
    assert {u: r["labels"] for u, r in rows.items()} == expected
    assert [u for u, r in rows.items() if r["split"] == "probe"] == [f"{host}/cat/{probe}"]   # purpose probe
    for i, name in enumerate(cats):
        r = rows[f"{host}/cat/{name}"]
        assert (r["source"], r["photo_id"]) == ("urls", photo_id(r["url"]))
        assert (r["license"], r["owner"], r["title"]) == ("CC BY 2.0", f"owner {i}", f"cat photo {i}")
        assert r["source_file"] == r["page"] == f"https://example.org/photos/{i}"
        assert r["sha256"] and (PETS / "cat" / name).stat().st_size > 0
    assert rows[f"{host}/dog/{dogs[0]}"]["license"] == ""           # not given: left empty, not invented
    attribution = (version / "ATTRIBUTION.md").read_text()     # the photo's page where the list gave one
    assert "[https://example.org/photos/0](https://example.org/photos/0)" in attribution
    assert f"{host}/cat/{cats[0]}" not in attribution and f"{host}/dog/{dogs[0]}" in attribution


def test_a_404_is_a_recorded_failure_and_a_duplicate_url_one_candidate(project):
    tmp, cats, _, host, *_ = project
    cfg = load_config(tmp / "project.yaml")
    with Catalog(cfg.catalog_path) as catalog:
        missing = catalog.get_by_photo("urls", photo_id(f"{host}/cat/missing.jpg"))
        assert missing["status"] == "failed" and missing["reason"] == "http-404"
        rows = catalog.candidates("source=? AND url=?", ("urls", f"{host}/cat/{cats[0]}"))
        assert len(rows) == 1


def test_bad_rows_are_reported_one_line_each_with_a_count(project):
    *_, collected, _ = project
    err = collected.stderr
    assert "list.csv line 14 skipped: no url" in err
    assert "list.csv line 15 skipped: not http(s)" in err
    assert "list.csv line 16 skipped: unknown label: label 'horse'" in err
    assert "list.csv: 3 of 16 rows skipped (no url 1, not http(s) 1, unknown label 1)" in err
    assert "list.csv line 12: the same URL as line 2 (one candidate)" in err and "Traceback" not in err


def test_a_missing_csv_is_a_one_line_error(tmp_path):
    (tmp_path / "p.yaml").write_text("source: {kind: urls, csv: nope.csv}\nclasses: {cat: {queries: [cat], count: 1}}\n"
                                     "other: {queries: [other], count: 1}\n")
    res = mlc("collect", "-c", str(tmp_path / "p.yaml"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert f"source.csv: file not found: {tmp_path / 'nope.csv'}" in res.stderr
    (tmp_path / "q.yaml").write_text("source: {kind: urls}\nclasses: {cat: {queries: [cat], count: 1}}\n"
                                     "other: {queries: [other], count: 1}\n")
    res = mlc("collect", "-c", str(tmp_path / "q.yaml"))
    assert res.returncode != 0 and "source.csv: kind urls needs the URL list" in res.stderr


def test_probe_rows_labelled_other_are_no_shared_query(caplog):
    """With a URL list, 'other' under both `other` and `probe` takes different rows (by purpose): no
    warning that the probe set would lose them; two classes sharing a label still get one."""
    from mlc_pipeline.config import parse_config
    base = {"classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["other"], "count": 1},
            "probe": {"queries": ["other"], "count": 1}}
    with caplog.at_level("WARNING"):
        parse_config({**base, "source": {"kind": "urls", "csv": "x.csv"}})
    assert "under both" not in caplog.text
    with caplog.at_level("WARNING"):
        parse_config({**base, "source": {"kind": "local"}})
    assert "query 'other' is under both other and probe" in caplog.text


def test_a_repeated_url_gets_one_attribution_and_lines_count_quoted_newlines(tmp_path, caplog):
    from mlc_pipeline.collect.urllist import read_url_list
    (tmp_path / "l.csv").write_text('url,label,license,title\n'
                                    'http://h/a.jpg,cat,,"two\nlines"\n'
                                    'http://h/a.jpg,dog,CC BY 2.0,\n'
                                    ',cat,,\n')
    with caplog.at_level("WARNING"):
        rows = read_url_list(tmp_path / "l.csv", {"train": {"cat", "dog", "other"}, "probe": set(), "pool": set()})
    assert [(r.label, r.license, r.title) for r in rows] == [("cat", "CC BY 2.0", "two\nlines"),
                                                             ("dog", "CC BY 2.0", "two\nlines")]
    assert "l.csv line 5 skipped: no url" in caplog.text and "1 of 3 rows skipped (no url 1)" in caplog.text


def test_a_removed_owners_later_photo_is_never_downloaded_nor_counted(tmp_path, photo_host):
    """After `mlc remove --owner`, a new row of that owner in the list was downloaded, accepted and
    counted usable by `mlc inspect`, then silently left out by the build. Now collect records it
    removed, naming the owner's takedown, and downloads nothing of it: inspect's count is the build's."""
    cats = sorted(p.name for p in (PETS / "cat").iterdir())[:6]
    dogs = sorted(p.name for p in (PETS / "dog").iterdir())[:6]
    owners = ["owner_hc", "owner_hc", "owner a", "owner b", "owner_hc", "owner c"]
    rows = [{"url": f"{photo_host}/cat/{n}", "label": "cat", "owner": o} for n, o in zip(cats, owners)]
    rows += [{"url": f"{photo_host}/dog/{n}", "label": "dog" if i < 3 else "other", "owner": "owner d"}
             for i, n in enumerate(dogs)]

    def write_list(rows):
        with (tmp_path / "list.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, ["url", "label", "owner"])
            w.writeheader()
            w.writerows(rows)
    write_list(rows[:4] + rows[6:])                 # the last two cats come later
    cfg_path = tmp_path / "project.yaml"
    cfg_path.write_text("data_dir: data\nsource: {kind: urls, csv: list.csv}\n"
                        "classes:\n  cat: {queries: [cat], count: 4}\n  dog: {queries: [dog], count: 3}\n"
                        "other: {queries: [other], count: 3}\n")
    for step in ("collect", "curate", "build"):
        res = mlc(step, "-c", str(cfg_path))
        assert res.returncode == 0, (step, res.stderr[-3000:])
    res = run_mlc("remove", "--owner", "owner_hc", "--reason", "owner asked", "-c", str(cfg_path))
    assert res.returncode == 0 and "removed 2 photo(s)" in res.stdout, res.stderr[-3000:]
    write_list(rows)                                # a new photo of owner_hc, and one of another owner
    for step in ("collect", "curate"):
        res = mlc(step, "-c", str(cfg_path))
        assert res.returncode == 0, (step, res.stderr[-3000:])

    cfg = load_config(cfg_path)
    later = photo_id(f"{photo_host}/cat/{cats[4]}")
    with Catalog(cfg.catalog_path) as catalog:
        row = catalog.get_by_photo("urls", later)
        assert catalog.get_by_photo("urls", photo_id(f"{photo_host}/cat/{cats[5]}"))["status"] == "accepted"
        events = [e["stage"] for e in catalog.events(row["id"])]
    assert row["status"] == "removed" and row["file_path"] is None and "download" not in events, (row, events)
    assert row["reason"] == "takedown:owner owner_hc was taken down (owner asked)"
    assert not list((cfg.data_dir / "raw").rglob(f"{later}.*"))
    inspected = run_mlc("inspect", "-c", str(cfg_path))
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    assert "cat: 3 of 4 usable" in inspected.stdout, inspected.stdout
    assert "removed: takedown:owner owner_hc was taken down (owner asked) = 1" in inspected.stdout
    res = mlc("build", "-c", str(cfg_path))
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = read_manifest(cfg.layout.datasets / "v2" / "manifest.csv")
    assert sum(r["labels"] == "cat" for r in manifest) == 3          # what inspect said was usable


def test_keep_out_removed_owners_on_each_catalog_backend(catalog_settings, tmp_path):
    """The rule itself, on SQLite and PostgreSQL: a photo of an owner taken down with --owner, found
    afterwards (pending), or downloaded by a collect before the rule (its file deleted), is removed with
    a `removals` record; other owners' photos are left alone."""
    from PIL import Image
    from mlc_pipeline.catalog import Found
    from mlc_pipeline.collect.rawfiles import keep_out_removed_owners
    from mlc_pipeline.config import parse_config
    from mlc_pipeline.curate.takedown import remove_photos
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **catalog_settings,
                        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}})

    def found(photo_id, owner):
        return Found("flickr", photo_id, "train", "cat", "cat", "http://x", "url_c", 8, 8, 4, "CC", owner, "Ann",
                     "t", None, None, "")
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([found("1", "o1")], "r")
    remove_photos(cfg, "owner asked", owner="Ann")           # by name: the owner id is what is kept
    img = cfg.data_dir / "raw" / "flickr" / "02" / "2.jpg"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(img)
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([found("2", "o1"), found("3", "o1"), found("4", "o2")], "r")
        c.set_status(c.get_by_photo("flickr", "2")["id"], "accepted", None, "r", "curate", file_path=str(img))
        removed = keep_out_removed_owners(c, "collect-run")
        rows = {p: c.get_by_photo("flickr", p) for p in "234"}
        records = {r["photo_id"]: r for r in c.removals()}
        assert keep_out_removed_owners(c, "again") == set()            # idempotent
    assert removed == {rows["2"]["id"], rows["3"]["id"]} and rows["4"]["status"] == "pending"
    assert all(rows[p]["status"] == "removed" and rows[p]["file_path"] is None and
               rows[p]["reason"] == "takedown:owner o1 was taken down (owner asked)" for p in "23")
    assert not img.exists() and json.loads(records["2"]["files_deleted"]) == [str(img)]
    assert records["3"]["selector"] == "owner:Ann" and records["3"]["run_id"] == "collect-run"


def test_an_image_host_that_answers_nothing_ends_the_collect_at_once_with_its_name(tmp_path):
    """A user's audit: an image host refusing every connection cost each photo its retries (3
    minutes, the first message after 100 s), then "queries exhausted" and exit 0. After
    HOST_DOWN_AFTER connection errors in a row from a host that never answered, its other photos fail
    at once, the run exits 1 naming the host and the cause, and they are tried again by the next run."""
    from helpers import free_port
    from mlc_pipeline.catalog import Catalog
    from mlc_pipeline.config import load_config
    dead = f"http://127.0.0.1:{free_port()}"              # nothing listens there
    with (tmp_path / "list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["url", "label"])
        w.writeheader()
        w.writerows([{"url": f"{dead}/{i}.jpg", "label": "cat"} for i in range(60)])
    (tmp_path / "project.yaml").write_text(
        "data_dir: data\n"
        "source: {kind: urls, csv: list.csv, retry: {attempts: 4, base_delay_s: 0.2, max_delay_s: 1}}\n"
        "classes:\n  cat: {queries: [cat], count: 60}\nother: {queries: [other], count: 1}\n")
    started = time.monotonic()
    res = mlc("collect", "-c", str(tmp_path / "project.yaml"))
    took = time.monotonic() - started
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"mlc: ImageHostDown: the image host {dead[7:]} (ConnectionError: connection refused) answered none " \
           "of 20 connections in a row" in res.stderr, res.stderr[-2000:]
    # they are recorded failed (below), not pending: the message says so (audit collect27 D9)
    assert "its photos, recorded failed (transient:host-down), are tried again then" in res.stderr and took < 60, took
    assert "stay pending" not in res.stderr
    with Catalog(load_config(tmp_path / "project.yaml").catalog_path) as c:
        reasons = Counter(r["reason"].split(":")[1] for r in c.candidates("status='failed'"))
    assert reasons["host-down"] > 0 and set(reasons) <= {"connectionerror", "host-down"}, reasons


def test_a_heic_or_avif_photo_is_said_to_be_one_never_not_an_image(tmp_path):
    """The realfiles27 audit (#7): an AVIF photo of a URL list (`Content-Type: image/avif`) was failed
    for good as `not-an-image:bad-magic`, and so was a HEIC one. AVIF, which this Pillow decodes, is
    downloaded as .avif and judged by curation (a format it does not train on: `unsupported-format:AVIF`);
    HEIC, which it does not, fails `unsupported-format:heic`. An HTML page named .jpg is still not an image."""
    site = tmp_path / "site"
    camera_folder(site)
    (site / "ants" / "page.jpg").write_text("<html><body>404</body></html>")
    files = {"photo.jpg": "cat", "IMG_0002.HEIC": "cat", "page.jpg": "cat", **({"phone.avif": "cat"} if AVIF else {})}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        (tmp_path / "list.csv").write_text("url,label\n" + "".join(f"{host}/ants/{n},{label}\n" for n, label in files.items()))
        (tmp_path / "p.yaml").write_text(
            "data_dir: data\nsource: {kind: urls, csv: list.csv}\nclasses: {cat: {queries: [cat], count: 4}}\n"
            "other: {queries: [other], count: 1}\n")
        collected = mlc("collect", "-c", str(tmp_path / "p.yaml"))
        assert collected.returncode == 0, collected.stderr[-3000:]
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(collected.stdout)["failed"] == {"unsupported-format:heic": 1, "not-an-image:bad-magic": 1}
    curated = mlc("curate", "-c", str(tmp_path / "p.yaml"))
    assert curated.returncode == 0, curated.stderr[-3000:]
    with Catalog(load_config(tmp_path / "p.yaml").catalog_path, readonly=True) as catalog:
        fate = {r["url"].rsplit("/", 1)[1]: (r["status"], r["reason"], r["verify_reason"]) for r in catalog.candidates()}
    assert fate["IMG_0002.HEIC"] == ("failed", "unsupported-format:heic", None)
    assert fate["page.jpg"] == ("failed", "not-an-image:bad-magic", None)
    assert fate["photo.jpg"][0] == "accepted"
    if AVIF:
        assert fate["phone.avif"][0] == "rejected" and fate["phone.avif"][2] == "unsupported-format:AVIF", fate
