"""`mlc curate` on real fixture photos, through the real CLI."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURES

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config

FIXTURES = FIXTURES / "hymenoptera"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixture photos missing (../shared/fixtures)")


def curate_cli(config: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "curate", "-c", str(config)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_curate_notices_files_damaged_after_curation(tmp_path):
    # One accepted file truncated to half, another emptied, after curate accepted them: the next
    # curate sees their sizes differ from the catalog's and inspects them again (it used to reuse the
    # cached verdicts: "inspected": 0, both still accepted). Their bytes are not the ones downloaded
    # and fail verification: a local fault, not the photos' content. They are set aside in the
    # quarantine and downloaded again by the next collect, as the build does with a file it finds
    # damaged; curate used to record `truncated` / `empty-file`, final verdicts, and overwrite the
    # download's sha256 with the damaged file's: two good photos lost for good.
    world = tmp_path / "world"
    for name, files in (("ants", sorted((FIXTURES / "ants").glob("*.jpg"))[:6]),
                        ("bees", sorted((FIXTURES / "bees").glob("*.jpg"))[:6]),
                        ("scenery", sorted((FIXTURES / "ants").glob("*.jpg"))[100:102])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    raw = {"data_dir": str(tmp_path / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                      "local": {"port": 0, "folder": str(world), "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
           "classes": {"ants": {"queries": ["ants"], "count": 6}, "bees": {"queries": ["bees"], "count": 6}},
           "other": {"queries": ["scenery"], "count": 2}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    collect(cfg, progress=False)
    first = curate_cli(config)
    assert first["inspected"] == first["accepted"] == 14
    with Catalog(cfg.catalog_path) as c:
        truncated, emptied = sorted(c.candidates("status='accepted'"), key=lambda r: r["id"])[:2]
    good = {r["id"]: Path(r["file_path"]).read_bytes() for r in (truncated, emptied)}
    Path(truncated["file_path"]).write_bytes(good[truncated["id"]][:len(good[truncated["id"]]) // 2])
    Path(emptied["file_path"]).write_bytes(b"")

    again = curate_cli(config)
    assert again["inspected"] == 2 and again["reused"] == 12 and again["accepted"] == 12
    assert again["rejected"] == {} and again.get("damaged") == 2      # was {"truncated": 1, "empty-file": 1}
    with Catalog(cfg.catalog_path) as c:
        for before, why in ((truncated, "truncated"), (emptied, "empty-file")):
            row = c.get(before["id"])
            assert (row["status"], row["reason"]) == ("failed", f"transient:file-changed:{why}")
            assert row["sha256"] == before["sha256"]            # the download's digest, not the damaged file's
            assert Path(row["file_path"]).is_relative_to(cfg.layout.quarantine(why))    # kept to look at
            assert len(Path(row["file_path"]).read_bytes()) < len(good[before["id"]])

    assert collect(cfg, progress=False).downloaded == 2           # fetched again, as after a build's check
    third = curate_cli(config)
    assert third["inspected"] == 2 and third["accepted"] == 14 and third["rejected"] == {}
    with Catalog(cfg.catalog_path) as c:
        for before in (truncated, emptied):
            row = c.get(before["id"])
            assert row["status"] == "accepted" and Path(row["file_path"]).read_bytes() == good[before["id"]]
            assert row["file_path"] == before["file_path"]
    assert curate_cli(config)["inspected"] == 0          # and unchanged files are not read again


def folder_world(tmp_path: Path, ants: list[Path], count: int, workers: int):
    """A folder-mode world of `ants` (class "ants", `count` wanted) and two scenery photos ("other"),
    served by the bundled server; (cfg, world folder)."""
    world = tmp_path / "world"
    (world / "ants").mkdir(parents=True)
    (world / "scenery").mkdir(parents=True)
    for f in ants:
        shutil.copy(f, world / "ants" / f.name)
    for f in sorted((FIXTURES / "ants").glob("*.jpg"))[100:102]:
        shutil.copy(f, world / "scenery" / f.name)
    raw = {"data_dir": str(tmp_path / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                      "local": {"port": 0, "folder": str(world), "query_map": {"ants": "ants", "scenery": "scenery"}}},
           "classes": {"ants": {"queries": ["ants"], "count": count}},
           "other": {"queries": ["scenery"], "count": 2}, "curate": {"workers": workers}}
    return parse_config(raw), world


@pytest.mark.parametrize("workers", [1, 2])       # 2: the pool that scores pairs first (pair_pool) skips them too
def test_a_later_curate_reuses_the_pair_scores_kept_in_the_catalog(tmp_path, monkeypatch, workers):
    # A score is a function of the two files' bytes, but it was kept only for the process: every
    # nightly curate (a new process) decoded and searched the same candidate pairs again, most of
    # a curate of unchanged files. Now they are kept in the catalog by the files' sha256.
    from PIL import Image
    from mlc_pipeline.curate import pair_pool, similarity
    from mlc_pipeline.curate.stage import curate
    ants = sorted((FIXTURES / "ants").glob("*.jpg"))[:8]
    cfg, world = folder_world(tmp_path, ants, 16, workers)
    for f in ants:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        im.crop((round(w * .05), round(h * .05), w - round(w * .05), h - round(h * .05))).save(
            world / "ants" / f"crop_{f.name}", quality=85)
    collect(cfg, progress=False)
    monkeypatch.setattr(pair_pool, "MIN_PAIRS", 1)
    monkeypatch.setattr(similarity, "PAIR_SCORES", similarity.PairScores(1000))
    first = curate(cfg)
    assert first.duplicates == {"near-duplicate": 8}
    with Catalog(cfg.catalog_path) as c:
        kept = c.pair_scores(similarity.METHOD, [r["sha256"] for r in c.candidates()])
        decided = {r["id"]: (r["status"], r["duplicate_of"]) for r in c.candidates()}
    assert len(kept) == 8 and min(kept.values()) >= similarity.CONFIRM

    def no_decoding(path, side=128):
        raise AssertionError(f"{path} decoded again to score a pair")
    monkeypatch.setattr(similarity, "PAIR_SCORES", similarity.PairScores(1000))     # as a new process
    monkeypatch.setattr(similarity, "load_grey", no_decoding)
    again = curate(cfg)
    assert again.duplicates == first.duplicates
    with Catalog(cfg.catalog_path) as c:
        assert {r["id"]: (r["status"], r["duplicate_of"]) for r in c.candidates()} == decided
        # Scores of another method, or of a file the curate does not decide, are dropped by the next curate.
        c.save_pair_scores(similarity.METHOD, {("0" * 64, "f" * 64): 0.5})
        c.save_pair_scores("an older method", {min(kept): 0.1})
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = c.db.execute("SELECT sha_a, sha_b, method FROM pair_scores").fetchall()
    assert sorted((r["sha_a"], r["sha_b"]) for r in rows) == sorted(kept)
    assert {r["method"] for r in rows} == {similarity.METHOD}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_score_of_a_file_rewritten_in_place_is_not_kept_under_its_old_digest(tmp_path, monkeypatch, workers):
    # A user's audit: a kept file overwritten at the same size (a bad restore) is not re-inspected,
    # so a re-upload of its photo was scored against the new bytes (0.057) and that score was kept
    # under the file's recorded sha256; once the file was put back, the re-upload stayed in for good.
    # Now a score is kept only under the digests of the bytes scored, and the file is inspected again.
    from PIL import Image
    from mlc_pipeline.curate import pair_pool, similarity
    from mlc_pipeline.curate.stage import curate
    cfg, world = folder_world(tmp_path, sorted((FIXTURES / "ants").glob("*.jpg"))[:6], 7, workers)
    monkeypatch.setattr(pair_pool, "MIN_PAIRS", 1)
    monkeypatch.setattr(similarity, "PAIR_SCORES", similarity.PairScores(1000))
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        kept = next(r for r in c.candidates("status='accepted'") if r["label"] == "ants")
    original = Path(kept["file_path"]).read_bytes()
    small = io.BytesIO()                      # another photo, padded to the same size below
    Image.open(sorted((FIXTURES / "bees").glob("*.jpg"))[0]).convert("RGB").resize((96, 72)).save(small, "JPEG", quality=40)
    other = small.getvalue()
    Path(kept["file_path"]).write_bytes(other + b"\0" * (len(original) - len(other)))     # same size
    Image.open(io.BytesIO(original)).convert("RGB").save(world / "ants" / "reupload.jpg", quality=60)
    collect(cfg, progress=False)
    curate(cfg)                                   # the re-upload scored against the rewritten file
    with Catalog(cfg.catalog_path) as c:
        assert c.get(kept["id"])["hashed_sha256"] is None          # inspected again at the next curate
    Path(kept["file_path"]).write_bytes(original)                  # put back
    monkeypatch.setattr(similarity, "PAIR_SCORES", similarity.PairScores(1000))   # as a new process
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        reupload = next(r for r in c.candidates() if (r["source_file"] or "").endswith("reupload.jpg"))
    assert (reupload["status"], reupload["duplicate_of"]) == ("duplicate", kept["id"]), reupload


def published_test_photo(tmp_path):
    """A folder world of 16 ants collected, curated and built: (cfg, world folder, v1, a v1 test row)."""
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.build import build_dataset
    from mlc_pipeline.manifest import read_manifest
    cfg, world = folder_world(tmp_path, sorted((FIXTURES / "ants").glob("*.jpg"))[:16], 17, 1)
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    tests = [r for r in read_manifest(v1.path / "manifest.csv") if r["split"] == "test"]
    assert tests, "the split hash put no image in test; pick another world"
    test = tests[0]
    return cfg, world, v1, test


def test_a_byte_copy_of_a_published_test_photo_is_an_exact_duplicate_of_it(tmp_path):
    # A user's audit: curate compares new photos with the *published* test files, which the build
    # re-encoded, so a byte copy of a test photo's source was called `near-duplicate-of-test:v1:d=0`
    # (docs: a byte copy is `exact-...`). The catalog knows the source's sha256: the copy is exact.
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.flickr_server.folder import photo_id_for
    cfg, world, v1, test = published_test_photo(tmp_path)
    shutil.copy(world / test["source_file"], world / "ants" / "zz_copy.jpg")         # the very bytes
    collect(cfg, progress=False)
    assert curate(cfg).duplicates.get("exact-duplicate-of-test") == 1
    with Catalog(cfg.catalog_path) as c:
        copy = c.get_by_photo("local", photo_id_for("ants/zz_copy.jpg"))
    assert (copy["status"], copy["reason"]) == ("duplicate", f"exact-duplicate-of-test:{v1.version}:d=0")
    assert copy["duplicate_of"] == int(test["candidate_id"])


def test_a_copy_of_a_test_photo_of_an_earlier_version_never_trains(tmp_path):
    # docs/curation.md: curate "reads the manifests of every published version". A v1 test photo
    # rejected in review is in no later version; a larger re-encode of it, collected after v2, must
    # still be held as a copy of v1's test photo, or it trains in v3 (kept over the smaller original)
    # and inflates every score measured on v1. (The mutation27 audit: checking the latest version only
    # passed every test.)
    from PIL import Image
    from mlc_pipeline.catalog.overrides import act, ensure_schema
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.build import build_dataset
    from mlc_pipeline.flickr_server.folder import photo_id_for
    from mlc_pipeline.manifest import read_manifest
    cfg, world, v1, test = published_test_photo(tmp_path)
    with Catalog(cfg.catalog_path) as c:
        ensure_schema(c)
        act(c, int(test["candidate_id"]), "reject", "not an ant", "test", list(cfg.classes))
    v2 = build_dataset(cfg)
    assert v2.version != v1.version
    assert test["candidate_id"] not in {r["candidate_id"] for r in read_manifest(v2.path / "manifest.csv")}
    with Image.open(world / test["source_file"]) as im:
        im.convert("RGB").resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.LANCZOS).save(
            world / "ants" / "zz_bigger.jpg", quality=90)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        copy = c.get_by_photo("local", photo_id_for("ants/zz_bigger.jpg"))
    assert copy["status"] == "duplicate" and copy["reason"].startswith(f"near-duplicate-of-test:{v1.version}:"), copy
    assert copy["duplicate_of"] == int(test["candidate_id"])
    v3 = build_dataset(cfg)
    assert str(copy["id"]) not in {r["candidate_id"] for r in read_manifest(v3.path / "manifest.csv")}
