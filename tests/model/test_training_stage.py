"""How a mining round's retrain starts (stage.retrain_overrides): continue the previous round's
network only when it never trained on an image the new version evaluates on. And what no training
starts from: a version with a class that has no training image (stage.check_every_class_trains)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.model.stage import continue_blocker, retrain_overrides


def _manifest(folder: Path, rows: list[tuple[str, str]]) -> None:
    """Rows (candidate id, split); an image's content hash is 'sha-<id>' unless the id is 'id=sha'."""
    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "labels", "split", "candidate_id", "sha256"])
        w.writeheader()
        for cid, split in rows:
            cid, _, sha = cid.partition("=")
            w.writerow({"path": f"images/x/{cid}.jpg", "labels": "", "split": split, "candidate_id": cid,
                        "sha256": f"sha-{sha or cid}"})


def _world(tmp_path: Path, v2_rows: list[tuple[str, str]]) -> tuple[Path, Path]:
    versions = tmp_path / "datasets" / "default"
    _manifest(versions / "v1", [("1", "train"), ("2", "train"), ("3", "valid"), ("4", "test")])
    _manifest(versions / "v2", v2_rows)
    bundle = tmp_path / "models" / "default-v1-r0"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps({"dataset_version": "default/v1"}))
    return versions / "v2", bundle


def _config(**mine) -> Config:
    return Config(data_dir="d", classes={"a": {"queries": ["a"], "count": 1}},
                  other={"queries": ["o"], "count": 1}, mine=mine)


def test_a_retrain_continues_when_only_training_images_were_added(tmp_path):
    v2, bundle = _world(tmp_path, [("1", "train"), ("2", "train"), ("3", "valid"), ("4", "test"), ("5", "train")])
    assert continue_blocker(v2, bundle) is None
    assert retrain_overrides(_config(), v2, bundle) == ({"init_from": str(bundle), "epochs": None}, [])
    assert retrain_overrides(_config(retrain_epochs=4), v2, bundle)[0]["epochs"] == 4
    assert retrain_overrides(_config(retrain="scratch"), v2, bundle) == ({}, [])
    assert retrain_overrides(_config(), v2, None) == ({}, [])      # round 0: nothing to continue


def test_a_retrain_starts_over_when_a_trained_image_is_now_evaluated(tmp_path):
    v2, bundle = _world(tmp_path, [("1", "train"), ("2", "test"), ("3", "valid"), ("4", "test")])
    overrides, warnings = retrain_overrides(_config(), v2, bundle)
    assert overrides == {} and len(warnings) == 1
    assert "from scratch" in warnings[0] and "1 image(s) it learned from are in this version's ['test']" in warnings[0]


def test_a_retrain_starts_over_when_the_previous_version_is_unreadable(tmp_path):
    v2, bundle = _world(tmp_path, [("1", "train")])
    (v2.parent / "v1" / "manifest.csv").unlink()
    why = continue_blocker(v2, bundle)
    assert why.startswith(f"cannot tell which images {bundle.name} trained on (FileNotFoundError")


def test_a_retrain_starts_over_when_the_previous_bundle_json_is_damaged(tmp_path):
    """A bundle.json that is not a JSON object crashed the round (TypeError); it starts over now."""
    v2, bundle = _world(tmp_path, [("1", "train")])
    for text in ("[]", "{not json"):
        (bundle / "bundle.json").write_text(text)
        why = continue_blocker(v2, bundle)
        assert why.startswith(f"cannot tell which images {bundle.name} trained on") and "bundle.json" in why, why


def test_the_images_a_continued_network_learned_before_count_too(tmp_path):
    """r1 continued r0: an image r0 trained on (and r1's version no longer holds) is still learned;
    so is a re-ingested copy of a trained image under a new catalog id (same content)."""
    v2, r0 = _world(tmp_path, [("1", "train"), ("3", "valid"), ("4", "test")])
    (tmp_path / "datasets" / "default" / "v2").rename(tmp_path / "datasets" / "default" / "v1b")
    r1 = tmp_path / "models" / "default-v1b-r1"
    r1.mkdir()
    (r1 / "bundle.json").write_text(json.dumps({"dataset_version": "default/v1b",
                                                "weights": {"continued_from": r0.name}}))
    v3 = tmp_path / "datasets" / "default" / "v3"
    _manifest(v3, [("1", "train"), ("2", "test"), ("4", "test")])       # 2: trained by r0 only
    assert "1 image(s) it learned from are in this version's ['test']" in continue_blocker(v3, r1)
    v4 = tmp_path / "datasets" / "default" / "v4"
    _manifest(v4, [("1", "train"), ("9=1", "valid"), ("4", "test")])    # 9: a new id for image 1's content
    assert "1 image(s) it learned from are in this version's ['valid']" in continue_blocker(v4, r1)
    v5 = tmp_path / "datasets" / "default" / "v5"
    _manifest(v5, [("1", "train"), ("2", "train"), ("3", "valid"), ("4", "test"), ("7", "test")])
    assert continue_blocker(v5, r1) is None


