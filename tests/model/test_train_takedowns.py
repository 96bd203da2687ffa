"""A takedown (`mlc remove`) reaches the models (the curation29 audit, finding 2): a training of a version
published before it leaves out the photos taken down and the copies held for them, as an export does, says
so and records it in bundle.json; a version with nothing left to train on is refused; a network that
learned from a photo taken down is not continued; `mlc remove` names the bundles that learned from the
photos, models/LATEST among them; and `mlc run` no longer keeps a shipped model that learned from a
photo taken down since. Real photos served by the bundled server, a real catalog, real `mlc`
processes and small real trainings (32 px, one epoch, from scratch)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from storage_world import FIXTURES, MIRROR, OWNERS, make_world, mirrored_v1, mlc, write_config

from mlc_pipeline import shipping
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import load_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.model.bundle import read_meta
from mlc_pipeline.model.learned import learned_rows, taken_down_learned
from mlc_pipeline.model.stage import retrain_overrides, train_version


def incumbent(cfg, key):
    "The model a new round 0 must beat (`shipping.incumbent_model`), as `mlc run` asks it."
    return shipping.incumbent_model(cfg, shipping.shipped_model(cfg, key))


def ok(*args: str):
    done = mlc(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def same_version_stages(v1: Path):
    """`mlc run`'s stages with collect, builds and mining scripted: nothing new (the same version v1),
    five images mined each round; training is real."""
    from mlc_pipeline.pipeline import Stages

    class SameVersion(Stages):
        def collect(self, cfg):
            return {}

        def build(self, cfg):
            return {"path": str(v1), "version": "v1", "published": False}

        def mine(self, cfg, bundle_dir, round_no):
            return {"added": 5}

        def report(self, cfg, result):
            return ""
    return SameVersion


@pytest.fixture
def taken_down(tmp_path):
    """v1 of ten ants, ten bees, eight scenery photos and the mirror image of one ant photo; a model
    trained on v1 (models/LATEST); then `mlc remove` of that photo, which holds the mirror.
    (config, cfg, v1 folder, the photo, the mirror, the model trained before, `mlc remove`'s output)."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    config, cfg, v1 = mirrored_v1(tmp_path)
    photo, mirror = f"local:{photo_id_for(OWNERS)}", f"local:{photo_id_for(MIRROR)}"
    splits = {f"{r['source']}:{r['photo_id']}": r["split"] for r in read_manifest(v1 / "manifest.csv")}
    assert (splits.get(photo), splits.get(mirror)) == ("train", "test"), splits
    before = train_version(cfg, v1).bundle_dir
    removed = ok("remove", "-c", str(config), "--photo-id", photo.split(":")[1], "--reason", "owner request")
    assert f"held 1 near duplicate(s) of the photos taken down for review: {mirror}" in removed.stdout, removed.stdout
    return config, cfg, v1, photo, mirror, before, removed.stdout


def test_mlc_remove_names_the_model_bundles_that_learned_from_the_photos_latest_among_them(taken_down):
    """`mlc remove` listed the versions and exports that hold the photos, and no model bundle: the model
    trained on v1, models/LATEST, went on serving predictions and mining unsaid. Only what it learned from
    counts: the owner's photo (train), not the mirror held (test: only scored); a model whose version was
    withdrawn since cannot be checked, and says so."""
    config, cfg, v1, photo, mirror, before, said = taken_down
    lines = said.splitlines()
    at = lines.index(f"model bundles that learned from them (kept; a model without them: `mlc build -c {config}`, "
                     f"then `mlc train -c {config}`; or delete them):")
    assert lines[at + 1] == f"  {before.name} (models/LATEST): 1 photo(s): {photo}", said
    assert lines[at + 2].startswith("models/LATEST is one of them: `mlc predict` and `mlc mine` use it"), said

    # v1 withdrawn: what the model learned from cannot be read any more; it is named as not checked, and
    # no longer counts as a model to keep
    ok("withdraw", "-c", str(config), "v1", "--reason", "holds a photo taken down")
    again = ok("remove", "-c", str(config), "--photo-id", photo.split(":")[1], "--reason", "owner request").stdout
    assert f"model bundles not checked (1): cannot tell which images {before.name} trained on (FileNotFoundError" \
        in again and "models/LATEST is one of them" not in again, again
    assert f"models/LATEST ({before.name}) cannot tell whether it learned from them, and counts as if it did: " \
        f"`mlc run` trains round 0 anew and ships it over it without a comparison" in again.splitlines(), again
    assert taken_down_learned(cfg, before).endswith(
        ", and the catalog records takedowns (`mlc remove`): it may have learned from one")


def test_training_a_version_published_before_a_takedown_leaves_the_photos_out_says_so_and_records_it(taken_down):
    """`mlc train --version v1` after `mlc remove` trained on the photo taken down, with no word: an export
    of v1 leaves it out. Now the training leaves out the photo and the copy held for it, from every split,
    says so in one line, and bundle.json records it; the model trained before is not continued, and a
    takedown named again lists the model trained before, not the one that left the photo out."""
    config, cfg, v1, photo, mirror, before, _ = taken_down
    rows = read_manifest(v1 / "manifest.csv")
    done = ok("train", "-c", str(config), "--version", "v1")
    said = [line for line in done.stderr.splitlines() if "left out" in line]
    assert len(said) == 1 and said[0].endswith(
        f"dataset v1: left out 2 photo(s) taken down since v1 was published, or held as copies of them (1) "
        f"(`mlc remove`; listed in bundle.json): {photo}, {mirror} (held)"), done.stderr
    bundle = Path(done.stdout.split("model bundle: ")[1].splitlines()[0])
    meta = read_meta(bundle)
    assert meta["takedowns"] == {"checked": True, "left_out": [photo, mirror], "held": [mirror]}
    assert meta["warnings"][0] == said[0].split("dataset v1: ", 1)[1]     # the model's record says it too
    learned = [r for r in rows if r["split"] in ("train", "valid")]
    assert meta["n_train"] + meta["n_valid"] == len(learned) - 1        # the photo: train; the mirror: test
    with open(bundle / "test_scores.csv", newline="") as f:
        scored = {r["photo_id"] for r in csv.DictReader(f)}
    assert scored and not scored & {photo.split(":")[1], mirror.split(":")[1]}
    assert (cfg.layout.models / "LATEST").read_text().strip() == bundle.name

    continuing = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"retrain": "continue"})})
    overrides, warnings = retrain_overrides(continuing, v1, before, taken_down_learned(cfg, before))
    assert overrides == {} and warnings == [f"retrained from scratch, not continued from {before.name}: it learned "
                                            f"from 1 photo(s) taken down (`mlc remove`): {photo}"]
    assert retrain_overrides(continuing, v1, bundle)[0]["init_from"] == str(bundle)     # it left them out

    again = ok("remove", "-c", str(config), "--photo-id", photo.split(":")[1], "--reason", "owner request").stdout
    assert f"  {before.name}: 1 photo(s): {photo}" in again.splitlines() and bundle.name not in again, again
    assert "models/LATEST is one of them" not in again
    continued = ok("train", "-c", str(config), "--version", "v1", "--continue", before.name).stderr  # asked there
    assert f"retrained from scratch, not continued from {before.name}: it learned from 1 photo(s) taken down" \
        in continued, continued


