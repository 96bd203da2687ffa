"""collect/licences.py: a candidate left pending is downloaded only under a licence `source.licenses`
allows now (audit collect25 D2). Real collects against the bundled server; the first run is stopped
as Ctrl-C stops it, from the progress callback, with downloads still pending."""

from __future__ import annotations

import json

import pytest
import requests

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec

OPEN = [4, 5, 9, 10, 11]


@pytest.fixture(autouse=True)
def creds(monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", "test-key-0123456789")
    monkeypatch.setenv("FLICKR_API_SECRET", "test-secret-9876543210")


def make_cfg(tmp_path, srv, licenses, count=30):
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "flickr", "rest_url": srv.rest_url, "allowed_hosts": [srv.static_host], "per_page": 50,
                   "licenses": licenses, "per_host_concurrency": 2,
                   "retry": {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}},
        "classes": {"balloon": {"queries": ["balloon"], "count": count}, "kite": {"queries": ["kite"], "count": count}},
        "other": {"queries": ["landscape", "sky"], "count": count},
    })


def stopped_after(n: int):
    def on_progress(done: int, total: int) -> None:
        if done >= n:
            raise KeyboardInterrupt        # as Ctrl-C: what finished is recorded, the rest stays pending
    return on_progress


def by_photo(cfg) -> dict[str, dict]:
    with Catalog(cfg.catalog_path) as c:
        return {r["photo_id"]: r for r in c.candidates(source="flickr")}


def test_pending_rows_a_narrowed_setting_no_longer_allows_are_skipped_and_come_back_when_widened(tmp_path):
    with FlickrServer(WorldSpec(seed=1, scale=0.1)) as srv:
        with pytest.raises(KeyboardInterrupt):
            collect(make_cfg(tmp_path, srv, OPEN), progress=False, on_progress=stopped_after(5))
        before = by_photo(make_cfg(tmp_path, srv, OPEN))
        left = {p for p, r in before.items() if r["status"] == "pending" and r["license_id"] == 5}
        assert left, "no CC BY-SA photo left pending: a useless test"
        narrowed = make_cfg(tmp_path, srv, [4, 9, 10, 11])
        collect(narrowed, progress=False)
        after = by_photo(narrowed)
        assert {(after[p]["status"], after[p]["reason"]) for p in left} == {("skipped", "license-not-allowed")}
        assert not [r for r in after.values() if r["license_id"] == 5 and r["status"] == "downloaded"
                    and before[r["photo_id"]]["status"] != "downloaded"], "downloaded under a licence not allowed"
        widened = make_cfg(tmp_path, srv, OPEN, count=60)     # allowed again: they are candidates again
        collect(widened, progress=False)
        again = by_photo(widened)
    assert {again[p]["status"] for p in left} <= {"pending", "downloaded"}
    assert any(again[p]["status"] == "downloaded" for p in left)


def test_a_photo_whose_licence_changed_is_recorded_so_and_not_downloaded(tmp_path):
    """The owner moved photos left pending to All Rights Reserved; the rerun's search (a mirror that
    ignores the licence filter) reports licence 0: the rows learn it and are not downloaded."""
    with FlickrServer(WorldSpec(seed=1, scale=0.1), FaultSpec(license_ignored=1.0)) as srv:
        with pytest.raises(KeyboardInterrupt):
            collect(make_cfg(tmp_path, srv, OPEN), progress=False, on_progress=stopped_after(5))
        first = make_cfg(tmp_path, srv, OPEN)
        # a pending row whose file arrived before the stop was downloaded under its old licence: the next
        # collect adopts that file (rawfiles.reconcile_raw), as it keeps every finished download, and
        # nothing here re-asks the licence of a download (how often depends on timing: left out)
        arrived = {f.stem for f in first.layout.raw().rglob("*") if f.is_file() and not f.name.startswith(".")}
        pending = sorted(p for p, r in by_photo(first).items() if r["status"] == "pending" and p not in arrived)
        changed = pending[::2]
        assert changed, "nothing left pending: a useless test"
        for photo_id in changed:
            srv.world.by_id[photo_id].license = 0
        cfg = make_cfg(tmp_path, srv, OPEN, count=40)          # more wanted: it searches before downloading
        collect(cfg, progress=False)
        after = by_photo(cfg)
    assert {(after[p]["status"], after[p]["reason"], after[p]["license_id"], after[p]["license_name"])
            for p in changed} == {("skipped", "license-not-allowed", 0, "All Rights Reserved")}
    assert all(r["license_id"] in OPEN for r in after.values() if r["status"] == "downloaded")


