"""Colour management in the shared loader (`images.load_rgb`, the realfiles27 audit, finding 1): a photo
with an embedded Adobe RGB, Display P3, grey or CMYK profile is read in sRGB, as every viewer shows it;
an sRGB-tagged or untagged file is read as before; a profile that cannot be applied falls back to the
numbers as stored, with the reason logged and kept.

The files are real fixture photos encoded into each space with LittleCMS (`iccprofiles`: the profiles
are built by hand), so the sRGB original is the truth each file must come back to."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageCms

import iccprofiles as icc
from badfiles import fixture_photos
from helpers import FIXTURES
from mlc_pipeline.images import NOT_APPLIED, load_rgb, to_rgb, to_srgb

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixture photos missing (../shared/fixtures)")
SRGB = ImageCms.createProfile("sRGB")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    "A saturated real photo (a bee on a yellow flower), as sRGB RGB."
    return Image.open(next(p for p in fixture_photos() if p.name == "2330918208_8074770c20.jpg")).convert("RGB")


def encoded(im: Image.Image, profile: bytes) -> Image.Image:
    "`im` (sRGB) re-encoded into `profile`'s numbers: what a camera or phone saves in that space."
    return ImageCms.applyTransform(im, ImageCms.buildTransform(SRGB, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                                                "RGB", "RGB"))


def save(im: Image.Image, path, profile: bytes | None, **options) -> str:
    if profile is not None:
        options["icc_profile"] = profile
    im.save(path, **options)
    return str(path)


def diff(a: Image.Image, b: Image.Image) -> float:
    "Mean absolute difference in levels (0-255)."
    assert a.size == b.size
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


@pytest.mark.parametrize("profile", [icc.ADOBE_RGB, icc.DISPLAY_P3], ids=["adobe-rgb", "display-p3"])
def test_a_wide_gamut_photo_is_read_as_a_viewer_shows_it(photo, profile, tmp_path):
    png = save(encoded(photo, profile), tmp_path / "wide.png", profile)
    jpeg = save(encoded(photo, profile), tmp_path / "wide.jpg", profile, quality=95)
    assert diff(to_rgb(Image.open(png)), photo) > 7          # the raw numbers: a washed-out picture
    assert diff(load_rgb(png), photo) < 0.6                  # was 8.8 (Adobe RGB) and 10.8 (P3)
    assert diff(load_rgb(jpeg), photo) < 2                   # q95 in a wider space: 1.5-1.6 (sRGB q95: 0.6)
    # ... with the build's resize too, and its JPEG draft decode (a 1600 px photo at 256)
    big = photo.resize((1600, 1064), Image.Resampling.LANCZOS)
    small = save(encoded(big, profile), tmp_path / "big.jpg", profile, quality=95)
    reference = load_rgb(save(big, tmp_path / "big-srgb.jpg", None, quality=95), max_side=256)
    assert diff(load_rgb(small, max_side=256), reference) < 1.5
    hsv = lambda im: np.asarray(im.convert("HSV"), float)[..., 1].mean()     # noqa: E731
    assert abs(hsv(load_rgb(jpeg)) - hsv(photo)) < 2         # saturation kept (the audit: 209 -> 171 / 159)


def test_the_profile_survives_the_exif_turn(photo, tmp_path):
    turned = encoded(photo, icc.ADOBE_RGB).transpose(Image.Transpose.ROTATE_90)     # stored on its side
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(turned, tmp_path / "turned.jpg", icc.ADOBE_RGB, quality=95, exif=exif.tobytes())
    im = load_rgb(path)
    assert im.size == photo.size and diff(im, photo) < 1.5


def test_srgb_tagged_files_read_as_untagged_ones(photo, tmp_path):
    # Most camera and web JPEGs carry an sRGB profile: their pixels must not move (no dataset changes).
    untagged = load_rgb(save(photo, tmp_path / "plain.jpg", None, quality=90))
    for name, profile in (("iec", icc.SRGB_TABLE), ("lcms", ImageCms.ImageCmsProfile(SRGB).tobytes())):
        tagged = load_rgb(save(photo, tmp_path / f"{name}.jpg", profile, quality=90))
        assert np.abs(np.asarray(tagged, int) - np.asarray(untagged, int)).max() <= 1, name


def test_grey_and_cmyk_profiles_are_applied(photo, tmp_path):
    # A grey profile whose numbers are linear light, and a CMYK one: 255 * (1 - linear light) per ink.
    grey = np.asarray(photo.convert("L"), float) / 255
    linear = np.round(255 * icc.srgb_to_linear(grey)).astype(np.uint8)
    grey_truth = Image.fromarray(np.round(grey * 255).astype(np.uint8), "L").convert("RGB")
    for path in (save(Image.fromarray(linear, "L"), tmp_path / "grey.png", icc.LINEAR_GREY),
                 save(Image.fromarray(linear.astype(np.uint16) * 257), tmp_path / "grey16.png",
                      icc.LINEAR_GREY)):
        assert diff(to_rgb(Image.open(path)), grey_truth) > 40, path
        assert diff(load_rgb(path), grey_truth) < 1, path

    inks = np.round(255 * (1 - icc.srgb_to_linear(np.asarray(photo, float) / 255))).astype(np.uint8)
    cmyk = Image.fromarray(np.dstack([inks, np.zeros(inks.shape[:2], np.uint8)]), "CMYK")
    for path in (save(cmyk, tmp_path / "cmyk.tif", icc.LINEAR_CMYK), save(cmyk, tmp_path / "cmyk.jpg", icc.LINEAR_CMYK,
                                                                           quality=95)):
        assert diff(to_rgb(Image.open(path)), photo) > 30, path
        assert diff(load_rgb(path), photo) < 6, path         # 8-bit linear inks lose the shadows' steps


def test_transparency_goes_on_white_before_the_profile(photo, tmp_path):
    rgba = encoded(photo, icc.ADOBE_RGB).convert("RGBA")
    alpha = Image.new("L", photo.size, 255)
    alpha.paste(0, (0, 0, 60, 60))
    rgba.putalpha(alpha)
    im = load_rgb(save(rgba, tmp_path / "cutout.png", icc.ADOBE_RGB))
    assert np.all(np.asarray(im)[:60, :60] == 255)            # white in Adobe RGB is white in sRGB
    assert float(np.abs(np.asarray(im, float) - np.asarray(photo, float))[60:, 60:].mean()) < 0.6


def test_perceptual_is_relative_colorimetric_on_camera_and_phone_profiles(photo):
    # The loader's intent (perceptual) gives the same pixels as relative colorimetric for matrix/TRC
    # profiles; it differs only where a LUT profile has a perceptual table of its own.
    for profile in (icc.ADOBE_RGB, icc.DISPLAY_P3):
        wide = encoded(photo, profile)
        p = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        rel = ImageCms.profileToProfile(wide, p, SRGB, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        wide.info["icc_profile"] = profile
        assert np.array_equal(np.asarray(to_srgb(wide)), np.asarray(rel))


@pytest.mark.parametrize("profile, mode, why", [
    (b"not a profile" * 20, "RGB", "unreadable profile"),
    (icc.ADOBE_RGB[:300], "RGB", "LittleCMS cannot use it"),          # cut short: its tags point past the end
    (icc.LINEAR_GREY, "RGB", "a GRAY profile on a RGB image"),
    (icc.ADOBE_RGB, "CMYK", "a RGB profile on a CMYK image"),
])
def test_a_profile_that_cannot_be_applied_falls_back_to_the_numbers_with_the_reason(photo, profile, mode, why,
                                                                                     tmp_path, caplog):
    im = photo if mode == "RGB" else photo.convert("CMYK")
    path = save(im, tmp_path / "odd.jpg", profile, quality=95)
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.images"):
        out = load_rgb(path)
    assert np.array_equal(np.asarray(out), np.asarray(to_rgb(Image.open(path))))     # the raw numbers, as before
    assert out.info[NOT_APPLIED].startswith(why) and "icc_profile" not in out.info
    assert f"{path}: its embedded colour profile is not applied: {why}" in caplog.text


def test_every_stage_that_shows_or_scores_an_original_reads_its_colours(photo, tmp_path):
    # Review thumbnails and `mlc predict` (mining scores through the same decode) read the profile.
    from mlc_pipeline.review.thumbs import thumbnail

    truth = save(photo, tmp_path / "srgb.png", None)
    adobe = save(encoded(photo, icc.ADOBE_RGB), tmp_path / "adobe.png", icc.ADOBE_RGB)
    thumbs = [Image.open(thumbnail(tmp_path / "data", digest * 64, path)) for digest, path in (("a", truth), ("b", adobe))]
    assert diff(*thumbs) < 1.5
    pytest.importorskip("fastai")
    from mlc_pipeline.model.predict import _decode

    assert diff(_decode(adobe), photo) < 0.6


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_png_colour_key_is_transparent_on_white(photo, mode, tmp_path):
    """A PNG's tRNS colour key on an RGB or grey image (one colour that means "transparent", as old
    cutout tools and logos write them) came out in its own colour, black here (the realfiles27 audit,
    #10): it goes on white, as viewers and every other kind of transparency here do."""
    im = photo.convert(mode)
    key = (0, 0, 0) if mode == "RGB" else 0
    im.paste(key, (0, 0, 60, 60))
    path = save(im, tmp_path / "keyed.png", None, transparency=key)
    shown = np.asarray(load_rgb(path))
    assert np.all(shown[:60, :60] == 255)
    assert diff(Image.fromarray(shown[60:, 60:]), photo.convert(mode).convert("RGB").crop((60, 60, *photo.size))) < 0.6