def test_a_version_whose_training_images_were_all_taken_down_trains_nothing_and_says_why(tmp_path):
    """Every photo taken down: `mlc train --version v1` stops before training, with one line, exit 2,
    no bundle."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", make_world(tmp_path / "world", per_class=6))
    cfg = load_config(config)
    collect(cfg, progress=False)
    curate(cfg)
    n = len(read_manifest(build_dataset(cfg).path / "manifest.csv"))
    for query in ("ants", "bees", "scenery"):
        ok("remove", "-c", str(config), "--query", query, "--reason", "owner request")
    done = mlc("train", "-c", str(config), "--version", "v1")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"mlc: dataset v1 has no train image left once the {n} photo(s) taken down since v1 was published are "
        f"left out (`mlc remove`): build a version without them (`mlc build`) and train that; nothing was "
        f"trained, models/LATEST is unchanged"), done.stderr[-3000:]
    assert not cfg.layout.models.exists() or not list(cfg.layout.models.iterdir())


def test_mlc_run_does_not_keep_a_shipped_model_that_learned_from_a_photo_taken_down_since(tmp_path, caplog):
    """`mlc run` keeps the shipped model when a new round 0 does worse on the new version: after a
    takedown it kept the model trained on the photos taken down (the audit: LATEST stayed the v1 model,
    mining went on from it). A photo it only scored (test) changes nothing; one it learned from makes the
    next run ship its new round 0, with a line that says why."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", make_world(tmp_path / "world", per_class=10),
                          mine={"rounds": 0})
    ok("run", "-c", str(config), "--no-progress")
    cfg, key = load_config(config), None
    shipped = cfg.layout.models / (cfg.layout.models / "LATEST").read_text().strip()
    key = shipping.round0_key(cfg)
    assert incumbent(cfg, key) == shipped        # the model a new round 0 must beat
    rows = read_manifest(cfg.layout.datasets / "v1" / "manifest.csv")
    tested = next(r["photo_id"] for r in rows if r["split"] == "test")
    trained = next(r["photo_id"] for r in rows if r["split"] == "train")
    ok("remove", "-c", str(config), "--photo-id", tested, "--reason", "owner request")
    assert incumbent(cfg, key) == shipped        # only scored on it: still the one to beat
    ok("remove", "-c", str(config), "--photo-id", trained, "--reason", "owner request")
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.shipping"):
        assert incumbent(cfg, key) is None
    why = (f"the shipped model {shipped.name} is not kept: it learned from 1 photo(s) taken down (`mlc remove`): "
           f"local:{trained}; round 0's model ships without a comparison")
    assert why in caplog.text, caplog.text

    done = ok("run", "-c", str(config), "--no-progress")
    latest = (cfg.layout.models / "LATEST").read_text().strip()
    assert latest.startswith("default-v2-r0-") and why in done.stderr, done.stderr[-3000:]
    assert json.loads((cfg.layout.reports / shipping.SHIPPED_RECORD).read_text())["shipped"] == latest