def test_after_narrowing_collect_tops_up_the_images_the_build_would_leave_out(tmp_path):
    """A narrowed `source.licenses` leaves images of the old licences out of the build (dataset/build.py),
    but collect still counted them as usable, so it fetched nothing and the next version was short (the
    licbuild25 fix's leftover). They count as skipped `license-not-allowed` now, and collect tops up."""
    from mlc_pipeline.curate.stage import curate
    with FlickrServer(WorldSpec(seed=1, scale=0.1)) as srv:
        wide = make_cfg(tmp_path, srv, "any", count=12)
        collect(wide, progress=False)
        curate(wide)
        narrowed = make_cfg(tmp_path, srv, OPEN, count=12)
        with Catalog(narrowed.catalog_path) as c:
            everything, allowed = c.set_tally("train", "balloon", "any"), c.set_tally("train", "balloon", OPEN)
        assert allowed["accepted"] < 12 <= everything["accepted"], (allowed, everything)   # short once narrowed
        assert allowed["skipped"]["license-not-allowed"] == everything["accepted"] - allowed["accepted"]
        from flows.progress import downloads_wanted     # the flow's progress bar expects that top-up too
        assert downloads_wanted(narrowed) >= downloads_wanted(wide) + 12 - allowed["accepted"]
        collect(narrowed, progress=False)
        curate(narrowed)
        with Catalog(narrowed.catalog_path) as c:
            assert c.set_tally("train", "balloon", OPEN)["accepted"] >= 12


def without_licence(srv, queries, licenses: str = "") -> set[str]:
    """The photos whose search entries carry no licence id (`license` missing or empty), as the server
    answers those queries: asked over HTTP as collect asks, one page of 500 (the world is small)."""
    bare = set()
    for query in queries:
        reply = requests.get(srv.rest_url, timeout=30, params={
            "method": "flickr.photos.search", "api_key": "k", "text": query, "license": licenses,
            "extras": "license", "per_page": 500, "format": "json", "nojsoncallback": 1}).json()["photos"]
        assert int(reply["total"]) <= 500
        bare |= {p["id"] for p in reply["photo"] if p.get("license") in (None, "")}
    return bare


