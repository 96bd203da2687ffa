"""Loading bundles safely and predicting with them. Reuses the model test_train trains (once per session)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shapes import trained_bundle  # noqa: E402  (one tiny training shared by both files)

from mlc_pipeline.model.assess import evaluate_bundle  # noqa: E402
from mlc_pipeline.model.predict import predict_paths, score_and_embed, score_paths  # noqa: E402
from mlc_pipeline.model.bundle import BundleError, load_bundle
from mlc_pipeline.manifest import read_manifest_frame  # noqa: E402


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(trained_bundle()[1])


@pytest.fixture(scope="module")
def manifest_df():
    return read_manifest_frame(trained_bundle()[0])


def _paths(df, split=None, labels=None):
    rows = df
    if split is not None:
        rows = rows[rows["split"] == split]
    if labels is not None:
        rows = rows[rows["labels"] == labels]
    return list(rows["abs_path"])


def test_load_bundle_fields(bundle):
    assert bundle.classes == ["blue", "red"] and bundle.vocab == ["blue", "red"]
    assert bundle.head == "sigmoid" and bundle.thresholds.shape == (2,)
    assert bundle.meta["dataset_version"] == "test-v1"


def test_probes_are_mostly_none_of(bundle, manifest_df):
    preds = predict_paths(bundle, _paths(manifest_df, split="probe"))
    assert len(preds) == 48 and all(p.error is None for p in preds)
    assert np.mean([p.none_of for p in preds]) > 0.5


def test_known_images_get_their_labels(bundle, manifest_df):
    red = predict_paths(bundle, _paths(manifest_df, split="test", labels="red"))
    both = predict_paths(bundle, _paths(manifest_df, split="test", labels="blue red"))
    assert np.mean([[c for c, _ in p.labels] == ["red"] for p in red]) >= 0.75
    assert np.mean([sorted(c for c, _ in p.labels) == ["blue", "red"] for p in both]) >= 0.5
    p = red[0]
    assert set(p.probs) == {"red", "blue"} and all(0 <= v <= 1 for v in p.probs.values())
    assert all(prob >= bundle.thresholds[bundle.vocab.index(c)] for c, prob in p.labels)
    assert p.labels == sorted(p.labels, key=lambda cp: -cp[1])


def test_bad_files_become_per_item_errors(bundle, manifest_df, tmp_path):
    good = _paths(manifest_df, split="test")[:3]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(good[0]).read_bytes()[:200])
    paths = [good[0], text, good[1], tmp_path / "missing.jpg", truncated, good[2]]
    preds = predict_paths(bundle, paths, batch_size=4)  # errors both inside and across batches
    assert [p.error is not None for p in preds] == [False, True, False, True, True, False]
    assert all(p.none_of and p.labels == [] for p in preds if p.error)
    assert "cannot decode" in preds[1].error
    probs = score_paths(bundle, paths, batch_size=4)
    assert probs.shape == (6, 2) and np.isnan(probs[[1, 3, 4]]).all()
    np.testing.assert_allclose(probs[[0, 2, 5]], score_paths(bundle, good), atol=1e-5)  # neighbours unharmed


def test_a_network_that_fails_on_every_image_is_an_error_not_rows_of_nan(manifest_df):
    """One image that cannot be scored is a row error; all of them is a fault of the bundle or the
    code, and NaN rows would pass for unreadable images (metrics on nothing, mining adding nothing)."""
    import torch
    from mlc_pipeline.model.predict import ScoringFailed, score_with_errors
    broken = load_bundle(trained_bundle()[1])        # a fresh copy: the module's bundle stays whole
    head = broken.learn.model[1]
    head[-1] = torch.nn.Linear(head[-1].in_features + 1, head[-1].out_features)   # a head its body cannot feed
    with pytest.raises(ScoringFailed, match=r"none of the 3 decoded images could be scored \(cannot score image"):
        score_with_errors(broken, _paths(manifest_df, split="test")[:3], batch_size=2)
    probs, errors = score_with_errors(broken, _paths(manifest_df, split="test")[:1])
    assert np.isnan(probs).all() and "cannot score image" in errors[0]    # one image: its row says why


def test_a_decoder_that_fails_on_every_image_with_a_bug_is_an_error_not_rows_of_nan(bundle, manifest_df, tmp_path,
                                                                                      monkeypatch):
    """The same for the decoding step: every input failing with an error no bad file raises (here an
    AttributeError) is the code's fault; mining then added nothing and said only a warning."""
    from mlc_pipeline.model import predict
    paths = _paths(manifest_df, split="test")[:3]
    real = predict._decode

    def buggy(path, *args):
        real(path, *args)
        return None.width                           # an AttributeError after a good decode

    monkeypatch.setattr(predict, "_decode", buggy)
    with pytest.raises(predict.ScoringFailed, match=r"none of the 3 images could be decoded.*AttributeError"):
        predict.score_with_errors(bundle, paths)
    monkeypatch.undo()
    bad = [tmp_path / f"bad{i}.jpg" for i in range(3)]         # bad files: rows with reasons, no error
    for path in bad:
        path.write_text("not an image")
    probs, errors = predict.score_with_errors(bundle, bad)
    assert np.isnan(probs).all() and all("cannot decode image" in e for e in errors.values())


