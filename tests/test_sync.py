"""The catalog snapshot on an object-store data root (sync.py): a change is published even when it keeps
the file's size, and another machine's same-size publish is never overwritten. On a file:// store (no
ETag at all) and on a real S3-compatible server (moto, on loopback)."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlc_pipeline import sync
from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config
from mlc_pipeline.objectstore import ObjectStoreError, store_of
from mlc_pipeline.storemodels import store_pointer

CLASSES = {"classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}}


def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "train", "cat", "cat", "http://x/a.jpg", "url_c", 1, 1, 4, "CC", "o", "o", "t",
                 None, None, "")


def machine(tmp_path: Path, store_url: tuple[str, dict], name: str):
    url, options = store_url
    return parse_config({"data_dir": url, "cache_dir": str(tmp_path / name), "storage_options": options, **CLASSES})


def store_status(cfg, tmp_path: Path, photo_id: str) -> str:
    """The status the store's catalog object holds, read from a downloaded copy."""
    copy = tmp_path / f"downloaded-{photo_id}.sqlite"
    store_of(cfg).download([(sync.CATALOG_OBJECT, copy)])
    with sqlite3.connect(copy) as db:
        return db.execute("SELECT status FROM candidates WHERE photo_id=?", (photo_id,)).fetchone()[0]


def set_status(cfg, photo_id: str, status: str) -> None:
    with Catalog(cfg.catalog_path) as c:
        c.set_status(c.get_by_photo("flickr", photo_id)["id"], status, f"takedown:{status}", "r2", "remove",
                     file_path=None)


def test_a_status_change_that_keeps_the_size_is_published(tmp_path, store_url):
    cfg = machine(tmp_path, store_url, "cache-a")
    store = store_of(cfg)
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([found("101")], "run")
    sync.push_catalog(store, cfg)
    size = store.info(sync.CATALOG_OBJECT)["size"]
    set_status(cfg, "101", "removed")           # `mlc remove`: a status update, the same page count
    sync.push_catalog(store, cfg)
    assert store.info(sync.CATALOG_OBJECT)["size"] == size        # what made it look unchanged
    assert store_status(cfg, tmp_path, "101") == "removed"
    uploads = []
    real = type(store).upload
    store.upload = lambda pairs: uploads.extend(pairs) or real(store, pairs)
    sync.push_catalog(store, cfg)               # nothing changed since: nothing uploaded
    assert uploads == []


def two_caches_b_published(tmp_path, store_url):
    """Caches A and B of one store, both holding 101 and 102; B has since published 101 removed."""
    a, b = machine(tmp_path, store_url, "cache-a"), machine(tmp_path, store_url, "cache-b")
    with Catalog(a.catalog_path) as c:
        c.upsert_found([found("101"), found("102")], "run")
    sync.push_catalog(store_of(a), a)
    sync.pull_catalog(store_of(b), b)
    set_status(b, "101", "removed")
    sync.push_catalog(store_of(b), b)
    return a, b


def test_another_machines_same_size_publish_is_not_overwritten(tmp_path, store_url):
    a, b = two_caches_b_published(tmp_path, store_url)     # B publishes a change of the same size
    set_status(a, "102", "removed")             # A, not having fetched it, changed another row
    with pytest.raises(ObjectStoreError, match="changed since this cache"):
        sync.push_catalog(store_of(a), a)
    assert store_status(a, tmp_path, "101") == "removed"     # B's work is still there
    assert sync.pull_catalog(store_of(a), a)                 # and the next command on A fetches it


KILLED_AFTER_THE_CATALOG_UPLOAD = """
import json, os, signal, sys
from mlc_pipeline import sync
from mlc_pipeline.config import parse_config
from mlc_pipeline.objectstore import store_of
real = sync.write_state
def write_state(cfg, **changes):
    if "catalog" in changes:            # the upload is done: killed before it is recorded
        os.kill(os.getpid(), signal.SIGKILL)
    real(cfg, **changes)
sync.write_state = write_state
cfg = parse_config(json.loads(sys.argv[1]))
sync.push_catalog(store_of(cfg), cfg)
"""


