from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from badfiles import fixture_photos
from mlc_pipeline.curate.similarity import CONFIRM, FileSimilarity, load_grey

pytestmark = pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")


def test_a_16_bit_greyscale_copy_is_confirmed(tmp_path):
    # A real photo saved as a 16-bit greyscale PNG (mode I;16) has the original's phash; its pixels
    # must confirm it too (plain convert("L") turned it solid white: score 0.0-0.1).
    photo = fixture_photos()[0]
    grey = np.asarray(Image.open(photo).convert("L"), np.uint16) * 257
    copy = tmp_path / "copy16.png"
    Image.fromarray(grey).save(copy)                       # uint16 -> mode I;16
    assert Image.open(copy).mode == "I;16"
    assert np.asarray(load_grey(copy)).std() > 10          # a picture, not a white sheet
    assert FileSimilarity({0: photo, 1: copy})(0, 1) >= CONFIRM


def crops(photo, tmp_path):
    "The photo cut at a corner (5 % off the left and top edges) and along one side (8 % off the left)."
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    out = []
    for name, box in (("corner", (round(w * 0.05), round(h * 0.05), w, h)), ("left", (round(w * 0.08), 0, w, h))):
        path = tmp_path / f"{photo.stem}_{name}.jpg"
        im.crop(box).save(path, quality=90)
        out.append(path)
    return out


def test_corner_and_one_sided_crops_are_confirmed(tmp_path):
    # Only centred crops were aligned: these scored 0.3-0.4 and were never confirmed (0/48 of the
    # audit's ant photos). Every 8th ant photo, both crops: 90 % must reach CONFIRM (measured: 28 of 30).
    ants = [p for p in fixture_photos() if p.parent.name == "ants"][::8]
    paths = {}
    for k, photo in enumerate(ants):
        paths[(k, "original")] = photo
        paths[(k, "corner")], paths[(k, "left")] = crops(photo, tmp_path)
    sim = FileSimilarity(paths)
    scores = [sim((k, "original"), (k, cut)) for k in range(len(ants)) for cut in ("corner", "left")]
    assert np.mean(np.array(scores) >= CONFIRM) >= 0.9, sorted(scores)[:5]


def large_crops(photo, tmp_path):
    "The photo cut 15 and 20 % per side: centred, at a corner (off the left and top) and off the left edge."
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    out = []
    for c in (0.15, 0.20):
        dx, dy = round(w * c), round(h * c)
        for name, box in (("centre", (dx, dy, w - dx, h - dy)), ("corner", (dx, dy, w, h)), ("left", (dx, 0, w, h))):
            out.append(tmp_path / f"{photo.stem}_{name}{round(c * 100)}.jpg")
            im.crop(box).save(out[-1], quality=90)
    return out


def test_crops_of_15_and_20_percent_per_side_are_confirmed(tmp_path):
    # The alignments covered centred crops of 0-10 % per side and windows keeping >= 80 % of each
    # side: a centred crop of 15 or 20 % scored 0.1-0.4. Now 0-20 % and >= 75 %: every 8th ant photo,
    # six crops each, 90 % must reach CONFIRM (measured: 145 of 150, the lowest 0.89).
    ants = [p for p in fixture_photos() if p.parent.name == "ants"][::8]
    paths = {}
    for k, photo in enumerate(ants):
        paths[(k, -1)] = photo
        paths.update(((k, m), crop) for m, crop in enumerate(large_crops(photo, tmp_path)))
    sim = FileSimilarity(paths)
    scores = np.array([sim((k, -1), (k, m)) for k in range(len(ants)) for m in range(6)]).reshape(len(ants), 6)
    assert (np.mean(scores >= CONFIRM, axis=0) >= 0.9).all(), np.round(scores.min(axis=0), 3)


