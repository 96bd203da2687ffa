"""The HTML report's grids of ORIGINAL files (duplicate groups, quarantine, mined hard negatives) show
each file as the pipeline reads it: an EXIF-turned photo upright, a cutout on white, a 16-bit PNG
with its picture (audit realfiles27 #4); and a file over curation's limits is never decoded, only
named (audit realfiles27 #5: a quarantined 100 MP PNG took `mlc inspect --html` to 885 MB). Real
fixture photos, a real curate, the thumbnails decoded back from the page's data: URIs."""

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from badfiles import png_bomb
from helpers import ENV, FIXTURES

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate, limits_of
from mlc_pipeline.images import load_rgb
from mlc_pipeline.report.analysis import mining_section
from mlc_pipeline.report.html import thumbnail
from mlc_pipeline.report.inspect import write_html_report

ANTS = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg"))
# EXIF orientation tag -> how the photo is stored so that a viewer, applying the tag, shows it upright
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
GROWTH_MB = 60      # a report's peak RSS may grow by this much at most (decoding 72 MP as RGB: ~280 MB)


def landscape(k: int):
    "The k-th fixture ant photo that is clearly wider than tall (so a turned one shows)."
    return [p for p in ANTS if (lambda s: s[0] > 1.25 * s[1])(Image.open(p).size)][k]


def exif_turned(src, dest, tag: int):
    "The photo stored turned, with the EXIF orientation tag that turns it back (as a phone writes it)."
    exif = Image.Exif()
    exif[0x0112] = tag
    Image.open(src).convert("RGB").transpose(STORED_AS[tag]).save(dest, "JPEG", quality=95, exif=exif)
    return dest


