"""JPEGs libjpeg only warns about are rejected (curation29 audit, finding 5), and no valid JPEG is.

The damage is the audit's, done to real fixture photos: a JPEG cut short with an EOI marker appended,
zeroed stretches, bytes of the scan flipped. libjpeg decodes each with a warning and grey where the data
ran out; before jpegcheck, Pillow raised nothing and every one of them verified.
"""

import io
import random

import numpy as np
import pytest
from PIL import Image

from badfiles import FIXTURES, encode, fixture_photos
from mlc_pipeline.curate import jpegcheck
from mlc_pipeline.curate.hashing import HASH_DECODE_SIDE, inspect_file, inspect_files, view_phashes
from mlc_pipeline.curate.verify import check_image

pytestmark = pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")

DRAFT = ("L", (HASH_DECODE_SIDE, HASH_DECODE_SIDE))
ANTS = sorted((FIXTURES / "ants").glob("*.jpg"))


def flip_scan_bytes(data: bytes, count: int, seed: int) -> bytes:
    "The audit's flips.py: `count` bytes of the last three quarters of the scan XOR-ed with 0x55."
    damaged, rng = bytearray(data), random.Random(seed)
    sos = damaged.find(b"\xff\xda")
    for pos in rng.sample(range(sos + 20 + (len(damaged) - sos) // 4, len(damaged) - 10), count):
        damaged[pos] ^= 0x55
    return bytes(damaged)


def both_verdicts(path) -> tuple[str | None, str | None]:
    "check_image's reason (Pillow's full decode after a strict pass) and curate's (the strict greyscale draft)."
    return check_image(path).reason, inspect_file(path).reason


def test_a_jpeg_whose_data_ends_early_is_truncated(tmp_path):
    raw = ANTS[5].read_bytes()
    n = len(raw)
    cases = {
        "cut-then-eoi": raw[: n * 6 // 10] + b"\xff\xd9",
        "last-30-zeroed-then-eoi": raw[: n * 7 // 10] + bytes(n - n * 7 // 10 - 2) + b"\xff\xd9",
        "4k-zeroed-in-the-middle": raw[: n // 2] + bytes(4096) + raw[n // 2 + 4096:],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        assert both_verdicts(path) == ("truncated", "truncated"), name


def test_a_jpeg_with_corrupt_scan_data_is_a_decode_error(tmp_path):
    src = Image.open(ANTS[5]).convert("RGB")
    path = tmp_path / "progressive-flipped.jpg"     # odd.py's: 6 bytes of the second half XOR-ed
    data = bytearray(encode(src, "JPEG", quality=90, progressive=True))
    for pos in random.Random(3).sample(range(len(data) // 2, len(data) - 50), 6):
        data[pos] ^= 0x55
    path.write_bytes(bytes(data))
    assert both_verdicts(path) == (jpegcheck.CORRUPT_REASON,) * 2


def test_most_jpegs_with_flipped_scan_bytes_are_rejected(tmp_path):
    """The audit's measurement: of 40 fixture ants with 4 bytes of the scan flipped, 39 verified
    (35 of them visibly damaged). libjpeg notices a flip when it throws the decoder out of step (a bad
    code, data left over or missing at the end); a flip that keeps it in step decodes without a word,
    so not every one can be caught: 33 of 40 were, 4 of the 7 left visibly damaged (measured)."""
    paths = []
    for i, photo in enumerate(ANTS[:40]):
        paths.append(tmp_path / f"flipped-{i}.jpg")
        paths[-1].write_bytes(flip_scan_bytes(photo.read_bytes(), 4, i * 100 + 4))
    reasons = [r.reason for r in inspect_files(paths, workers=1)]
    assert sum(r is not None for r in reasons) >= 30, reasons
    assert set(reasons) <= {None, "truncated", jpegcheck.CORRUPT_REASON}
    assert [check_image(p).reason for p in paths] == reasons


def test_a_damaged_larger_copy_is_rejected_and_its_original_verifies(tmp_path):
    """r_keeper.sh: 2x copies of fixture ants, cut at 92 % + EOI or with 3 bytes flipped near the end,
    were kept over their intact originals (more pixels) and published."""
    paths = []
    for k, photo in enumerate(ANTS[:6]):
        im = Image.open(photo).convert("RGB")
        data = encode(im.resize((im.width * 2, im.height * 2), Image.Resampling.LANCZOS), "JPEG", quality=92)
        if k < 3:
            data = data[: int(len(data) * 0.92)] + b"\xff\xd9"
        else:
            damaged, rng = bytearray(data), random.Random(k)
            for pos in rng.sample(range(int(len(data) * .85), len(data) - 20), 3):
                damaged[pos] ^= 0x55
            data = bytes(damaged)
        paths += [photo, tmp_path / f"{photo.stem}_2x.jpg"]
        paths[-1].write_bytes(data)
    records = inspect_files(paths, workers=1)
    assert [r.ok for r in records] == [True, False] * 6
    assert {r.reason for r in records[1::2]} <= {"truncated", jpegcheck.CORRUPT_REASON}


def valid_jpegs(tmp_path, photos) -> list:
    "Every kind of valid JPEG curation meets, made from fixture photos."
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = []
    for k, photo in enumerate(photos):
        im = Image.open(photo).convert("RGB")
        kinds = {"grey": (im.convert("L"), {}), "progressive": (im, dict(progressive=True)),
                 "progressive-grey": (im.convert("L"), dict(progressive=True)), "cmyk": (im.convert("CMYK"), {}),
                 "exif6": (im, dict(exif=exif)), "adobe-rgb": (im, dict(keep_rgb=True)),
                 "444": (im, dict(subsampling=0)), "422": (im, dict(subsampling=1)),
                 "restart-markers": (im, dict(restart_marker_blocks=4)), "q100": (im, dict(quality=100)),
                 "odd-size": (im.resize((im.width // 2 + 3, im.height // 2 + 5)), {}),
                 "large": (im.resize((im.width * 7, im.height * 7)), {})}
        for name, (pic, options) in kinds.items():
            paths.append(tmp_path / f"{k}-{name}.jpg")
            pic.save(paths[-1], "JPEG", **{"quality": 90, **options})
    paths.append(tmp_path / "trailing-bytes.jpg")
    paths[-1].write_bytes(photos[0].read_bytes() + b"GARBAGE" * 100)
    paths.append(tmp_path / "two-frames.mpo")
    im = Image.open(photos[0]).convert("RGB")
    im.save(paths[-1], "MPO", save_all=True, append_images=[im.rotate(90)])
    return paths


def test_no_valid_jpeg_is_rejected(tmp_path):
    paths = valid_jpegs(tmp_path, fixture_photos()[::50])
    assert Image.open(paths[-1]).format == "MPO"
    for path in paths:
        check = check_image(path)
        assert check.ok and inspect_file(path).ok, (path.name, check.reason)
    rotated = check_image(next(p for p in paths if p.name.endswith("exif6.jpg")))
    assert rotated.height > rotated.width        # EXIF read from the strict decode's frame too


def test_a_harmless_libjpeg_warning_leaves_the_verdict_to_pillow(tmp_path):
    "An unknown JFIF revision is a warning too (TurboJPEG's strict mode stops on it); the pixels are whole."
    data = bytearray(encode(Image.open(ANTS[0]).convert("RGB"), "JPEG", quality=90))
    data[data.find(b"JFIF\x00") + 5] = 3        # JFIF 3.01
    path = tmp_path / "jfif3.jpg"
    path.write_bytes(bytes(data))
    assert jpegcheck.damage_reason("Warning: unknown JFIF revision number 3.01") is None
    assert check_image(path).ok and inspect_file(path).ok


def test_the_strict_draft_is_pillows_draft(tmp_path):
    """Curate's hashes come from the strict decode now: its greyscale draft must be the very pixels of
    Pillow's `draft("L", ...)`, so that no hash recorded before changes (every fixture, every kind)."""
    pets = sorted((FIXTURES.parent / "pets").rglob("*.jpg"))[::8]
    paths = fixture_photos() + pets + valid_jpegs(tmp_path, fixture_photos()[::40])
    kept = 0
    for path in paths:
        data = path.read_bytes()
        ours = jpegcheck.decode_strict(data, Image.open(io.BytesIO(data)), DRAFT)
        pillow = Image.open(io.BytesIO(data))
        pillow.draft(*DRAFT)
        pillow.load()
        if ours is None:        # CMYK and MPO: Pillow decodes them, after the strict pass
            assert pillow.mode == "CMYK" or path.suffix == ".mpo", path.name
            continue
        kept += 1
        assert ours.size == pillow.size and np.array_equal(np.asarray(ours), np.asarray(pillow)), path.name
        assert view_phashes(ours) == view_phashes(pillow)
        assert ours.getexif().get(0x0112, 1) == pillow.getexif().get(0x0112, 1)
    assert kept == len(paths) - sum(p.name.endswith("cmyk.jpg") or p.suffix == ".mpo" for p in paths)


def test_libjpeg_messages_map_to_reasons():
    assert jpegcheck.damage_reason("Premature end of JPEG file") == "truncated"
    assert jpegcheck.damage_reason("Corrupt JPEG data: premature end of data segment") == "truncated"
    for message in ("Corrupt JPEG data: 163 extraneous bytes before marker 0xd9", "Corrupt JPEG data: bad Huffman code",
                    "Corrupt JPEG data: found marker 0xd9 instead of RST3", "Unsupported marker type 0x1f",
                    "Inconsistent progression sequence for component 0 coefficient 1"):
        assert jpegcheck.damage_reason(message) == jpegcheck.CORRUPT_REASON, message
    for message in ("Corrupt JPEG data: bad ICC marker", "Unsupported color conversion request",
                    "Unsupported JPEG data precision 12"):
        assert jpegcheck.damage_reason(message) is None, message


def test_a_valid_jpeg_with_a_side_under_the_hash_draft_passes_when_min_side_allows_it(tmp_path):
    """curate.min_side may be set below the hash's 64 px draft request: a whole 120x48 JPEG (a fixture
    photo, shrunk) is decoded at full size then, as Pillow's draft does, not rejected for good as
    `decode-error:StopIteration` (the draft's scale search found no scale)."""
    from mlc_pipeline.curate.verify import VerifyLimits
    path = tmp_path / "small.jpg"
    with Image.open(fixture_photos()[0]) as im:
        im.convert("RGB").resize((120, 48)).save(path, quality=90)
    limits = VerifyLimits(min_side=32)
    assert jpegcheck.draft_size((120, 48), (HASH_DECODE_SIDE, HASH_DECODE_SIDE)) == (120, 48)
    record = inspect_file(path, limits)
    assert (record.reason, check_image(path, limits).reason) == (None, None), record.reason
    assert record.phash is not None