def test_a_continued_model_whose_parent_bundle_is_not_at_hand_still_says_what_it_learned_and_is_kept(tmp_path):
    """On an object-store data root `mlc run` pulls models/LATEST alone, not the bundles it continued
    (review29 finding 5): what a mining round's model learned could not be read, so once the catalog
    recorded any takedown the shipped model was neither reused nor kept, and round 0 replaced it every
    night with no comparison. bundle.json now records the whole chain a network learned from (the
    parent's record plus its own): with the parent's folder gone, the model still says what it learned,
    is kept when a takedown touches none of it, and is not when one touches what its parent learned."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    config, cfg, v1 = mirrored_v1(tmp_path)
    first = train_version(cfg, v1).bundle_dir
    continuing = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"retrain": "continue"})})
    second = train_version(continuing, v1, tag="r1", previous=first).bundle_dir
    meta = read_meta(second)
    assert meta["weights"]["continued_from"] == first.name
    assert meta["learned_from"] == [{"dataset_version": "default/v1", "left_out": []}] * 2
    key = shipping.round0_key(cfg)
    shipping.record_shipped(cfg, {"bundle": second.name, "dataset_version": "v1"}, key)
    rows = read_manifest(v1 / "manifest.csv")
    learned = sorted(r["path"] for r in rows if r["split"] in ("train", "valid")) * 2
    shutil.rmtree(first)            # the parent is not at hand: a fresh cache pulled LATEST alone

    assert sorted(r["path"] for r in learned_rows(second, cfg.layout.datasets.parent)) == sorted(learned)
    tested = next(f"{r['source']}:{r['photo_id']}" for r in rows if r["split"] == "test"
                  and r["photo_id"] not in (photo_id_for(OWNERS), photo_id_for(MIRROR)))
    ok("remove", "-c", str(config), "--photo-id", tested.split(":")[1], "--reason", "owner request")
    assert taken_down_learned(cfg, second) is None
    assert incumbent(cfg, key) == second     # only scored on it: still the model to beat
    photo = f"local:{photo_id_for(OWNERS)}"                 # learned by the parent (train), and so by it
    said = ok("remove", "-c", str(config), "--photo-id", photo.split(":")[1], "--reason", "owner request").stdout
    assert f"  {second.name} (models/LATEST): 1 photo(s): {photo}" in said.splitlines(), said
    assert incumbent(cfg, key) is None


def test_mlc_run_asks_once_whether_the_shipped_model_learned_from_a_photo_taken_down(tmp_path, monkeypatch):
    """Whether models/LATEST learned from a photo taken down since was asked three times a run (review29
    finding 8): to reuse it as round 0 (`last_shipped_model`), to keep it (`incumbent_model`), and again
    when the first mining round continued it (`retrain_overrides`), each reading its versions' manifests,
    and a takedown in between could make them disagree. The run asks it once (`shipping.shipped_model`);
    round 0 reused on that answer is continued by mining on the same answer. Real photos, a real
    takedown and real trainings; mining and the builds scripted (the same version, nothing new)."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    from mlc_pipeline.model.learned import LearnedAmong
    from mlc_pipeline.pipeline import run_stages
    config, cfg, v1 = mirrored_v1(tmp_path)
    cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"rounds": 1, "retrain": "continue"})})
    shipped = train_version(cfg, v1).bundle_dir
    shipping.record_shipped(cfg, {"bundle": shipped.name, "dataset_version": "v1"}, shipping.round0_key(cfg))
    tested = next(r["photo_id"] for r in read_manifest(v1 / "manifest.csv") if r["split"] == "test"
                  and r["photo_id"] not in (photo_id_for(OWNERS), photo_id_for(MIRROR)))
    ok("remove", "-c", str(config), "--photo-id", tested, "--reason", "owner request")    # only scored on it

    asked, real = [], LearnedAmong.of
    monkeypatch.setattr(LearnedAmong, "of", lambda self, bundle: asked.append(Path(bundle).name) or real(self, bundle))

    out = run_stages(cfg, same_version_stages(v1)(progress=False))
    assert out.reused and out.rounds[0].bundle == shipped.name, out
    continued = read_meta(cfg.layout.models / out.rounds[1].bundle)["weights"]["continued_from"]
    assert continued == shipped.name            # mining went on from it, on the run's one answer
    assert asked == [shipped.name], asked