def test_features_come_with_the_same_scores_and_say_what_the_network_sees(bundle, manifest_df, tmp_path):
    red = _paths(manifest_df, split="test", labels="red")[:6]
    blue = _paths(manifest_df, split="test", labels="blue")[:6]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    paths = red + [bad] + blue
    probs, feats, errors = score_and_embed(bundle, paths, batch_size=4)
    assert list(errors) == [6] and np.isnan(feats[6]).all()
    np.testing.assert_allclose(probs, score_paths(bundle, paths, batch_size=4), atol=1e-5, equal_nan=True)
    ok = np.delete(feats, 6, axis=0)
    np.testing.assert_allclose(np.linalg.norm(ok, axis=1), 1, atol=1e-5)       # L2-normalised
    # same-class pictures sit closer together than pictures of different classes
    sims = ok @ ok.T
    same = np.mean([sims[i, j] for i in range(6) for j in range(6) if i != j] +
                   [sims[i, j] for i in range(6, 12) for j in range(6, 12) if i != j])
    assert same > np.mean(sims[:6, 6:])


# ---------------------------------------------------------------- decoding as the dataset build does


@pytest.fixture(scope="module")
def photo_variants(tmp_path_factory):
    """Awkward files made from a real photo, each beside the plain 8-bit RGB file the dataset build
    makes of it (built here by hand, not with curate's loader): a 16-bit grey PNG and its 8-bit grey
    copy, a cutout (RGBA, the hidden pixels black) and the cutout flattened on white, a JPEG stored
    on its side with EXIF orientation 6 and the same pixels turned upright."""
    from PIL import Image
    from helpers import FIXTURES
    out = tmp_path_factory.mktemp("variants")
    with Image.open(FIXTURES / "hymenoptera" / "ants" / "0013035.jpg") as im:
        photo = im.convert("RGB")
    grey = np.asarray(photo.convert("L")).astype(np.uint16)
    Image.fromarray(grey * 257).save(out / "grey16.png")                     # 16-bit: top 8 bits = grey
    Image.fromarray(grey.astype(np.uint8), "L").save(out / "grey8.png")
    rgb = np.asarray(photo).copy()
    hidden = rgb.mean(axis=2) > np.median(rgb.mean(axis=2))                  # the brighter half cut out
    rgb[hidden] = 0
    alpha = np.where(hidden, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(out / "cutout.png")
    rgb[hidden] = 255
    Image.fromarray(rgb).save(out / "cutout_on_white.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                                         # "rotate 90 degrees clockwise to view"
    photo.transpose(Image.Transpose.ROTATE_90).save(out / "exif6.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(out / "exif6.jpg") as im:                                # the stored pixels, turned by hand
        upright = im.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert upright.size == photo.size
    upright.save(out / "exif6_upright.png")
    return out


@pytest.mark.parametrize("awkward, plain", [("grey16.png", "grey8.png"), ("cutout.png", "cutout_on_white.png"),
                                            ("exif6.jpg", "exif6_upright.png")])
def test_a_file_scores_as_its_dataset_copy_would(bundle, photo_variants, awkward, plain):
    """Training images are decoded by the dataset build (curate's load_rgb: EXIF orientation,
    transparency on white, 16-bit to its top 8 bits), so predict and mining must see a file the same
    way. Before: fastai's loader saw the 16-bit PNG as pure white (0.23/0.09 against 0.00/0.00), the
    cutout's hidden pixels (0.00 against 0.47 blue) and the photo on its side (0.96 against 0.90)."""
    from mlc_pipeline.images import load_rgb
    from mlc_pipeline.model.predict import _decode
    a, b = photo_variants / awkward, photo_variants / plain
    assert np.array_equal(np.asarray(_decode(a)), np.asarray(load_rgb(a)))     # the build's decoding
    assert np.array_equal(np.asarray(_decode(a)), np.asarray(_decode(b)))
    probs = score_paths(bundle, [a, b])
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)
    _, feats, errors = score_and_embed(bundle, [a, b])                        # mining's scoring
    assert not errors
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-5)


def test_scoring_frees_each_chunks_decoded_pictures_at_once(bundle, manifest_df, monkeypatch):
    """fastai's test_dl keeps a chunk's pictures in a reference cycle that only Python's full
    collection frees, and on a long pool that runs ever more rarely: peak memory grew ~30 KB an image
    over 6,000 (the audit, 2026-12-06). With the collector held off, no decoded picture of a scored
    chunk may still hold its pixels when scoring returns (before the fix: every one did)."""
    import gc
    from PIL import Image
    import mlc_pipeline.model.predict as predict

    def holds_pixels(obj) -> bool:
        try:
            return isinstance(obj, Image.Image) and obj.im is not None and obj.im.size is not None
        except ValueError:                # a closed image: its pixels are gone
            return False

    decoded = []
    real_decode = predict._decode
    monkeypatch.setattr(predict, "_decode", lambda *a, **k: decoded.append(real_decode(*a, **k)) or decoded[-1])
    paths = _paths(manifest_df, split="valid")[:12]
    gc.collect()
    gc.disable()
    try:
        score_and_embed(bundle, paths, batch_size=4)         # three chunks, the mining pool's path
        ids = {id(im) for im in decoded}
        decoded.clear()                                      # only the loaders' cycles may hold them now
        alive = [o for o in gc.get_objects() if id(o) in ids and holds_pixels(o)]
    finally:
        gc.enable()
    assert len(ids) == 12 and not alive, f"{len(alive)} of 12 decoded pictures still hold their pixels"


def test_evaluate_bundle_matches_training_report(manifest_df):
    manifest, bundle_dir = trained_bundle()
    m = evaluate_bundle(bundle_dir, manifest)
    recorded = json.loads((bundle_dir / "metrics.json").read_text())["test"]
    assert m["macro_f1"] == pytest.approx(recorded["macro_f1"])
    assert m["probe_accepted"] == pytest.approx(recorded["probe_accepted"])
    assert m["n_unreadable"] == 0


def test_a_bundle_assessed_on_its_own_version_gives_its_training_figures(manifest_df):
    """assess_on_version scores a shipped model on a newer version for round 0's comparison
    (shipping.incumbent_model): on the version it trained on, it must agree with its own metrics.json,
    validation at its own thresholds on the images without mined negatives included."""
    from mlc_pipeline.model.assess import assess_on_version
    manifest, bundle_dir = trained_bundle()
    m = assess_on_version(bundle_dir, manifest)
    recorded = json.loads((bundle_dir / "metrics.json").read_text())
    assert m["test"]["macro_f1"] == pytest.approx(recorded["test"]["macro_f1"])
    assert m["test"]["unknown_accepted"] == pytest.approx(recorded["test"]["unknown_accepted"])
    shared = recorded["valid"].get("macro_f1_without_mined", recorded["valid"]["macro_f1"])
    assert m["valid"]["macro_f1_without_mined"] == pytest.approx(shared, abs=1e-6)


# ---------------------------------------------------------------- integrity


@pytest.fixture
def bundle_copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(trained_bundle()[1], dst)
    return dst


def test_altered_export_is_refused_before_unpickling(bundle_copy):
    export = bundle_copy / "export.pkl"
    export.write_bytes(export.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"export\.pkl.*does not match"):
        load_bundle(bundle_copy)


def test_corrupt_export_with_matching_hash_is_a_bundle_error(bundle_copy):
    from mlc_pipeline.fsutil import sha256_file
    export = bundle_copy / "export.pkl"
    export.write_bytes(export.read_bytes()[:5000])  # truncated, hash re-recorded: unpickling fails
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    meta["export_sha256"] = sha256_file(export)
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"export\.pkl: could not be loaded"):
        load_bundle(bundle_copy)


def test_missing_or_broken_files_are_bundle_errors(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "nowhere")
    (bundle_copy / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").write_text(json.dumps({"vocab": ["a"]}))
    with pytest.raises(BundleError, match="lacks"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json: missing"):
        load_bundle(bundle_copy)


def test_softmax_bundle_none_of_means_argmax_other(manifest_df):
    soft = load_bundle(trained_bundle("softmax", "negative")[1])
    assert soft.head == "softmax" and soft.thresholds is None and soft.vocab[-1] == "other"
    preds = predict_paths(soft, _paths(manifest_df, split="test")[:20] + _paths(manifest_df, split="probe")[:10])
    for p in preds:
        argmax = max(p.probs, key=p.probs.get)
        assert p.none_of == (argmax == "other")
        assert p.labels == ([] if p.none_of else [(argmax, p.probs[argmax])])
