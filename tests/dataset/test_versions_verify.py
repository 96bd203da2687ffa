"""Published versions are verified; the catalog's paths survive a moved or copied data root;
bundle names are unique within a second. Real `mlc` processes on a small root of real photos."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from mlc_pipeline.catalog import SCHEMA_VERSION, Catalog
from mlc_pipeline.config import load_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.verify import VersionDamaged, verify_version
from mlc_pipeline.model.stage import bundle_name
from mlc_pipeline.manifest import read_manifest_frame
from storage_world import curated_root, last_line, mlc, write_config


@pytest.fixture
def built(tmp_path_factory):
    """A fresh copy of a built data root per test (the tests damage it)."""
    base = tmp_path_factory.getbasetemp() / "versions-base"
    if not base.exists():
        cfg_path = curated_root(base)
        build_dataset(load_config(cfg_path))
    work = tmp_path_factory.mktemp("versions")
    shutil.copytree(base / "data", work / "data", symlinks=True)
    cfg_path = write_config(work / "cfg.yaml", work / "data", base / "world")
    return cfg_path, work / "data" / "datasets" / "default" / "v1"


def rewrite_manifest(folder: Path, change) -> None:
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    change(rows)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def first_row(folder: Path, split: str | None = None) -> dict:
    with open(folder / "manifest.csv", newline="") as f:
        return next(r for r in csv.DictReader(f) if split is None or r["split"] == split)


def test_an_intact_version_verifies(built):
    _, v1 = built
    rows = verify_version(v1)
    assert rows and (v1 / "SHA256SUMS").read_text().count("\n") == len(rows)


def test_a_deleted_file_stops_build_train_and_inspect_and_repair_rebuilds(built):
    cfg, v1 = built
    gone = first_row(v1, "test")["path"]          # a test file: train used to exit 0 scoring fewer images
    (v1 / gone).unlink()
    for command in (["build"], ["train"], ["inspect"]):
        res = mlc(*command, "-c", str(cfg))
        assert res.returncode == 3, (command, res.stderr[-2000:])
        line = last_line(res.stderr)
        assert line.startswith("mlc: dataset default v1 is damaged") and gone in line and "--repair" in line, line
        assert "Traceback" not in res.stderr
    assert "Dataset default v1" in mlc("inspect", "-c", str(cfg)).stdout      # the summary still shows
    res = mlc("build", "--repair", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "dataset default v2: published" in res.stdout
    v2 = v1.parent / "v2"
    assert len(verify_version(v2)) == len(verify_version_rows_of(v2))
    assert not (v1 / gone).exists()               # the damaged version is kept as it is, for the record
    assert mlc("build", "-c", str(cfg)).returncode == 0


def test_a_damaged_older_version_points_to_the_intact_latest_not_to_repair(built):
    """`mlc build --repair` republishes only a damaged latest version; versions are never rebuilt. So for
    a damaged v1 under an intact v2, the answer names v2, not --repair (which would say "unchanged")."""
    cfg, v1 = built
    gone = first_row(v1, "test")["path"]
    (v1 / gone).unlink()
    other = ["--set", "build.max_side=64"]                    # other parameters: v2 is a new version
    assert "v2: published" in mlc("build", "-c", str(cfg), *other).stdout
    for command in (["inspect", "--version", "v1"], ["export", "v1", "--format", "hf"], ["train", "--version", "v1"]):
        res = mlc(*command, "-c", str(cfg), *other)
        line = last_line(res.stderr)
        assert res.returncode == 3 and "Traceback" not in res.stderr, (command, res.stderr[-2000:])
        assert line.startswith("mlc: dataset default v1 is damaged") and gone in line, line
        assert "run `mlc build --repair" not in line and "the latest, v2, is intact" in line, line
    res = mlc("build", "--repair", "-c", str(cfg), *other)
    assert res.returncode == 0 and "v2: unchanged" in res.stdout, res.stderr[-2000:]    # as the answer says
    assert not (v1.parent / "v3").exists() and not (v1.parents[2] / "models").exists()
    (v1.parent / "v2" / first_row(v1.parent / "v2")["path"]).unlink()     # the latest damaged too: repair it
    with pytest.raises(VersionDamaged, match=r"the latest, v2, is damaged too: run `mlc build --repair"):
        verify_version(v1)


def test_a_latest_version_missing_its_dataset_json_is_damaged_not_skipped(built):
    """v2 without dataset.json (LATEST and the link still say v2) used to vanish: inspect showed v1,
    `export latest` exported v1 with exit 0, and a build published v3 diffed against v1. It is the
    latest version, damaged, like one missing its manifest.csv."""
    cfg, v1 = built
    other = ["--set", "build.max_side=64"]
    assert "v2: published" in mlc("build", "-c", str(cfg), *other).stdout
    v2 = v1.parent / "v2"
    (v2 / "dataset.json").unlink()
    damaged = "mlc: dataset default v2 is damaged: dataset.json is missing; run `mlc build --repair"
    for command in (["inspect"], ["inspect", "--version", "v2"], ["export", "latest", "--format", "hf"],
                    ["build", *other], ["train"]):
        res = mlc(*command, "-c", str(cfg))
        assert res.returncode == 3 and "Traceback" not in res.stderr, (command, res.stderr[-2000:])
        assert last_line(res.stderr).startswith(damaged), (command, last_line(res.stderr))
    assert not (v1.parent / "v3").exists() and not (v1.parents[2] / "exports").exists()
    res = mlc("build", "--repair", "-c", str(cfg), *other)
    assert res.returncode == 0 and "v3: published" in res.stdout, res.stderr[-2000:]
    assert json.loads((v1.parent / "v3" / "dataset.json").read_text())["previous"] == "v2"


@pytest.fixture
def two_versions(built):
    """The built root with a v2 (other parameters) after v1: v2 has a previous version to diff against."""
    cfg, v1 = built
    assert "v2: published" in mlc("build", "-c", str(cfg), "--set", "build.max_side=64").stdout
    return cfg, v1, v1.parent / "v2"


@pytest.mark.parametrize("damage, message", [
    ("dataset.json", "dataset.json is unreadable (Expecting"),           # was: mlc: JSONDecodeError, exit 1
    ("manifest.csv", "manifest.csv line"),                                # was: mlc: AttributeError, exit 1
    ("counts", "dataset.json lacks its counts"),                          # was: mlc: KeyError, exit 1
])
def test_inspect_reports_an_unreadable_latest_version_as_damaged(two_versions, damage, message):
    cfg, _, v2 = two_versions
    if damage == "dataset.json":
        (v2 / "dataset.json").write_text('{"name": ')
    elif damage == "manifest.csv":
        with open(v2 / "manifest.csv", "a") as f:
            f.write('"images/ants/x.jpg,ants,train\n')                   # an unclosed quote
    else:
        meta = json.loads((v2 / "dataset.json").read_text())
        del meta["counts"]
        (v2 / "dataset.json").write_text(json.dumps(meta))
    for command in (["inspect"], ["inspect", "--version", "v2"], ["inspect", "--json"],
                    ["inspect", "--html", str(v2.parents[2] / "report.html")]):
        res = mlc(*command, "-c", str(cfg))
        line = last_line(res.stderr)
        assert res.returncode == 3 and "Traceback" not in res.stderr, (command, res.stderr[-2000:])
        assert line.startswith("mlc: dataset default v2 is damaged: ") and message in line, (command, line)
        assert "--repair" in line and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_damaged_previous_version_leaves_out_only_the_diff(two_versions):
    """v2 intact, v1 (its previous) unreadable: inspect shows v2, says why the changes are not shown."""
    cfg, v1, _ = two_versions
    with open(v1 / "manifest.csv", "a") as f:
        f.write('"images/ants/x.jpg,ants,train\n')
    res = mlc("inspect", "-c", str(cfg))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Dataset default v2" in res.stdout and "Changes since v1" not in res.stdout
    assert "changes since v1 not shown: dataset default v1 is damaged: manifest.csv line" in res.stderr


def test_build_and_fetch_folders_are_never_the_latest_version(built):
    """Only a `vN` folder is a version: a build's own folder (`.build-v1-<pid>-<id>`, a live build's
    or a killed one's) or a fetch's (`.fetch-v2-...`) lacks dataset.json and is not the latest."""
    from mlc_pipeline.manifest import latest_version
    cfg, v1 = built
    for leftover in (f".build-v1-{os.getpid()}-abc12345", ".build-v1-999999999-def", f".fetch-v2-{os.getpid()}-x"):
        (v1.parent / leftover / "images").mkdir(parents=True)
    assert latest_version(v1.parent) == "v1"
    res = mlc("inspect", "-c", str(cfg))
    assert res.returncode == 0 and "Dataset default v1" in res.stdout, res.stderr[-2000:]


def verify_version_rows_of(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_changed_file_is_detected(built):
    _, v1 = built
    path = first_row(v1, "train")["path"]
    shutil.copy(v1 / first_row(v1, "valid")["path"], v1 / path)
    with pytest.raises(VersionDamaged, match=f"file {path} was changed since publication"):
        verify_version(v1)


def test_a_file_added_to_a_published_version_is_damage(built):
    """An extra image dropped into images/ went unnoticed ("unchanged ... its files verified"), yet a
    tool reading the folder would train on it: a version is exactly what its manifest says."""
    cfg, v1 = built
    added = v1 / "images" / "ants" / "local-extra.jpg"
    shutil.copy(v1 / first_row(v1)["path"], added)
    res = mlc("build", "-c", str(cfg))
    line = last_line(res.stderr)
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert line.startswith("mlc: dataset default v1 is damaged: file images/ants/local-extra.jpg is not one of its "
                           "files (not in SHA256SUMS: added since publication; deleting it restores the version); "
                           "run `mlc build --repair"), line
    (v1 / "notes.txt").write_text("mine")
    with pytest.raises(VersionDamaged, match=r"file images/ants/local-extra.jpg \(and 1 more\) is not one"):
        verify_version(v1)
    added.unlink()
    with pytest.raises(VersionDamaged, match="file notes.txt is not one of its files"):
        verify_version(v1)
    (v1 / "notes.txt").unlink()
    # what a file browser leaves in any folder it shows is no image: let be (a macOS ._ copy is one)
    (v1 / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (v1 / "images" / "ants" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    assert "unchanged" in mlc("build", "-c", str(cfg)).stdout
    (v1 / "images" / "ants" / "._local-1.jpg").write_bytes(b"\0\5\x16\7")
    with pytest.raises(VersionDamaged, match=r"file images/ants/\._local-1.jpg is not one"):
        verify_version(v1)


@pytest.mark.parametrize("edit, message", [
    ("relabel", "fingerprint does not match"),
    ("outside", "outside the version folder"),
    ("absolute", "outside the version folder"),
    ("drop_row", "fingerprint does not match"),
])
def test_a_hand_edited_manifest_is_refused(built, edit, message):
    cfg, v1 = built
    outside = v1.parents[3] / "outside.jpg"
    shutil.copy(v1 / first_row(v1)["path"], outside)

    def change(rows):
        if edit == "relabel":
            r = next(r for r in rows if r["labels"] == "ants")
            r["labels"] = "bees"
        elif edit == "outside":
            rows[0]["path"] = "../../../../outside.jpg"
        elif edit == "absolute":
            rows[0]["path"] = str(outside)
        else:
            rows.pop()
    rewrite_manifest(v1, change)
    with pytest.raises(VersionDamaged, match=message):
        verify_version(v1)
    if edit == "outside":                  # the CLI's answer once; the other edits go the same way
        res = mlc("train", "-c", str(cfg))
        assert res.returncode == 3 and message in last_line(res.stderr), res.stderr[-2000:]
        assert not (v1.parents[2] / "models").exists()


def test_train_reader_rejects_paths_leaving_the_folder(tmp_path):
    for bad in ("../x.jpg", "/etc/x.jpg", "images/../../x.jpg"):
        (tmp_path / "manifest.csv").write_text(f"path,labels,split\n{bad},a,train\n")
        with pytest.raises(ValueError, match="outside the dataset folder"):
            read_manifest_frame(tmp_path / "manifest.csv")


def test_a_dataset_json_that_cannot_be_read_as_a_file_is_the_version_damaged(tmp_path):
    """dataset.json is read in one place (manifest.read_version_meta): a folder in its place was an
    IsADirectoryError out of every reader that verifies (it caught a missing file and bad JSON only)."""
    v1 = tmp_path / "datasets" / "default" / "v1"
    (v1 / "dataset.json").mkdir(parents=True)
    (v1 / "manifest.csv").write_text("path,labels,split\n")
    with pytest.raises(VersionDamaged, match=r"dataset default v1 is damaged: dataset.json is unreadable \("):
        verify_version(v1)


def test_a_version_without_sha256sums_is_still_checked_for_missing_files(built):
    _, v1 = built
    meta = json.loads((v1 / "dataset.json").read_text())
    del meta["files_sha256"]                      # as published before SHA256SUMS existed
    (v1 / "dataset.json").write_text(json.dumps(meta))
    (v1 / "SHA256SUMS").unlink()
    verify_version(v1)
    gone = first_row(v1)["path"]
    (v1 / gone).unlink()
    with pytest.raises(VersionDamaged, match=f"file {gone} is missing"):
        verify_version(v1)


# ------------------------------------------------------------------ relative paths

def catalog_files(cfg_path: Path) -> dict[int, str]:
    with Catalog(load_config(cfg_path).catalog_path) as c:
        return {r["id"]: r["file_path"] for r in c.candidates() if r["file_path"]}


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_the_catalog_stores_paths_relative_to_the_data_root(built):
    cfg, _ = built
    db = sqlite3.connect(load_config(cfg).catalog_path)
    stored = [r[0] for r in db.execute("SELECT file_path FROM candidates WHERE file_path IS NOT NULL")]
    version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    db.close()
    assert stored and all(not os.path.isabs(p) and p.split("/")[0] in ("raw", "quarantine") for p in stored)
    assert int(version) == SCHEMA_VERSION


def test_curating_a_copy_never_touches_the_original(built, tmp_path):
    cfg, _ = built
    original = Path(yaml.safe_load(cfg.read_text())["data_dir"])
    before = tree(original)
    shutil.copytree(original, tmp_path / "copy", symlinks=True)
    world = Path(yaml.safe_load(cfg.read_text())["source"]["local"]["folder"])
    copy_cfg = write_config(tmp_path / "copy.yaml", tmp_path / "copy", world, curate={"min_side": 400})
    with Catalog(load_config(copy_cfg).catalog_path) as c:    # as if just downloaded: curate inspects all
        for row in c.candidates("status='accepted'"):
            c.update_fields(row["id"], hashed_sha256=None)
    summary = curate(load_config(copy_cfg))          # a stricter copy: many more rejections
    assert summary.rejected.get("too-small", 0) > 5
    assert tree(original) == before                  # not one file moved out of the original
    assert all(p.startswith(str(tmp_path / "copy")) for p in catalog_files(copy_cfg).values())
    assert all(Path(p).exists() for p in catalog_files(copy_cfg).values())


def test_a_moved_data_root_keeps_every_image(built, tmp_path):
    cfg, _ = built
    original = Path(yaml.safe_load(cfg.read_text())["data_dir"])
    before = {cid: Path(p).relative_to(original) for cid, p in catalog_files(cfg).items()}
    moved = tmp_path / "moved"
    shutil.move(original, moved)
    world = Path(yaml.safe_load(cfg.read_text())["source"]["local"]["folder"])
    moved_cfg = write_config(tmp_path / "moved.yaml", moved, world)
    curate(load_config(moved_cfg))
    with Catalog(load_config(moved_cfg).catalog_path) as c:
        assert not c.candidates("status='failed'")            # nothing "gone", nothing to download again
    assert {cid: Path(p).relative_to(moved) for cid, p in catalog_files(moved_cfg).items()} == before


def test_migration_rewrites_absolute_paths_of_a_moved_schema1_catalog(built, tmp_path):
    cfg, _ = built
    original = Path(yaml.safe_load(cfg.read_text())["data_dir"])
    db = sqlite3.connect(original / "catalog.sqlite")          # make it a schema 1 catalog, as before
    db.execute("UPDATE candidates SET file_path=? || '/' || file_path WHERE file_path IS NOT NULL", (str(original),))
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.execute("UPDATE candidates SET file_path='/elsewhere/raw/x.jpg' WHERE id=(SELECT MIN(id) FROM candidates)")
    db.commit()
    db.close()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    with Catalog(copy / "catalog.sqlite") as c:
        rows = {r["id"]: r["file_path"] for r in c.candidates() if r["file_path"]}
    first = min(rows)
    assert rows.pop(first) == "/elsewhere/raw/x.jpg"             # outside, and no such file here: kept
    assert rows and all(p.startswith(str(copy)) and Path(p).exists() for p in rows.values())
    db = sqlite3.connect(copy / "catalog.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    db.close()


# ------------------------------------------------------------------ bundle names

def test_bundle_names_are_unique_within_a_second_and_sorted_by_time():
    names = [bundle_name("default-v1-r0-sigmoid-negatives") for _ in range(200)]
    assert len(set(names)) == 200
    stamps = [n.rsplit("-", 2)[1] for n in names]
    assert stamps == sorted(stamps)


def test_the_reports_of_a_version_with_a_damaged_image_say_it_is_damaged(two_versions):
    """A user's audit: with an image of v2 changed on disk, `mlc inspect --html/--json` exited 3 with
    the line on stderr, but the report written looked like a sound version's."""
    cfg, _, v2 = two_versions
    victim = next((v2 / "images").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:-20])
    report = v2.parents[2] / "damaged.html"
    res = mlc("inspect", "--json", "--html", str(report), "-c", str(cfg))
    assert res.returncode == 3, res.stderr[-2000:]
    said = json.loads(res.stdout[:res.stdout.rindex("}") + 1])["dataset_damaged"]
    assert said and said.startswith("dataset default v2 is damaged: ") and victim.name in said, said
    assert "<p id='damaged'><b>This version is damaged</b>: dataset default v2 is damaged" in report.read_text()


def test_a_latest_link_left_by_a_killed_writer_goes_at_the_next_pointing(tmp_path):
    """point_latest makes `.latest.tmp-<pid>` and renames it onto `latest`: a writer killed between
    the two left the link for good (the interrupt22 audit). A live writer's link is never touched."""
    import subprocess
    from mlc_pipeline.manifest import point_latest
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    dead = subprocess.Popen(["true"])           # a pid that is no longer alive once waited for
    dead.wait()
    (tmp_path / f".latest.tmp-{dead.pid}").symlink_to("v1", target_is_directory=True)
    (tmp_path / f".latest.tmp-{os.getppid()}").symlink_to("v1", target_is_directory=True)   # alive
    point_latest(tmp_path, "v2")
    assert os.readlink(tmp_path / "latest") == "v2"
    assert sorted(p.name for p in tmp_path.glob(".latest.tmp-*")) == [f".latest.tmp-{os.getppid()}"]