@pytest.mark.parametrize("shipped_first", [False, True], ids=["trained-in-the-run", "shipped-and-reused"])
def test_a_photo_taken_down_while_mlc_run_trains_never_goes_on_in_a_continued_network(tmp_path, shipped_first):
    """The run's one answer covers the shipped model as it was asked. A photo round 0 learned, taken down
    after the answer (`mlc remove` does not wait for a run), must make round 1's retrain start over, not
    go on in its network and ship: whether round 0 trained in the run, or is the shipped model reused
    (review30: the run's cached answer let it go on). Real photos, a real takedown and real trainings;
    mining and the builds scripted (the same version)."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    from mlc_pipeline.pipeline import run_stages
    config, cfg, v1 = mirrored_v1(tmp_path)
    cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"rounds": 1, "retrain": "continue"})})
    if shipped_first:
        shipped = train_version(cfg, v1).bundle_dir
        shipping.record_shipped(cfg, {"bundle": shipped.name, "dataset_version": "v1"}, shipping.round0_key(cfg))
    learned = next(r["photo_id"] for r in read_manifest(v1 / "manifest.csv") if r["split"] == "train"
                   and r["photo_id"] not in (photo_id_for(OWNERS), photo_id_for(MIRROR)))

    class TakenDownMeanwhile(same_version_stages(v1)):
        def mine(self, cfg, bundle_dir, round_no):
            ok("remove", "-c", str(config), "--photo-id", learned, "--reason", "owner request")
            return super().mine(cfg, bundle_dir, round_no)
    out = run_stages(cfg, TakenDownMeanwhile(progress=False))
    assert bool(out.reused) == shipped_first, out
    meta = read_meta(cfg.layout.models / out.rounds[1].bundle)
    assert not meta["weights"].get("continued_from"), meta["weights"]
    assert any("retrained from scratch" in w and "taken down" in w for w in meta["warnings"]), meta["warnings"]


def test_mining_compares_pool_images_with_the_class_images_less_the_photos_taken_down(taken_down, tmp_path):
    """Mining holds back a pool image that looks like a class as much as the class's own images do
    (model/likeness.py), and those references were the version's images, the photo taken down and the
    copy held for it among them, which the training itself now leaves out. A pool image that is that
    photo (a copy a pool query found) looked like its class by itself (similarity 1 to one of its five
    nearest): mining now weighs it, and every pool image, against the version less them, as a version
    built without them would."""
    from mlc_pipeline.dataset.takedowns import read_takedowns
    from mlc_pipeline.manifest import write_manifest
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.likeness import pool_likeness, reference_rows
    from mlc_pipeline.model.mine import hold_for_review
    import numpy as np
    config, cfg, v1, photo, mirror, before, _ = taken_down
    rows = read_manifest(v1 / "manifest.csv")
    row = next(r for r in rows if f"{r['source']}:{r['photo_id']}" == photo)
    bundle = load_bundle(before)
    without = tmp_path / "without" / "manifest.csv"     # v1 less the photo and the copy held for it
    without.parent.mkdir()
    write_manifest(without, [{**r, "path": str(v1 / r["path"])} for r in rows
                             if f"{r['source']}:{r['photo_id']}" not in (photo, mirror)])
    pool = [str(v1 / row["path"])] + [str(v1 / r["path"]) for r in rows if r["split"] == "test"][:3]
    expected = pool_likeness(bundle, without, pool)
    entries = [{"file": p, "accepted_as": row["labels"].split()[0], "likeness": ""} for p in pool]
    hold_for_review(cfg, bundle, entries, np.zeros((len(pool), len(bundle.vocab))))
    for i, e in enumerate(entries):
        like, margin = expected.looks_like(i)
        if like is None:
            like, margin = None, expected.margins[i, expected.classes.index(e["accepted_as"])]
        assert (e["decision"], e["likeness"]) == (f"held:like-class:{like}" if like else "added",
                                                  round(float(margin), 4)), (i, e, expected.margins[i])
    classes, _, _ = reference_rows(v1 / "manifest.csv", bundle.classes, takedowns=read_takedowns(cfg))
    assert v1 / row["path"] not in {p for paths in classes.values() for p in paths}


def test_a_takedown_answer_not_asked_yet_is_asked_after_crossing_a_process(taken_down):
    """`learned.ASK` crosses a Dask task runner pickled, as another str object: the retrain must still
    ask the bundle, not read the sentinel as the answer "retrained from scratch: not asked yet"
    (review30: an `is` check made every mining round on Dask start over)."""
    import pickle
    from mlc_pipeline.model.learned import ASK
    config, cfg, v1, photo, mirror, bundle, said = taken_down
    crossed = pickle.loads(pickle.dumps(ASK))
    assert crossed == ASK
    assert retrain_overrides(cfg, v1, bundle, crossed) == retrain_overrides(cfg, v1, bundle)