def test_crop_search_confirms_no_pair_of_distinct_photos(tmp_path):
    # The search looks at more alignments: the crops of one photo must still not confirm against
    # other photos (each crop against the next photo's original, and originals among themselves).
    photos = fixture_photos()[::40]
    paths = {("o", k): p for k, p in enumerate(photos)}
    for k, p in enumerate(photos):
        paths[("corner", k)], paths[("left", k)] = crops(p, tmp_path)
        paths.update((("large", k, m), crop) for m, crop in enumerate(large_crops(p, tmp_path)))
    sim = FileSimilarity(paths)
    n = len(photos)
    scores = [sim((cut, k), ("o", (k + 1) % n)) for k in range(n) for cut in ("corner", "left")]
    scores += [sim(("large", k, m), ("o", (k + 1) % n)) for k in range(n) for m in range(6)]
    scores += [sim(("o", k), ("o", m)) for k in range(n) for m in range(k + 1, n)]
    assert max(scores) < 0.6


def test_a_pair_is_scored_once_per_process_until_one_of_its_files_changes(tmp_path, monkeypatch):
    # `mlc run` curates after every collect round and each curate decides every image again: the
    # same candidate pairs were decoded and searched round after round (the crop search made that
    # ~15 s a round on the default world). A later FileSimilarity reuses the score, by file identity.
    from mlc_pipeline.curate import similarity
    photo, other = fixture_photos()[3], fixture_photos()[60]
    original = tmp_path / "original.jpg"
    original.write_bytes(photo.read_bytes())
    copy = crops(original, tmp_path)[0]
    first = FileSimilarity({1: original, 2: copy})(1, 2)
    assert first >= CONFIRM

    def no_decoding(path, side=128):
        raise AssertionError(f"{path} decoded again")
    monkeypatch.setattr(similarity, "load_grey", no_decoding)
    assert FileSimilarity({7: copy, 8: original})(8, 7) == first          # another curate, ids in another order
    monkeypatch.undo()

    copy.write_bytes(other.read_bytes())         # the file changed: scored again, not remembered
    assert FileSimilarity({1: original, 2: copy})(1, 2) < 0.6