def test_a_publish_killed_after_the_catalog_upload_is_no_unpublished_change(tmp_path, store_url, caplog):
    """kill -9 between the catalog's upload and the cache's record of it: the next command warned that
    the cached catalog "has changes never published" and kept a copy identical to the store's (one
    more at each repeat). The store's object is compared with what this cache uploaded: no warning,
    no copy, and the cache publishes on from there."""
    url, options = store_url
    settings = {"data_dir": url, "cache_dir": str(tmp_path / "cache-a"), "storage_options": options, **CLASSES}
    cfg = parse_config(settings)
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([found("101"), found("102")], "run")
    sync.push_catalog(store_of(cfg), cfg)
    set_status(cfg, "101", "removed")
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_CATALOG_UPLOAD, json.dumps(settings)])
    assert killed.returncode == -signal.SIGKILL
    assert store_status(cfg, tmp_path, "101") == "removed"       # the upload happened
    with caplog.at_level(logging.INFO, logger="mlc_pipeline.sync"):
        sync.pull_catalog(store_of(cfg), cfg)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "interrupted after the catalog upload" in caplog.text
    assert not list(cfg.data_dir.glob("catalog.unsynced-*")) and not list(cfg.data_dir.glob(".catalog.sqlite.tmp-*"))
    set_status(cfg, "102", "removed")       # and this cache publishes on: no conflict with itself
    sync.push_catalog(store_of(cfg), cfg)
    assert store_status(cfg, tmp_path, "102") == "removed"


def test_a_cached_change_the_store_lacks_is_still_kept_aside(tmp_path, store_url, caplog):
    """The other side of the comparison: a change made here that the store never got (another machine
    published meanwhile) is still set aside, with the warning."""
    a, b = two_caches_b_published(tmp_path, store_url)
    set_status(a, "102", "removed")         # never published: B's publish came first
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.sync"):
        assert sync.pull_catalog(store_of(a), a)
    assert "has changes never published" in caplog.text
    aside, = a.data_dir.glob("catalog.unsynced-*.sqlite")
    with sqlite3.connect(aside) as db:
        assert db.execute("SELECT status FROM candidates WHERE photo_id='102'").fetchone()[0] == "removed"


def test_a_report_rewritten_with_the_same_size_is_published(tmp_path, store_url):
    cfg = machine(tmp_path, store_url, "cache-a")
    store = store_of(cfg)
    report = cfg.layout.reports / "latest.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"shipped": "model-a"}')
    assert sync.push_reports(store, cfg) == 1
    report.write_text('{"shipped": "model-b"}')
    assert sync.push_reports(store, cfg) == 1
    assert store.read_text("reports/latest.json") == '{"shipped": "model-b"}'
    assert sync.push_reports(store, cfg) == 0


def store_named(cfg, tmp_path: Path) -> set[str]:
    """The files the store's catalog names."""
    copy = tmp_path / "named.sqlite"
    store_of(cfg).download([(sync.CATALOG_OBJECT, copy)])
    with sqlite3.connect(copy) as db:
        return {r[0] for r in db.execute("SELECT file_path FROM candidates WHERE file_path IS NOT NULL")}


@pytest.mark.parametrize("killed_at", ["files", "catalog", "deletions"])
def test_a_publish_killed_midway_leaves_no_name_without_its_object(tmp_path, store_url, killed_at, monkeypatch):
    """New files go up before the catalog that names them, deletions after it: wherever a publish is
    killed, the store's catalog names only objects that are there, and the rerun finishes the job."""
    cfg = machine(tmp_path, store_url, "cache-a")
    old, new = cfg.data_dir / "raw/flickr/101.jpg", cfg.data_dir / "raw/flickr/102.jpg"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old photo")
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([found("101"), found("102")], "run")
        c.set_status(c.get_by_photo("flickr", "101")["id"], "downloaded", None, "run", "download", file_path=str(old))
    sync.publish(cfg)
    new.write_bytes(b"new photo")
    with Catalog(cfg.catalog_path) as c:     # one photo added, the other taken down
        c.set_status(c.get_by_photo("flickr", "102")["id"], "downloaded", None, "r2", "download", file_path=str(new))
    set_status(cfg, "101", "removed")
    Store = type(store_of(cfg))
    real_upload, real_delete = Store.upload, Store.delete

    def upload(self, pairs):
        if pairs and (pairs[0][1] == sync.CATALOG_OBJECT) == (killed_at == "catalog") and killed_at != "deletions":
            raise KeyboardInterrupt
        return real_upload(self, pairs)

    def delete(self, rels):
        if rels and killed_at == "deletions":
            raise KeyboardInterrupt
        return real_delete(self, rels)
    monkeypatch.setattr(Store, "upload", upload)
    monkeypatch.setattr(Store, "delete", delete)
    with pytest.raises(KeyboardInterrupt):
        sync.publish(cfg)
    assert store_named(cfg, tmp_path) <= set(sync.file_listing(store_of(cfg)))
    monkeypatch.setattr(Store, "upload", real_upload)
    monkeypatch.setattr(Store, "delete", real_delete)
    sync.publish(cfg)
    assert set(sync.file_listing(store_of(cfg))) == store_named(cfg, tmp_path) == {"raw/flickr/102.jpg"}


