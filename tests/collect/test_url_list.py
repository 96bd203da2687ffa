"""A URL list as the source (issue 17, missing item 5): an img2dataset-style CSV of real photos
served over real HTTP on loopback, collected, curated and published by the `mlc` command like Flickr
results. Bad rows are reported one line each and skipped; a 404 is a recorded download failure."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
import csv

import pytest

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
    return subprocess.run([*MLC, *args, "--no-progress"], env=ENV, capture_output=True, text=True, timeout=300)


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
        assert r["source_file"] == f"https://example.org/photos/{i}"
        assert r["sha256"] and (PETS / "cat" / name).stat().st_size > 0
    assert rows[f"{host}/dog/{dogs[0]}"]["license"] == ""           # not given: left empty, not invented
    assert f"{host}/cat/{cats[0]}" in (version / "ATTRIBUTION.md").read_text()


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
