"""`count` means usable images: collection tops sets up after curation rejects or removes images,
and says by how much a set fell short when its queries run dry.

A real-photo world served by the bundled Flickr-compatible server in folder mode: fixture photos
(symlinked, never copied into the repo), exact copies of some of them, and small thumbnails that
curation rejects as too small.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest
import yaml
from PIL import Image
from rich.console import Console

from helpers import FIXTURES

from mlc_pipeline import progress
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.sets import Shortfall, shortfalls, usable_needed, usable_rate
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.pipeline import collect_and_curate
from mlc_pipeline.config import load_config, parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.flickr_server import FlickrServer, WorldSpec
from mlc_pipeline.report.model import model_section
from mlc_pipeline.model.stage import other_set_warnings, train_version
from mlc_pipeline.pipeline import PipelineResult
from mlc_pipeline.rounds import record
from mlc_pipeline.report.inspect import inspect_main

FIXTURES = FIXTURES / "hymenoptera"
FAST_RETRY = {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}
GOOD_OTHER, THUMBS_OTHER, GOOD_POOL, THUMBS_POOL = 20, 25, 15, 10


def fixture_photos(kind: str) -> list[Path]:
    return sorted(p for p in (FIXTURES / kind).iterdir() if p.suffix.lower() == ".jpg")


def link(folder: Path, name: str, target: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(target)


def thumbnail(folder: Path, name: str, source: Path) -> None:
    """A real photo shrunk to 48 px: what a search returns as a tiny thumbnail."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
        im = im.convert("RGB")
        im.thumbnail((48, 48))
        im.save(folder / name, quality=85)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """ants: 50 photos + 6 byte-identical copies; other: 20 photos + 25 thumbnails; pool: 15 + 10;
    probe: 12 photos."""
    root = tmp_path_factory.mktemp("topup-world")
    ants, bees = fixture_photos("ants"), fixture_photos("bees")
    for p in ants[:50]:
        link(root / "ants", p.name, p)
    for p in ants[:6]:
        link(root / "ants", "copy-" + p.name, p)
    for p in bees[:GOOD_OTHER]:
        link(root / "other", p.name, p)
    for p in bees[20:20 + GOOD_POOL]:
        link(root / "pool", p.name, p)
    for p in bees[40:52]:
        link(root / "probe", p.name, p)
    thumbs = bees[100:100 + THUMBS_OTHER + THUMBS_POOL]
    for p in thumbs[:THUMBS_OTHER]:
        thumbnail(root / "other", "thumb-" + p.name, p)
    for p in thumbs[THUMBS_OTHER:]:
        thumbnail(root / "pool", "thumb-" + p.name, p)
    return root


QUERY_MAP = {"ants": "ants", "bugs": "other", "insects": "pool", "unknown": "probe"}