def _bundle(cfg, name: str) -> Path:
    folder = cfg.layout.models / name
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text('{"classes": ["cat"]}')
    (folder / "export.pkl").write_bytes(bytes(range(256)) * 4096)       # 1 MiB of weights
    return folder


def test_a_published_model_is_not_read_back_at_every_publish(tmp_path, store_url, monkeypatch):
    """Every publish compared every file of every published bundle byte for byte, which on a store
    without MD5 ETags (file://, GCS, Azure, multipart S3) downloads the weights again after each stage.
    Only what `mlc mine` rewrites is compared now, against the hash this cache last published."""
    cfg = machine(tmp_path, store_url, "cache-a")
    store = store_of(cfg)
    bundle = _bundle(cfg, "m1")
    (cfg.layout.models / "LATEST").symlink_to("m1")          # a pointer made a link: its name is published
    assert sync.push_models(store, cfg) == ["m1"]
    assert store_pointer(store) == "m1" and "models/LATEST/bundle.json" not in store.listing("models")
    reads = []
    real = store.sha256
    monkeypatch.setattr(store, "sha256", lambda rel: reads.append(rel) or real(rel))
    for name in ("mined.csv", "mined-r1.csv"):        # a round's record is rewritten by a rerun of the round
        (bundle / name).write_text("candidate_id,decision\n1,added\n")
    uploads = []
    upload = store.upload
    monkeypatch.setattr(store, "upload", lambda pairs: uploads.append(sorted(r for _, r in pairs)) or upload(pairs))
    assert sync.push_models(store, cfg) == []
    for name in ("mined.csv", "mined-r1.csv"):                               # the same size, other bytes
        (bundle / name).write_text("candidate_id,decision\n2,added\n")
    sync.push_models(store, cfg)
    sync.push_models(store, cfg)                                             # nothing changed
    assert [u for u in uploads if u] == [["models/m1/mined-r1.csv", "models/m1/mined.csv"]] * 2
    assert store.read_text("models/m1/mined.csv") == store.read_text("models/m1/mined-r1.csv") == \
        "candidate_id,decision\n2,added\n"
    assert not [r for r in reads if r.endswith("export.pkl")]


# --- two machines (caches) sharing one PostgreSQL catalog and one store ---------------------------

def shared_machine(tmp_path: Path, store_url: tuple[str, dict], name: str, pg_url: str):
    url, options = store_url
    return parse_config({"data_dir": url, "cache_dir": str(tmp_path / name), "storage_options": options,
                         "catalog": {"url": pg_url}, **CLASSES})


