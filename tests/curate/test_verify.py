import os
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from badfiles import animated_gif, fixture_photos, make_bad_files
from mlc_pipeline.curate.verify import VerifyLimits, check_image, recorded_reason
from mlc_pipeline.images import load_rgb

pytestmark = pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


def test_every_reason_is_reported(bad):
    got = {name: check_image(f.path).reason for name, f in bad.items()}
    want = {name: f.reason for name, f in bad.items()}
    assert got == want


def test_valid_files_report_their_fields(bad):
    check = check_image(bad["exif-rotated"].path)
    assert (check.ok, check.format, check.mode, check.width, check.height) == (True, "JPEG", "RGB", 80, 160)
    assert check_image(bad["animated"].path).frames == 3
    assert check_image(bad["png-as-jpg"].path).format == "PNG"
    assert check_image(bad["gray16"].path).mode == "I;16"


def test_truncation_is_never_tolerated(bad):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for name in ("truncated-jpeg", "truncated-jpeg-tail", "truncated-jpeg-eoi", "truncated-progressive",
                 "truncated-png", "truncated-gif", "truncated-webp", "truncated-animated"):
        assert check_image(bad[name].path).reason == "truncated", name


def test_bombs_are_refused_from_the_header_quickly(bad):
    for name in ("bomb-pillow-error", "bomb-pillow-warning", "bomb-limit"):
        start = time.perf_counter()
        assert check_image(bad[name].path).reason == "decompression-bomb"
        assert time.perf_counter() - start < 0.5  # nothing was decoded


def test_limits_are_parameters(bad, tmp_path):
    photo = fixture_photos()[0]
    assert check_image(photo, VerifyLimits(max_bytes=1000)).reason == "file-too-large"
    assert check_image(photo, VerifyLimits(min_side=300)).reason == "too-small"
    assert check_image(bad["extreme-aspect"].path, VerifyLimits(max_aspect=10)).ok
    assert check_image(photo, VerifyLimits(max_pixels=1000)).reason == "decompression-bomb"
    assert check_image(bad["animated"].path, VerifyLimits(max_frames=2)).reason == "too-many-frames"
    assert check_image(bad["icon"].path, VerifyLimits(formats=("ICO",), min_side=1)).ok


def test_missing_file_is_a_reason_not_an_exception(tmp_path):
    assert check_image(tmp_path / "nope.jpg").reason == "read-error:FileNotFoundError"


def test_all_fixture_photos_pass():
    checks = [check_image(p) for p in fixture_photos()]
    assert len(checks) == 398
    assert all(c.ok for c in checks), [c for c in checks if not c.ok][:3]


def test_fastai_verify_images_misses_what_we_catch(bad):
    from fastai.vision.utils import verify_images

    paths = [f.path for f in bad.values()]
    fastai_failed = {p.name for p in verify_images(paths)}
    ours_failed = {f.path.name for f in bad.values() if not check_image(f.path).ok}
    assert fastai_failed < ours_failed  # everything fastai rejects we reject, and more
    missed = {f.path.name for f in bad.values() if f.path.name in ours_failed - fastai_failed}
    # Size, aspect, mode and format rules are ours alone; a truncated *later* GIF frame slips past
    # fastai because it only loads frame 0; libjpeg only warns about a JPEG cut short before an EOI
    # marker, or with corrupt scan data, and fastai (Pillow) passes it.
    assert {"tiny.png", "panorama.jpg", "float.tif", "icon.ico", "truncated-animated.gif",
            "truncated-eoi.jpg", "corrupt-scan.jpg"} <= missed


# ---------------------------------------------------------------------------------------------
# load_rgb normalisation


def pixel(im, x, y):
    return tuple(int(v) for v in np.asarray(im)[y, x])


def test_exif_orientation_is_applied(bad):
    im = load_rgb(bad["exif-rotated"].path)  # stored 160x80 red|blue, orientation 6
    assert im.mode == "RGB" and im.size == (80, 160)
    assert pixel(im, 40, 20)[0] > 200 and pixel(im, 40, 20)[2] < 60   # top is red
    assert pixel(im, 40, 140)[2] > 200 and pixel(im, 40, 140)[0] < 60  # bottom is blue