def test_a_resized_copy_is_settled_by_the_whole_pictures_alone(tmp_path, monkeypatch):
    # The other alignments (crops, rotations, the corner search) cost a third of a curate on
    # thumbnails and could only confirm a resized re-encode again: they are never computed for it,
    # and its score still says "beyond doubt" (SURE), so labels merge as before.
    from mlc_pipeline.curate import similarity
    photo = fixture_photos()[5]
    im = Image.open(photo).convert("RGB")
    copy = tmp_path / "half.jpg"
    im.resize((im.width // 2, im.height // 2)).save(copy, quality=60)

    def no_views(*args, **kwargs):
        raise AssertionError("the other alignments were computed")
    monkeypatch.setattr(similarity, "residuals", no_views)
    monkeypatch.setattr(similarity, "anchored_search", no_views)
    assert FileSimilarity({0: photo, 1: copy})(0, 1) >= similarity.SURE


def exhaustive(a, b) -> float:
    "The score of every alignment and both corner searches, none skipped (what `similarity` was)."
    from mlc_pipeline.curate import similarity as s
    sa, sb = s.signature(load_grey(a)), s.signature(load_grey(b))
    ra, rb = s.residuals(sa.image), s.residuals(sb.image)
    fixed = max((ra[s._PA] * rb[s._PB]).sum(axis=1).max(), (rb[s._PA] * ra[s._PB]).sum(axis=1).max())
    return float(max(fixed, s.anchored_search(sa.image, sb), s.anchored_search(sb.image, sa)))


def test_the_staged_search_decides_every_pair_as_the_whole_search_does(tmp_path):
    # Alignments are tried cheapest first and a score beyond doubt (SURE) ends the search: below
    # SURE the score must be exactly the whole search's, and at or above it both must be there.
    from mlc_pipeline.curate.similarity import SURE
    photos = fixture_photos()[::50]
    pairs = []
    for k, p in enumerate(photos):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        centre = tmp_path / f"{k}_centre.jpg"
        im.crop((round(w * .06), round(h * .06), w - round(w * .06), h - round(h * .06))).save(centre, quality=85)
        rotated = tmp_path / f"{k}_rotated.jpg"
        im.rotate(3, resample=Image.Resampling.BILINEAR).crop(
            (round(w * .05), round(h * .05), w - round(w * .05), h - round(h * .05))).save(rotated, quality=85)
        blurred = tmp_path / f"{k}_blurred.jpg"      # these score 0.87-0.94 on the crops: in doubt
        im.crop((round(w * .06), round(h * .06), w - round(w * .06), h - round(h * .06))).filter(
            ImageFilter.GaussianBlur(1.5)).save(blurred, quality=85)
        corner, left = crops(p, tmp_path)
        nxt = photos[(k + 1) % len(photos)]
        pairs += [(p, centre), (rotated, p), (p, blurred), (p, corner), (left, p), (nxt, corner), (p, nxt)]
    sim = FileSimilarity({q: q for pair in pairs for q in pair})
    for a, b in pairs:
        staged, whole = sim(a, b), exhaustive(a, b)
        assert (staged >= SURE and whole >= SURE) or staged == pytest.approx(whole, abs=1e-6), (a, b, staged, whole)


def test_a_centred_crop_is_settled_without_rotating_either_picture(tmp_path, monkeypatch):
    # Rotating both pictures and their six rotated views was ~40 % of scoring a centred crop (a
    # quarter of the planted copies of bench_curate_stage): a crop beyond doubt never needs them.
    from mlc_pipeline.curate import similarity
    photo = fixture_photos()[9]
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    copy = tmp_path / "centre.jpg"
    im.crop((round(w * .05), round(h * .05), w - round(w * .05), h - round(h * .05))).save(copy, quality=85)

    def no_rotation(*args, **kwargs):
        raise AssertionError("the rotated views were computed")
    monkeypatch.setattr(similarity, "rotated_residuals", no_rotation)
    monkeypatch.setattr(similarity, "anchored_search", no_rotation)
    assert FileSimilarity({0: photo, 1: copy})(0, 1) >= similarity.SURE


def variant(**values) -> dict:
    """similarity.py's module namespace with the parameters `values` (name -> value) assigned instead."""
    import re
    from mlc_pipeline.curate import similarity
    source = Path(similarity.__file__).read_text()
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
        assert n == 1, f"no `{name} = ...` line in similarity.py"
    namespace = {"__name__": "similarity_variant"}
    exec(compile(source, "similarity_variant", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("changed", [
    {"ROTATED_FLOOR, ROTATED_CEILING": (0.05, 0.125)},     # the review30 audit: not in METHOD
    {"ROTATED_FLOOR, ROTATED_CEILING": (0.025, 0.10)}, {"THUMB_SIDE": 64}, {"GREY_SIDE": 96},
    {"SEARCH_SIDE": 192}, {"COVER_MIN": 0.8}, {"COVER_STEP": 0.05}, {"REFINE": (-2, -1, 1, 2)},
    {"CONFIRM": 0.9}, {"SURE": 0.98}, {"CROPS": (0.0, 0.05, 0.10)}, {"ROTATIONS": (0, -2, 2)}])
def test_every_parameter_a_kept_score_depends_on_changes_its_method(changed):
    """Kept pair scores (the catalog's pair_scores) are used only under the METHOD they were computed
    by: a parameter left out of it (the rotated crops' upper bound was a literal 0.10) would have its
    change reuse scores computed under the old alignments. (SURE and CONFIRM end the staged search:
    the score returned depends on them too.)"""
    from mlc_pipeline.curate import similarity
    today = variant()
    assert today["METHOD"] == similarity.METHOD and today["VIEW_PAIRS"] == similarity.VIEW_PAIRS
    other = variant(**changed)
    assert other["METHOD"] != similarity.METHOD
    if "ROTATED_FLOOR, ROTATED_CEILING" in changed:
        assert other["ROTATED_CROPS"] != similarity.ROTATED_CROPS and other["VIEW_PAIRS"] != similarity.VIEW_PAIRS