def downloaded(cfg, photo_id: str, data: bytes, run_id: str = "run") -> str:
    """A photo downloaded into `cfg`'s cache where collect puts it; its path relative to the data root."""
    from mlc_pipeline.collect.rawfiles import final_path
    path = final_path(cfg.layout.raw("flickr"), photo_id, "jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([found(photo_id)], run_id)
        c.set_status(c.get_by_photo("flickr", photo_id)["id"], "downloaded", None, run_id, "download",
                     file_path=str(path))
    return path.relative_to(cfg.data_dir).as_posix()


def test_a_takedown_on_one_machine_leaves_no_copy_in_another_machines_cache(tmp_path, store_url, pg_url):
    """`mlc remove` on A deleted A's copy and, at A's publish, the object; B's cache kept its copy
    through its next fetch and publish. A fetch (or publish) now drops the cached files of photos the
    catalog records as taken down, and no publish uploads them again."""
    from mlc_pipeline.curate.takedown import remove_photos
    a, b = (shared_machine(tmp_path, store_url, n, pg_url) for n in ("cache-a", "cache-b"))
    gone, kept = downloaded(a, "4646", b"taken down"), downloaded(a, "4747", b"kept")
    quarantined = b.data_dir / "quarantine/too-small" / gone.split("/", 1)[1]    # a copy in B's quarantine too
    sync.publish(a)
    sync.pull(b, "collect")
    assert (b.data_dir / gone).is_file() and (b.data_dir / kept).is_file()
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(b"taken down")
    remove_photos(a, "owner asked", photo_id="4646")
    sync.publish(a)
    assert gone not in sync.file_listing(store_of(a))
    sync.pull(b, "collect")
    assert not (b.data_dir / gone).exists() and not quarantined.exists()
    assert (b.data_dir / kept).is_file()
    (b.data_dir / gone).write_bytes(b"taken down")     # a command on B that wrote it again meanwhile
    sync.publish(b)
    assert gone not in sync.file_listing(store_of(b)) and not (b.data_dir / gone).exists()
    assert kept in sync.file_listing(store_of(b))


def test_a_file_that_leaves_the_store_between_listing_and_download_is_skipped(tmp_path, store_url, pg_url,
                                                                              monkeypatch):
    """Two curates at once: A's publish moved an object B had just listed, and B's fetch failed with
    "FileNotFoundError: The specified key does not exist." (no key named). The fetch now lists again
    and fetches the rest; an object that keeps vanishing is named in the one line that stops it."""
    a, b = (shared_machine(tmp_path, store_url, n, pg_url) for n in ("cache-a", "cache-b"))
    rels = [downloaded(a, pid, f"photo {pid}".encode()) for pid in ("5101", "5202", "5303", "5404")]
    sync.publish(a)
    Store = type(store_of(a))
    real = Store.download
    vanishing = list(rels[:1])

    def download(self, pairs):          # A's publish deletes an object right after B listed it
        if vanishing and any(k == vanishing[0] for k, _ in pairs):
            self.delete([vanishing.pop(0)])
        return real(self, pairs)
    monkeypatch.setattr(Store, "download", download)
    sync.pull(b, "collect")
    assert not (b.data_dir / rels[0]).exists()
    assert all((b.data_dir / r).read_bytes() == (a.data_dir / r).read_bytes() for r in rels[1:])
    for r in rels[1:]:
        (b.data_dir / r).unlink()
    vanishing.extend(rels[1:])          # one more at every try: the fetch gives up, naming the key
    with pytest.raises(ObjectStoreError, match=r"raw/flickr/\d\d/\d+\.jpg .*vanished while being fetched"):
        sync.pull(b, "collect")


def test_a_cached_version_with_an_unreadable_dataset_json_is_reported_not_a_traceback(tmp_path, store_url):
    # push_versions and pull_version read dataset.json themselves (before any verification): a
    # damaged one was a JSONDecodeError out of `publish`, after the stage's work was done.
    cfg = machine(tmp_path, store_url, "cache-a")
    folder = cfg.layout.version("v1")
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text('{"name": ')
    with pytest.raises(ObjectStoreError, match=r"v1 is damaged \(dataset.json is unreadable \(.*\)\): not published"):
        sync.push_versions(store_of(cfg), cfg)


@pytest.mark.parametrize("meta", ["[1, 2]", None])
def test_a_cached_version_whose_dataset_json_is_no_object_or_missing_gets_the_same_answer(tmp_path, meta):
    """The cache's dataset.json is read by manifest.read_version_meta: one that is not an object (it
    lacked the way out) or missing says what is wrong and what to do, as an unreadable one does."""
    from mlc_pipeline.storeversions import version_meta
    folder = tmp_path / "datasets" / "default" / "v1"
    folder.mkdir(parents=True)
    if meta is not None:
        (folder / "dataset.json").write_text(meta)
    problem = "is not a JSON object" if meta else "is missing"
    with pytest.raises(ObjectStoreError, match=rf"v1 is damaged \(dataset.json {problem}\): not published nor "
                                               r"compared; move it aside \(or `mlc build --repair` for the latest\)"):
        version_meta(folder)


def test_a_build_from_a_fresh_cache_reads_every_published_versions_manifest_not_only_the_latests(tmp_path, store_url):
    # Review29, finding 6: `mlc build` pulled the latest version alone, so a picture absent from it kept
    # no split from an earlier version in a fresh cache, and two machines split one catalog differently.
    # Now it fetches every version's listing (manifest.csv, dataset.json), never its images.
    from mlc_pipeline.dataset.splits import published_splits
    from mlc_pipeline.manifest import write_manifest
    a, b = machine(tmp_path, store_url, "cache-a"), machine(tmp_path, store_url, "cache-b")
    for n, photo in ((1, "old"), (2, "new")):
        folder = a.layout.version(f"v{n}")
        (folder / "images" / "cat").mkdir(parents=True)
        (folder / "images" / "cat" / f"flickr-{photo}.jpg").write_bytes(b"jpeg")
        write_manifest(folder / "manifest.csv", [{"path": f"images/cat/flickr-{photo}.jpg", "labels": "cat",
                                                  "split": "test", "source": "flickr", "photo_id": photo}])
        (folder / "dataset.json").write_text(json.dumps({"name": "default", "version": f"v{n}", "fingerprint": photo}))
    assert sync.push_versions(store_of(a), a) == ["v1", "v2"]
    sync.pull(b, "build")
    listing = b.layout.version_listing("v1")
    assert b.layout.version("v2").is_dir() and not b.layout.version("v1").exists()
    assert sorted(p.name for p in listing.iterdir()) == ["dataset.json", "manifest.csv"]
    assert published_splits(b.layout.datasets, listing.parent) == {("flickr", "old"): {"test": 1},
                                                                   ("flickr", "new"): {"test": 2}}