def cutout(src, dest, size=None):
    "An RGBA cutout of the photo: an opaque ellipse, black under the transparent corners (as cutout tools write)."
    im = Image.open(src).convert("RGB")
    im = im.resize(size) if size else im
    mask = Image.new("L", im.size, 0)
    ImageDraw.Draw(mask).ellipse((im.width // 6, im.height // 6, im.width * 5 // 6, im.height * 5 // 6), fill=255)
    rgba = Image.composite(im, Image.new("RGB", im.size), mask).convert("RGBA")
    rgba.putalpha(mask)
    rgba.save(dest, "PNG")
    return dest


def grey16(src, dest, size=None):
    "The photo as a 16-bit greyscale PNG (full 16-bit range)."
    im = Image.open(src).convert("L")
    im = im.resize(size) if size else im
    Image.fromarray(np.asarray(im).astype(np.uint16) * 257).save(dest, "PNG")
    assert Image.open(dest).mode.startswith("I;16")
    return dest


def big_png(dest, width: int, height: int):
    "A black greyscale PNG, ~100 KB on disk (badfiles.png_bomb), its size checked from its header."
    png_bomb(dest, width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)     # the header only, to check it
        assert Image.open(dest).size == (width, height)
    return dest


def thumbs(page: str) -> dict[str, Image.Image]:
    "Caption -> the thumbnail decoded from its data: URI."
    found = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)" alt="([^"]*)">', page)
    return {html.unescape(alt): Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB") for b64, alt in found}


def shown(page: str, caption_start: str) -> Image.Image:
    return next(im for cap, im in thumbs(page).items() if cap.startswith(caption_start))


def placeholder(page: str, caption_start: str) -> str:
    "The text of the placeholder a file got instead of a thumbnail."
    return re.search(r'<div class="broken">([^<]*)</div><figcaption>' + re.escape(html.escape(caption_start)), page).group(1)


def assert_upright(thumb: Image.Image, upright_src):
    "The thumbnail is the upright photo: its shape, and its pixels far closer to it than to it turned."
    ref = load_rgb(upright_src, max_side=224)
    ref.thumbnail((112, 112))
    assert abs(thumb.width - ref.width) <= 1 and abs(thumb.height - ref.height) <= 1, (thumb.size, ref.size)
    a = np.asarray(thumb.resize(ref.size), dtype=float)
    right = np.abs(a - np.asarray(ref, dtype=float)).mean()
    turned = np.abs(a - np.asarray(ref.transpose(Image.Transpose.ROTATE_180), dtype=float)).mean()
    assert right < 12 and right < turned / 2, (right, turned)


def assert_on_white(thumb: Image.Image, src):
    "The cutout's transparent corners are white, its opaque middle the photo."
    px = np.asarray(thumb, dtype=float)
    for y, x in ((1, 1), (1, -2), (-2, 1), (-2, -2)):
        assert px[y, x].min() > 235, px[y, x]                    # was black: the RGB under alpha 0
    photo = np.asarray(Image.open(src).convert("RGB").resize(thumb.size), dtype=float)
    h, w = px.shape[:2]
    middle = np.s_[h * 2 // 5:h * 3 // 5, w * 2 // 5:w * 3 // 5]
    assert np.abs(px[middle] - photo[middle]).mean() < 12


def assert_grey16(thumb: Image.Image, src):
    "The 16-bit PNG shows its picture (it was a white square), as the 8-bit photo does."
    want = np.asarray(Image.open(src).convert("L").resize(thumb.size), dtype=float)
    got = np.asarray(thumb.convert("L"), dtype=float)
    assert got.std() > 20 and abs(got.mean() - want.mean()) < 4 and np.abs(got - want).mean() < 10


def report_in_child(code: str) -> dict:
    """Run `code` (which sets `page`) in a fresh interpreter: the page, its stderr, and how far the
    process's peak RSS grew while the code ran (the imports before it do not count). The peak is the
    process image's own (VmHWM): getrusage's ru_maxrss keeps the forking pytest's peak across exec."""
    script = ("import json, re\nfrom mlc_pipeline.report.inspect import write_html_report\n"
              "from mlc_pipeline.report.analysis import mining_section\nfrom mlc_pipeline.config import parse_config\n"
              "from pathlib import Path\n"
              "peak = lambda: int(re.search(r'VmHWM:\\s*(\\d+) kB', Path('/proc/self/status').read_text()).group(1))\n"
              "before = peak()\n" + code + "\ngrew = peak() - before\n"
              "print(json.dumps({'page': page, 'grew_mb': grew / 1024}))\n")
    res = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return {**json.loads(res.stdout.splitlines()[-1]), "stderr": res.stderr}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """Downloads curated for real: an upright photo and its EXIF-turned copy (duplicates), a small
    cutout and a small 16-bit PNG (quarantined as too-small: shown), a 10000x10000 PNG (quarantined
    as a decompression bomb: never decoded)."""
    tmp = tmp_path_factory.mktemp("thumbs")
    config = {"data_dir": str(tmp / "data"), "classes": {"ants": {"queries": ["ants"], "count": 10}},
              "other": {"queries": ["scenery"], "count": 10}, "curate": {"min_side": 96}}
    (tmp / "config.json").write_text(json.dumps(config))
    cfg = parse_config(config)
    cfg.data_dir.mkdir()
    raw = tmp / "raw"
    raw.mkdir()
    up = shutil.copyfile(landscape(0), raw / "up.jpg")
    files = {"up": up, "rot6": exif_turned(up, raw / "rot6.jpg", 6), "x": shutil.copyfile(landscape(1), raw / "x.jpg"),
             "cut": cutout(landscape(2), raw / "cut.png", (90, 64)), "g16": grey16(landscape(3), raw / "g16.png", (90, 64)),
             "big": big_png(raw / "big.png", 10_000, 10_000)}
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        for pid, f in files.items():
            c.upsert_found([Found("flickr", pid, "train", "ants", "ants", f"http://h/{pid}", "url_m", None, None, 4,
                                  "CC BY 2.0", "o", "owner", "t", None, None, "ants")], run)
            c.set_status(c.get_by_photo("flickr", pid)["id"], "downloaded", None, run, "download", file_path=str(f))
    curate(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        reasons = {pid: c.get_by_photo("flickr", pid)["verify_reason"] for pid in files}
        assert c.get_by_photo("flickr", "rot6")["status"] == "duplicate" or c.get_by_photo("flickr", "up")["status"] == "duplicate"
    assert reasons["cut"] == reasons["g16"] == "too-small" and reasons["big"] == "decompression-bomb", reasons
    return tmp, cfg, write_html_report(cfg, tmp / "report.html").read_text()


def test_a_duplicate_group_shows_an_exif_turned_photo_upright(curated):
    _, _, page = curated
    groups = page[page.index("id='duplicates'"):page.index("id='quarantine'")]
    for pid in ("up", "rot6"):          # the copy kept and the one dropped, whichever is which
        thumb = next(im for cap, im in thumbs(groups).items() if re.match(rf"(kept |rejected in review )?{pid}\b", cap))
        assert_upright(thumb, landscape(0))


def test_quarantine_shows_a_cutout_on_white_and_a_16_bit_png_as_its_picture(curated):
    _, _, page = curated
    quarantine = page[page.index("id='quarantine'"):page.index("id='rejections'")]
    assert_on_white(shown(quarantine, "cut: too-small"), landscape(2))
    assert_grey16(shown(quarantine, "g16: too-small"), landscape(3))


def test_a_quarantined_decompression_bomb_is_named_never_decoded(curated):
    """The 100 MP PNG curation refused: a placeholder with the reason, no Pillow warning, and the
    report's memory does not grow by a decoded image (it grew ~400 MB before)."""
    tmp, _, _ = curated
    out = report_in_child(f"page = write_html_report(parse_config(json.loads(Path({str(tmp / 'config.json')!r})"
                          f".read_text())), {str(tmp / 'child.html')!r}).read_text()")
    assert placeholder(out["page"], "big: decompression-bomb") == "not decoded: decompression-bomb"
    assert "DecompressionBombWarning" not in out["stderr"]
    assert out["grew_mb"] < GROWTH_MB, out["grew_mb"]


def mined_bundle(tmp_path, files: dict):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    lines = ["candidate_id,photo_id,score,accepted_as,decision,file"]
    lines += [f"{i},{pid},0.9,ants,added,{f}" for i, (pid, f) in enumerate(files.items())]
    (bundle / "mined.csv").write_text("\n".join(lines) + "\n")
    (bundle / "review.csv").write_text("candidate_id,photo_id,label,score,file\n")
    return bundle


def test_mined_negatives_show_as_the_model_scored_them(tmp_path):
    "Pool files as downloaded: turned ones upright (tags 3, 6, 8), a cutout on white, a 16-bit PNG."
    files = {f"rot{tag}": exif_turned(landscape(k), tmp_path / f"rot{tag}.jpg", tag) for k, tag in enumerate((3, 6, 8))}
    files |= {"cut": cutout(landscape(3), tmp_path / "cut.png"), "g16": grey16(landscape(4), tmp_path / "g16.png")}
    page = mining_section([(1, mined_bundle(tmp_path, files))])
    assert "5 hard negatives added" in page
    for k, tag in enumerate((3, 6, 8)):
        assert_upright(shown(page, f"rot{tag}: taken for ants"), landscape(k))
    assert_on_white(shown(page, "cut: taken for ants"), landscape(3))
    assert_grey16(shown(page, "g16: taken for ants"), landscape(4))


def test_a_mined_file_over_curations_pixel_limit_is_not_decoded(tmp_path):
    """A file whose header is over curation's 64 MP (a 9000x8000 PNG, under Pillow's own warning) is
    named by the reason curation gives it, from its header alone: the page's memory stays flat."""
    files = {"p0": shutil.copyfile(landscape(0), tmp_path / "p0.jpg"), "huge": big_png(tmp_path / "huge.png", 9000, 8000)}
    bundle = mined_bundle(tmp_path, files)
    out = report_in_child(f"page = mining_section([(1, Path({str(bundle)!r}))])")
    assert placeholder(out["page"], "huge: taken for ants") == "not decoded: decompression-bomb"
    assert_upright(shown(out["page"], "p0: taken for ants"), landscape(0))
    assert out["grew_mb"] < GROWTH_MB, out["grew_mb"]


def test_a_file_over_the_configured_byte_limit_or_that_crashed_a_decoder_is_not_decoded(tmp_path):
    """The limits are the config's (`limits_of`, as curation applies them), and a quarantine reason the
    review app never decodes for (`decode-error:WorkerCrashed`: it killed a decoder) is obeyed too,
    while a photo curation refused only as too small is shown."""
    photo = shutil.copyfile(landscape(0), tmp_path / "p.jpg")
    tight = limits_of(parse_config({"data_dir": str(tmp_path), "classes": {"ants": {"queries": ["ants"], "count": 1}},
                                    "other": {"queries": ["scenery"], "count": 1}, "source": {"max_image_bytes": 1024}}))
    assert thumbnail(photo, limits=tight) == (None, "not decoded: file-too-large")
    assert thumbnail(photo, reason="decode-error:WorkerCrashed") == (None, "not decoded: decode-error:WorkerCrashed")
    src, why = thumbnail(photo, reason="too-small")
    assert why is None
    assert_upright(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), landscape(0))


def test_the_mining_gallery_decodes_within_the_configs_limits_not_curations_defaults(tmp_path):
    """The gallery took curation's default limits whatever the config said (fix-reportthumbs left it):
    a config that tightens them (or raises curate.max_pixels) must be the one the page obeys."""
    files = {"p0": shutil.copyfile(landscape(0), tmp_path / "p0.jpg")}
    tight = limits_of(parse_config({"data_dir": str(tmp_path), "classes": {"ants": {"queries": ["ants"], "count": 1}},
                                    "other": {"queries": ["scenery"], "count": 1}, "source": {"max_image_bytes": 1024}}))
    bundle = mined_bundle(tmp_path, files)
    assert placeholder(mining_section([(1, bundle)], limits=tight), "p0: taken for ants") == "not decoded: file-too-large"
    assert_upright(shown(mining_section([(1, bundle)]), "p0: taken for ants"), landscape(0))