def test_a_result_without_a_licence_id_is_never_collected_or_published_under_a_licence_list(tmp_path, caplog):
    """shared/notes/flickr.md: `license` is an extra each search entry carries ("4"). A mirror that drops
    it, or sends it empty, gives a photo of unknown licence, which a licence list does not allow
    (catalog.labels.licence_allowed; the mutation27 audit: allowing None passed every test). Under the
    list it is no candidate, and the run's record counts it; under `any` it is collected, and a build
    under the list leaves it out, counted as "unknown"."""
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.build import build_dataset
    from mlc_pipeline.manifest import read_manifest, read_version_meta
    queries = ["balloon", "kite", "landscape", "sky"]
    with FlickrServer(WorldSpec(seed=1, scale=0.1), FaultSpec(entry_no_license=0.25)) as srv:
        bare = without_licence(srv, queries, ",".join(map(str, OPEN)))
        assert bare, "no photo without a licence: a useless test"
        caplog.set_level("WARNING")
        listed = make_cfg(tmp_path, srv, OPEN, count=60)           # more than found: every result is looked at
        summary = collect(listed, progress=False)
        rows = by_photo(listed)
        with Catalog(listed.catalog_path) as c:
            recorded = json.loads(c.runs()[0]["summary"])
        # collected under `any` into another data root, then built under the list
        wide = parse_config({**listed.model_dump(mode="json"), "data_dir": str(tmp_path / "wide"),
                             "source": {**listed.source.model_dump(mode="json"), "licenses": "any"}})
        collect(wide, progress=False)
        anyhow = {p for p, r in by_photo(wide).items() if r["license_id"] is None}
        assert anyhow and anyhow <= without_licence(srv, queries)
    assert not bare & set(rows), "a photo of unknown licence became a candidate under a licence list"
    assert rows and all(r["license_id"] in OPEN for r in rows.values())
    assert summary.search_skipped["entry-without-licence"] >= len(bare)
    assert recorded["search_skipped"] == summary.search_skipped
    said = [r.getMessage() for r in caplog.records if "without a licence id" in r.getMessage()]
    assert said and len(said) <= len(queries), said
    curate(wide)
    narrowed = parse_config({**wide.model_dump(mode="json"), "source": {**listed.source.model_dump(mode="json")}})
    with Catalog(narrowed.catalog_path) as c:
        kept = c.candidates(source="flickr", status="accepted")
        tally = c.set_tally("train", "balloon", OPEN)       # collect's count of what is usable under the list
    accepted = {r["photo_id"] for r in kept} & anyhow
    balloons = [r for r in kept if r["purpose"] == "train" and "balloon" in r["label"].split()]
    assert accepted and any(r["license_id"] is None for r in balloons), "nothing of unknown licence: a useless test"
    assert tally["skipped"]["license-not-allowed"] == sum(r["license_id"] not in OPEN for r in balloons)
    version = build_dataset(narrowed).path
    published = {r["photo_id"] for r in read_manifest(version / "manifest.csv")}
    assert not published & anyhow, "a photo of unknown licence was published under a licence list"
    assert read_version_meta(version)["left_out"]["licence-not-allowed"]["unknown"] == len(accepted)


def test_licence_ids_the_source_does_not_list_are_named(tmp_path, caplog):
    """`licenses: [4, 99]` narrowed the search to 4 without a word; `[98, 99]` collected nothing, exit 0
    (the dayone26 audit, D4). The ids are checked against the source's licenses.getInfo."""
    from mlc_pipeline.config import ConfigError
    with FlickrServer(WorldSpec(seed=1, scale=0.1)) as srv:
        caplog.set_level("WARNING")
        summary = collect(make_cfg(tmp_path, srv, [4, 99], count=5), progress=False)
        said = [r.getMessage() for r in caplog.records if "source.licenses: 99 is no licence id" in r.getMessage()]
        assert len(said) == 1 and "4 CC BY 2.0" in said[0] and "searching under the others" in said[0], \
            [r.getMessage() for r in caplog.records]
        assert summary.downloaded > 0
        with pytest.raises(ConfigError, match="source.licenses: 98, 99 are no licence id .*no photo could be collected"):
            collect(make_cfg(tmp_path, srv, [98, 99], count=5), progress=False)