def test_modes_are_normalised_to_rgb(bad):
    cmyk = load_rgb(bad["cmyk"].path)
    assert pixel(cmyk, 10, 40)[0] > 200 and pixel(cmyk, 110, 40)[2] > 200
    ramp = np.asarray(load_rgb(bad["gray16"].path))[0, :, 0]
    assert ramp[0] < 5 and ramp[-1] > 250 and np.all(np.diff(ramp.astype(int)) >= 0)  # not clipped to white
    assert pixel(load_rgb(bad["palette-transparent"].path), 10, 40) == (255, 255, 255)
    assert pixel(load_rgb(bad["palette-transparent"].path), 90, 40) == (0, 0, 255)
    assert pixel(load_rgb(bad["gray-alpha"].path), 10, 40) == (255, 255, 255)
    assert pixel(load_rgb(bad["gray-alpha"].path), 90, 40) == (0, 0, 0)
    assert pixel(load_rgb(bad["animated"].path), 48, 48) == (255, 0, 0)  # first frame
    for f in bad.values():
        if f.reason is None:
            assert load_rgb(f.path).mode == "RGB"


def test_load_rgb_downscales_with_draft(tmp_path):
    big = tmp_path / "big.jpg"
    Image.open(fixture_photos()[0]).convert("RGB").resize((3200, 2136)).save(big, quality=90)
    im = load_rgb(big, max_side=224)
    assert im.mode == "RGB" and max(im.size) == 224 and im.size == (224, 150)
    full = np.asarray(load_rgb(big).resize(im.size, Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(full - np.asarray(im, dtype=float)).mean() < 4  # draft path looks the same


def test_frame_budget_bounds_animation_work(tmp_path):
    path = tmp_path / "long.gif"
    path.write_bytes(animated_gif(n_frames=12, size=(100, 100)))
    assert check_image(path, VerifyLimits(max_pixels=20_000)).reason == "too-many-frames"


def test_the_verdict_on_record_is_check_images_verdict(bad, tmp_path):
    """curate re-judges a verified file under new limits from its recorded size, bytes and frames
    (recorded_reason): it must say what check_image says after reading and decoding the file."""
    long_gif = tmp_path / "long.gif"
    long_gif.write_bytes(animated_gif(n_frames=12, size=(100, 100)))
    files = [*fixture_photos()[:3], bad["exif-rotated"].path, bad["animated"].path, long_gif]
    variants = [VerifyLimits(), VerifyLimits(min_side=150), VerifyLimits(min_side=300), VerifyLimits(max_aspect=1.2),
                VerifyLimits(max_pixels=40_000), VerifyLimits(max_pixels=20_000), VerifyLimits(max_frames=2),
                VerifyLimits(max_bytes=20_000), VerifyLimits(min_side=300, max_aspect=1.01)]
    seen = set()
    for path in files:
        first = check_image(path)
        assert first.ok, path
        n_bytes = os.stat(path).st_size
        for limits in variants:
            want = check_image(path, limits).reason
            seen.add(want)
            assert recorded_reason(first.width, first.height, n_bytes, first.frames, limits) == want, (path, limits)
    assert {None, "too-small", "extreme-aspect", "decompression-bomb", "too-many-frames", "file-too-large"} <= seen


def test_refuses_to_run_with_truncated_loading_switched_on(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        check_image(fixture_photos()[0])


def test_a_file_that_grows_after_stat_is_read_whole_or_refused(tmp_path, monkeypatch):
    # read_limited asks for the size stat reported (+1), then reads on if the file turned out longer.
    import os

    from mlc_pipeline.curate import verify

    path = tmp_path / "growing.jpg"
    data = fixture_photos()[0].read_bytes()
    path.write_bytes(data)
    real_stat = os.stat
    monkeypatch.setattr(verify.os, "stat", lambda p: os.stat_result((*real_stat(p)[:6], 100, *real_stat(p)[7:])))
    assert verify.read_limited(path, VerifyLimits()) == (data, None)
    assert verify.read_limited(path, VerifyLimits(max_bytes=len(data) - 1)) == (None, "file-too-large")