def test_one_name_per_head_for_bundles_variants_and_reports():
    """Bundle names, VARIANTS and the report's "product, round 0 (...)" all spell a head through
    registry.variant_name; a softmax always has an "other" class, whatever other_mode says."""
    from mlc_pipeline.model.registry import variant_name
    from mlc_pipeline.model.stage import VARIANTS, train_config
    assert all(variant_name(**spec) == name for name, spec in VARIANTS.items())
    cfg = Config(classes={"a": {"queries": ["a"], "count": 1}}, other={"queries": ["o"], "count": 1},
                 train={"head": "softmax", "other_mode": "negative"})
    assert variant_name(cfg.train.head, train_config(cfg).effective_other_mode) == "softmax-other-class"


def test_the_alternatives_never_train_the_product_again():
    """head softmax with other_mode negative trains a softmax with an "other" class: comparing the
    configured other_mode listed the product itself as an alternative (a second full training)."""
    from mlc_pipeline.model.stage import alternative_variants
    for head, other_mode, product in (("softmax", "negative", "softmax-other-class"),
                                      ("sigmoid", "negative", "sigmoid-negatives"),
                                      ("sigmoid", "class", "sigmoid-other-class")):
        cfg = Config(classes={"a": {"queries": ["a"], "count": 1}}, other={"queries": ["o"], "count": 1},
                     train={"head": head, "other_mode": other_mode})
        assert product not in alternative_variants(cfg) and len(alternative_variants(cfg)) == 2


def test_a_class_with_no_training_image_stops_the_run_before_training(tmp_path):
    """The audit's run: every cat photo (180 px, real) is smaller than every size in source.sizes, so
    v1 holds no cat. `mlc run` trained anyway, moved models/LATEST to a model with macro F1 0.000 that
    never claims a cat, and exited 0. Now the run stops before training with one line naming the empty
    class and where its photos went, exit 2, no bundle; `mlc train` on that version says the same."""
    import subprocess
    import yaml
    from helpers import ENV, MLC
    from storage_world import FIXTURES, folder_world
    world = folder_world(tmp_path / "world", {"cat": sorted((FIXTURES.parent / "pets" / "cat").glob("*.jpg"))[:8],
                                              "bees": sorted((FIXTURES / "bees").glob("*.jpg"))[:8],
                                              "ants": sorted((FIXTURES / "ants").glob("*.jpg"))[-8:]})
    config = tmp_path / "zero.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                   "local": {"port": 0, "folder": str(world), "query_map": {q: q for q in ("cat", "bees", "ants")}}},
        "classes": {"cat": {"queries": ["cat"], "count": 8}, "bees": {"queries": ["bees"], "count": 8}},
        "other": {"queries": ["ants"], "count": 8},
        "train": {"epochs": 1, "image_size": 32, "batch_size": 16, "pretrained": "none", "compare_baselines": False},
        "mine": {"rounds": 0}}, sort_keys=False))

    def mlc(*args):
        return subprocess.run([*MLC, *args, "-c", str(config)], env=ENV, capture_output=True, text=True, timeout=600)

    said = ("mlc: dataset v1 has no training image of cat: a model cannot learn a class it never sees, nor ever "
            "claim it; nothing was trained, models/LATEST is unchanged (cat: of its 8 photos found, 8 offered in no "
            "size of source.sizes (url_m, url_n, url_s): too small, list smaller sizes)")
    for command in (["run", "--no-progress"], ["train"]):
        res = mlc(*command)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and lines[-1] == said, (command, res.stderr[-3000:])
        assert "Traceback" not in res.stderr and not [x for x in lines[:-1] if x.startswith("mlc:")], res.stderr
        models = tmp_path / "data" / "models"
        assert not models.exists() or not [p.name for p in models.iterdir()], sorted(models.iterdir())
    assert (tmp_path / "data" / "datasets" / "default" / "v1" / "manifest.csv").is_file()     # the build ran