@pytest.fixture
def server(world, monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", "test-key-0123456789")
    monkeypatch.setenv("FLICKR_API_SECRET", "test-secret-9876543210")
    with FlickrServer(WorldSpec(kind="folder", folder=str(world), query_map=QUERY_MAP)) as srv:
        yield srv


def make_cfg(tmp_path, srv, ants=40, other=15, pool=10, probe=10, catalog_settings=None):
    return parse_config(raw_cfg(tmp_path, srv, ants, other, pool, probe, catalog_settings))


def raw_cfg(tmp_path, srv, ants=40, other=15, pool=10, probe=10, catalog_settings=None) -> dict:
    return {
        "data_dir": str(tmp_path / "data"), **(catalog_settings or {}),
        "source": {"kind": "flickr", "rest_url": srv.rest_url, "allowed_hosts": [srv.static_host],
                   "licenses": "any", "sizes": ["url_n", "url_s", "url_t", "url_sq"], "per_page": 10,
                   "per_host_concurrency": 4, "retry": FAST_RETRY},
        "classes": {"ants": {"queries": ["ants"], "count": ants}},
        "other": {"queries": ["bugs"], "count": other},
        "probe": {"queries": ["unknown"], "count": probe},
        "mine": {"pool": {"queries": ["insects"], "count": pool}},
        "curate": {"workers": 1},
    }


def accepted(cfg) -> dict[str, int]:
    with Catalog(cfg.catalog_path) as c:
        return {"ants": c.set_tally("train", "ants", "any")["accepted"], "other": c.set_tally("train", "other", "any")["accepted"],
                "probe": c.set_tally("probe", "other", "any")["accepted"], "pool": c.set_tally("pool", "other", "any")["accepted"]}


def files_fetched(cfg) -> int:
    with Catalog(cfg.catalog_path) as c:
        return sum(r["status"] in ("accepted", "rejected", "duplicate", "downloaded") for r in c.candidates())


def test_rounds_top_every_set_up_to_its_usable_count(tmp_path, server, catalog_settings):
    cfg = make_cfg(tmp_path, server, catalog_settings=catalog_settings)
    summary, curated = collect_and_curate(cfg, progress=False)
    got = accepted(cfg)
    # Every set has its count of usable images; a set may end a little over it (a top-up plans
    # downloads at the rate curation accepted the set so far), never under.
    for name, count in (("ants", 40), ("other", 15), ("probe", 10), ("pool", 10)):
        assert count <= got[name] <= count + 3, (name, got)
    assert summary.short == [] and summary.shortfall == {}
    assert summary.rounds >= 2, "thumbnails were rejected, so a second round had to top up"
    assert curated.rejected.get("too-small", 0) > 0
    with Catalog(cfg.catalog_path) as c:
        assert sum(c.set_tally("train", "other", "any")["rejected"].values()) > 0
        assert c.set_tally("train", "ants", "any")["duplicate"].get("exact-duplicate", 0) > 0   # copies, topped up too
    # Every file was fetched once: no photo in the catalog is downloaded again by a later round.
    assert server.stats()["image_requests"] == files_fetched(cfg)
    # Each round's search went on from where the last one stopped: no result page was asked for
    # twice (56 ants, 45 other, 25 pool and 12 probe results at 10 per page). Restarting the
    # searches every round made 27 calls here.
    assert server.stats()["api_calls_by_method"]["flickr.photos.search"] <= 6 + 5 + 3 + 2

    # A rerun needs nothing: no download, and the catalog is unchanged.
    before = server.stats()["image_requests"]
    again, _ = collect_and_curate(cfg, progress=False)
    assert again.downloaded == 0 and again.rounds == 1 and again.short == []
    assert server.stats()["image_requests"] == before
    assert accepted(cfg) == got


def test_a_renamed_class_counts_the_photos_its_query_found_before(tmp_path, server):
    """A user's audit: renaming a class (kite -> kites, the same query) counted 0 usable images for
    the new name, because the photos the query had found were curated under the old one until the
    next curate, so collect downloaded a whole second set; the build then labelled the old photos
    with both names. Now an accepted photo found under another class counts for it at once, and a
    version built after the rename holds the new name only."""
    from mlc_pipeline.dataset.build import build_dataset
    from mlc_pipeline.manifest import read_manifest
    raw = raw_cfg(tmp_path, server, ants=30)
    collect_and_curate(parse_config(raw), progress=False)
    before = server.stats()["image_requests"]
    raw["classes"] = {"formicidae": {"queries": ["ants"], "count": 30}}
    renamed = parse_config(raw)
    # Built before a collect: the old class is left out, and training says where the photos are
    # (it said "the catalog has no photo of it: its queries (ants) found none").
    from mlc_pipeline.config import ConfigError
    from mlc_pipeline.model.stage import check_every_class_trains
    early = build_dataset(renamed)
    assert set(early.left_out) == {"ants"}
    with pytest.raises(ConfigError, match=r"its queries \(ants\) found \d+ photos, filed under ants \(a renamed class\?\)"):
        check_every_class_trains(renamed, early.version, read_manifest(early.path / "manifest.csv"))
    summary, _ = collect_and_curate(renamed, progress=False)
    assert summary.downloaded == 0 and server.stats()["image_requests"] == before, summary
    with Catalog(renamed.catalog_path) as c:
        assert 30 <= c.set_tally("train", "formicidae", "any")["accepted"] <= 33
    version = build_dataset(renamed)
    labels = {r["labels"] for r in read_manifest(version.path / "manifest.csv")}
    assert labels == {"formicidae", ""}, labels


def test_short_sets_are_reported_with_their_numbers(tmp_path, server, capsys):
    # other asks for 30 but its query holds 20 photos and 25 thumbnails; the pool asks for 20 of 15.
    cfg = make_cfg(tmp_path, server, other=30, pool=20)
    summary, _ = collect_and_curate(cfg, progress=False)
    got = accepted(cfg)
    assert got["ants"] >= 40 and (got["other"], got["probe"], got["pool"]) == (GOOD_OTHER, 10, GOOD_POOL)
    other = f"other: {GOOD_OTHER} of 30 usable (queries exhausted; {THUMBS_OTHER} rejected: too-small {THUMBS_OTHER})"
    pool = f"mine pool: {GOOD_POOL} of 20 usable (queries exhausted; {THUMBS_POOL} rejected: too-small {THUMBS_POOL})"
    assert summary.short == [other, pool]
    assert summary.shortfall == {"train/other": 30 - GOOD_OTHER, "pool/other": 20 - GOOD_POOL}
    assert set(summary.exhausted) >= {"train/other", "pool/other"}
    assert server.stats()["image_requests"] == files_fetched(cfg)

    # mlc inspect: text, --json and --html all carry the same lines.
    args = argparse.Namespace(version=None, json=False, html=str(tmp_path / "r.html"))
    inspect_main(cfg, args)
    text = capsys.readouterr().out
    assert other in text and pool in text
    assert other in (tmp_path / "r.html").read_text()
    inspect_main(cfg, argparse.Namespace(version=None, json=True, html=None))
    out = json.loads(capsys.readouterr().out)
    assert [s["line"] for s in out["shortfall"]] == [other, pool]
    assert out["shortfall"][0]["usable"] == GOOD_OTHER and out["shortfall"][0]["count"] == 30

    # A rerun finds the queries still dry: nothing downloaded, the same report.
    before = server.stats()["image_requests"]
    again, _ = collect_and_curate(cfg, progress=False)
    assert again.downloaded == 0 and again.short == [other, pool]
    assert server.stats()["image_requests"] == before


def test_collect_alone_counts_known_rejections_and_converges(tmp_path, server, catalog_settings):
    """`mlc collect` then `mlc curate`, repeated: each collect asks only for what is still missing."""
    cfg = make_cfg(tmp_path, server, catalog_settings=catalog_settings)
    first = collect(cfg, progress=False)
    # Nothing curated yet, but each download is looked at as it lands (collect/precheck.py): the
    # thumbnails, too small for curation, are topped up within the pass; the ants' exact copies look
    # usable until curation removes them. (Until 2026-12-07 it downloaded 40 + 15 + 10 + 10.)
    assert first.downloaded > 40 + 15 + 10 + 10
    curate(cfg)
    short_after_one = accepted(cfg)
    assert short_after_one["other"] == 15 and short_after_one["pool"] == 10, short_after_one
    assert short_after_one["ants"] < 40, "the copies were removed: the next collect tops them up"
    with Catalog(cfg.catalog_path) as c:
        assert "queries exhausted" not in " ".join(s.why for s in shortfalls(cfg, c))
    for _ in range(4):
        if collect(cfg, progress=False).downloaded == 0:
            break
        curate(cfg)
    got = accepted(cfg)
    for name, count in (("ants", 40), ("other", 15), ("probe", 10), ("pool", 10)):
        assert got[name] >= count, (name, got)
    assert server.stats()["image_requests"] == files_fetched(cfg)


def test_mlc_collect_alone_reports_its_short_sets(tmp_path, server):
    """`mlc collect` (one pass, nothing curated) lists the sets it leaves short in `short`, one line
    each as `mlc run` does, for the same sets as `shortfall` (which counts downloads not curated yet at
    the set's usable rate); the terminal summary has a "short sets" row."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw_cfg(tmp_path, server, ants=5, other=5, pool=5, probe=15)))

    def mlc(*args: str) -> subprocess.CompletedProcess:     # the server's key is in this environment
        res = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", *args, "-c", str(config), "--no-progress"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    first = json.loads(mlc("collect").stdout)        # the probe query holds 12 photos, 15 are asked for
    assert first["shortfall"] == {"probe/other": 3} and "probe/other" in first["exhausted"]
    assert first["short"] == ["probe: 0 of 15 usable (queries exhausted; 12 downloads not curated yet: "
                              "run `mlc curate`)"]
    mlc("curate")
    again = json.loads(mlc("collect").stdout)
    assert again["shortfall"] == {"probe/other": 3} and again["short"] == ["probe: 12 of 15 usable (queries exhausted)"]
    console = Console(record=True, file=io.StringIO(), width=200)
    progress.configure(True)
    progress.use_console(console)
    try:
        collect(load_config(config))
    finally:
        progress.configure(None)
        progress.use_console(None)
    rows = [line.split() for line in console.export_text().splitlines()]
    assert "short sets probe: 12 of 15 usable (queries exhausted)".split() in rows, rows


# ------------------------------------------------------------------ the report and training sides

def test_usable_rate_plans_top_ups_and_lines_name_every_loss():
    tally = {"accepted": 151, "downloaded": 0, "pending": 0, "rejected": {"too-small": 140, "truncated": 9},
             "duplicate": {"near-duplicate": 12}, "failed": {"http-404": 2}, "skipped": {"no-allowed-size": 1}}
    assert usable_rate(tally) == pytest.approx(151 / 312)
    assert usable_needed(tally, 300) == 149
    assert usable_needed({**tally, "downloaded": 100}, 300) == pytest.approx(149 - 100 * 151 / 312)
    fresh = {"accepted": 0, "downloaded": 0, "pending": 0, "rejected": {}, "duplicate": {}, "failed": {}, "skipped": {}}
    assert usable_rate(fresh) == 1.0 and usable_needed(fresh, 300) == 300
    assert usable_rate({**fresh, "rejected": {"too-small": 50}}) == 0.2      # the floor: 5 downloads per image
    s = Shortfall("other", "train/other", 151, 300, "queries exhausted", tally["rejected"], 12,
                  {"http-404": 2, "no-allowed-size": 1}, 0)
    assert s.line() == ("other: 151 of 300 usable (queries exhausted; 149 rejected: too-small 140, truncated 9; "
                        "12 duplicates removed; 3 not downloaded: http-404 2, no-allowed-size 1)")


def test_artifact_summary_lists_short_sets_and_training_warnings():
    from mlc_pipeline.report.summary import summary_markdown

    line = "other: 151 of 300 usable (queries exhausted; 149 rejected: too-small 149)"
    run = {"status": "Completed", "config_path": "c.yaml",
           "collect": {"downloaded": 450, "found_new": 460, "api_calls": 9, "short": [line]},
           "models": [{"round": 0, "dataset_version": "v1", "bundle": "b",
                       "metrics": {"test": {"macro_f1": 0.9}, "warnings": ["'other' has 3 training images"]}}]}
    text = summary_markdown(run)
    assert f"- {line}" in text and "- 'other' has 3 training images" in text
    run["collect"]["short"], run["models"][0]["metrics"]["warnings"] = [], []
    assert "Short sets" not in summary_markdown(run) and "warnings" not in summary_markdown(run)


def manifest_rows(n_class: dict[str, int], n_other: int) -> list[dict]:
    rows = [{"labels": label, "split": "train"} for label, n in n_class.items() for _ in range(n)]
    rows += [{"labels": "", "split": "train"} for _ in range(n_other)]
    rows += [{"labels": "", "split": "valid"} for _ in range(500)]        # only the training split counts
    return rows


def test_other_set_warnings_rules():
    assert other_set_warnings(manifest_rows({"a": 100, "b": 60}, 80)) == []
    [few] = other_set_warnings(manifest_rows({"a": 100, "b": 60}, 79))
    assert few.startswith("'other' has 79 training images, fewer than the classes' mean of 80:")
    [close] = other_set_warnings(manifest_rows({"a": 132, "b": 133}, 132))    # said "... mean of 132" (curve23)
    assert close.startswith("'other' has 132 training images, fewer than the classes' mean of 132.5:")
    [none] = other_set_warnings(manifest_rows({"a": 10}, 0))
    assert none.startswith("no 'other' images in the training split")
    assert other_set_warnings([]) == []


def test_training_records_a_starved_other_set(tmp_path, caplog, monkeypatch):
    """A real (tiny) training run on a dataset whose "other" set is smaller than its classes."""
    from shapes import make_shapes_dataset

    # A hand-made manifest, never published by `mlc build`: no dataset.json or SHA256SUMS to verify
    # (tests/test_versions_verify.py covers that check).
    monkeypatch.setattr("mlc_pipeline.model.stage.verify_version", lambda folder: None)

    manifest = make_shapes_dataset(tmp_path / "shapes", n_per_kind=20)
    rows = list(csv.DictReader(open(manifest, newline="")))
    kept, others = [], 0
    for r in rows:                          # keep 2 training "other" images; every class keeps its 12+
        if r["split"] == "train" and not r["labels"]:
            others += 1
            if others > 2:
                continue
        kept.append(r)
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    cfg = parse_config({"data_dir": str(tmp_path / "data"),
                        "classes": {"red": {"queries": ["r"], "count": 1}, "blue": {"queries": ["b"], "count": 1}},
                        "other": {"queries": ["o"], "count": 1},
                        "train": {"epochs": 1, "image_size": 32, "batch_size": 16, "pretrained": "none",
                                  "compare_baselines": False}})
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.model.stage"):
        model = train_version(cfg, manifest.parent, tag="r0")
    expected = "'other' has 2 training images, fewer than the classes' mean of"
    assert any(expected in r.getMessage() for r in caplog.records)
    for name in ("bundle.json", "metrics.json"):
        warnings = json.loads((model.bundle_dir / name).read_text())["warnings"]
        assert warnings[0].startswith(expected), name
        # after it, at most the cap's own: a 1-epoch model can lose its F1 under the 5% cap
        assert all(w.startswith("train.max_unknown_accepted") for w in warnings[1:]) and len(warnings) <= 2, warnings
    result = PipelineResult(rounds=[record(0, "shapes", model.bundle_dir.name, model.metrics)],
                            shortfall=["other: 2 of 12 usable (queries exhausted)"])
    html = model_section(result, model.bundle_dir.parent)
    assert "short set after collection: other: 2 of 12 usable (queries exhausted)" in html and escape(expected) in html
    assert all(escape(w) in html for w in warnings)       # the report shows every training warning