@pytest.mark.parametrize("licenses", [OPEN, "any"])
def test_a_later_result_without_a_licence_id_never_erases_a_known_licence(tmp_path, licenses):
    """A photo found under its licence, left pending, then found again by a search whose entries carry no
    licence id (a mirror that drops the field): the row keeps the licence it is known under, is not skipped
    as unlicensed, and is downloaded under it (collect28; until then the entry's None overwrote the
    licence, and under a list the photo was `skipped: license-not-allowed`)."""
    world = WorldSpec(seed=1, scale=0.1)
    with FlickrServer(world) as srv:
        port = srv.port
        with pytest.raises(KeyboardInterrupt):
            collect(make_cfg(tmp_path, srv, OPEN), progress=False, on_progress=stopped_after(5))
        before = by_photo(make_cfg(tmp_path, srv, OPEN))
    pending = {p: r["license_id"] for p, r in before.items() if r["status"] == "pending"}
    assert pending and all(lic in OPEN for lic in pending.values()), "nothing left pending: a useless test"
    with FlickrServer(world, FaultSpec(entry_no_license=1.0), port=port) as bare:
        cfg = make_cfg(tmp_path, bare, licenses, count=40)        # more wanted: it searches before downloading
        collect(cfg, progress=False)
        assert bare.stats()["faults_injected"].get("entry_no_license"), "no entry lost its licence: a useless test"
        after = by_photo(cfg)
    assert {p: after[p]["license_id"] for p in before} == {p: r["license_id"] for p, r in before.items()}
    assert all(after[p]["license_name"] == r["license_name"] for p, r in before.items())
    assert not [p for p in pending if after[p]["status"] == "skipped"], "a known licence was taken as unknown"
    assert any(after[p]["status"] == "downloaded" for p in pending)


def bare_replies_for(query: str, others: list[str]) -> FaultSpec:
    """A FaultSpec whose `reply_no_license` takes the licence out of every entry of `query`'s replies and
    of no reply to `others` (the fault is drawn per search text, by its seed)."""
    from mlc_pipeline.flickr_server.faults import FaultPlan
    for seed in range(200):
        spec = FaultSpec(reply_no_license=0.5, seed=seed)
        plan = FaultPlan(spec)
        if plan.reply_without_license(query) and not any(plan.reply_without_license(q) for q in others):
            return spec
    raise AssertionError(f"no seed leaves only {query!r} bare")


def found_by(srv, query: str) -> set[str]:
    """The photos a search for `query` under the open licences returns (one page of 500, over HTTP)."""
    reply = requests.get(srv.rest_url, timeout=30, params={
        "method": "flickr.photos.search", "api_key": "k", "text": query, "license": ",".join(map(str, OPEN)),
        "extras": "license", "per_page": 500, "format": "json", "nojsoncallback": 1}).json()["photos"]
    assert int(reply["total"]) <= 500
    return {p["id"] for p in reply["photo"]}


def test_a_photo_known_under_an_allowed_licence_takes_the_label_of_a_later_query_whose_entries_lack_one(tmp_path):
    """A photo of a balloon and a kite, found by the balloon query under an open licence, found again in
    the same run by the kite query on a mirror whose replies to that query carry no licence id (fault
    `reply_no_license`): its licence is known and allowed, so it is a re-find like any other and takes
    the label kite (labels31: until then the missing id made it no candidate for kite, and the photo lost
    its second label). A kite photo the catalog never saw has an unknown licence and stays refused."""
    queries = ["balloon", "kite", "landscape", "sky"]
    with FlickrServer(WorldSpec(seed=1, scale=0.1), bare_replies_for("kite", ["balloon", "landscape", "sky"])) as srv:
        kites, balloons = found_by(srv, "kite"), found_by(srv, "balloon")
        assert without_licence(srv, queries, ",".join(map(str, OPEN))) == kites, "the kite replies kept licences"
        cfg = make_cfg(tmp_path, srv, OPEN, count=60)      # more than found: every result is looked at
        summary = collect(cfg, progress=False)
        rows = by_photo(cfg)
    both = kites & balloons & set(rows)
    assert both, "no photo of a balloon and a kite found by the balloon query: a useless test"
    assert {p: rows[p]["label"] for p in both} == {p: "balloon kite" for p in both}
    assert all("kite" in json.loads(rows[p]["queries"]) for p in both)
    assert all(rows[p]["license_id"] in OPEN for p in both)
    assert not (kites - balloons) & set(rows), "a photo of unknown licence never seen became a candidate"
    assert summary.search_skipped["entry-without-licence"] == len(kites - balloons)
