"""`mlc predict` under hostile input: decompression bombs, memory-bounded batches, partial failures."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from badfiles import png_bomb
from helpers import MEASURED, MLC
from shapes import trained_bundle  # noqa: E402  (one tiny training shared with test_predict)

from mlc_pipeline.model.predict import predict_paths, score_with_errors  # noqa: E402

from mlc_pipeline.model.bundle import load_bundle
from mlc_pipeline.manifest import read_manifest_frame  # noqa: E402


@pytest.fixture(scope="module")
def bundle_and_images():
    manifest, bundle_dir = trained_bundle()
    df = read_manifest_frame(manifest)
    return bundle_dir, list(df[df["split"] == "test"]["abs_path"])


def test_six_bombs_are_refused_from_their_headers_and_the_rest_scored(bundle_and_images, tmp_path):
    bundle_dir, good = bundle_and_images
    bomb = png_bomb(tmp_path / "bomb0.png")
    assert bomb.stat().st_size < 400_000
    bombs = [bomb] + [(tmp_path / f"bomb{i}.png") for i in range(1, 6)]
    for b in bombs[1:5]:
        b.write_bytes(bomb.read_bytes())
    png_bomb(bombs[5], 14000)       # 196 MP: over Pillow's own error limit (179 MP), not only its warning
    res = subprocess.run(MEASURED + ["predict", str(bundle_dir), good[0], *map(str, bombs), good[1]],
                         capture_output=True, text=True, timeout=300)
    *stderr, peak = res.stderr.strip().splitlines()
    peak_mb = int(peak.split()[1]) / 1024
    assert res.returncode == 1, res.stderr[-2000:]
    model, *lines = res.stdout.strip().splitlines()
    assert model.startswith("# model bundle (created ") and len(lines) == 8
    assert all("error: too large to score: 13000x13000 pixels (169 MP), over the 64 MP limit" in line
               for line in lines[1:6])
    assert "error: too large to score: 196 MP, over the 64 MP limit" in lines[6], lines[6]
    assert "Decompression" not in res.stderr, "Pillow's own bomb text, warning or error, is not shown"
    assert "error" not in lines[0] and "error" not in lines[7], "the good images around them were scored"
    assert stderr[-1] == "mlc: 6 of 8 inputs could not be scored (listed above)"
    # torch + fastai + the model (~0.9-1.1 GB); the six bombs decoded together would add 3 GB.
    assert peak_mb < 2000, f"peak {peak_mb:.0f} MB"


def test_exit_code_is_zero_only_when_every_image_scored(bundle_and_images, tmp_path):
    bundle_dir, good = bundle_and_images
    res = subprocess.run(MLC + ["predict", "--json", str(bundle_dir), *good[:2]], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (tmp_path / "notes.jpg").write_text("not an image")
    res = subprocess.run(MLC + ["predict", "--json", str(bundle_dir), good[0], str(tmp_path / "notes.jpg")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]


def test_batches_are_bounded_by_pixels_and_scores_do_not_change(bundle_and_images):
    bundle_dir, good = bundle_and_images
    bundle = load_bundle(bundle_dir)
    paths = good[:10]
    reference, _ = score_with_errors(bundle, paths)
    calls = []
    real = bundle.learn.get_preds

    def counting(*args, dl=None, **kwargs):
        calls.append(len(dl.items))
        return real(*args, dl=dl, **kwargs)

    bundle.learn.get_preds = counting
    try:
        from PIL import Image
        with Image.open(paths[0]) as im:
            one = im.width * im.height
        chunked, errors = score_with_errors(bundle, paths, batch_pixels=3 * one)
    finally:
        del bundle.learn.get_preds
    assert not errors and max(calls) <= 3 and sum(calls) == 10, calls
    np.testing.assert_allclose(chunked, reference, atol=1e-5)


def test_a_batch_that_fails_to_score_loses_no_other_result(bundle_and_images, tmp_path):
    """Out of memory for a whole batch (simulated: a real OOM is not reproducible in a test) and an
    image the model cannot take: each image is retried alone, only the bad one gets an error."""
    bundle_dir, good = bundle_and_images
    bundle = load_bundle(bundle_dir)
    paths = good[:5]
    reference, _ = score_with_errors(bundle, paths)
    real = bundle.learn.get_preds

    def flaky(*args, dl=None, **kwargs):
        if len(dl.items) > 1:
            raise MemoryError("simulated: the batch does not fit")
        if dl.items[0].size == poison_size:
            raise RuntimeError("simulated: this image breaks the model")
        return real(*args, dl=dl, **kwargs)

    from PIL import Image
    odd = tmp_path / "odd.png"
    Image.new("RGB", (37, 41), (200, 10, 10)).save(odd)
    poison_size = (37, 41)
    bundle.learn.get_preds = flaky
    try:
        preds = predict_paths(bundle, [paths[0], paths[1], odd, paths[2], paths[3], paths[4]])
    finally:
        del bundle.learn.get_preds
    assert [p.error is not None for p in preds] == [False, False, True, False, False, False]
    assert "cannot score image: RuntimeError" in preds[2].error
    got = np.array([[p.probs[c] for c in bundle.vocab] for i, p in enumerate(preds) if i != 2])
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_a_max_pixels_above_pillows_limit_is_the_limit_while_decoding(tmp_path):
    """A 196 MP image under --max-pixels 250 MP was refused with Pillow's 'decompression bomb DOS
    attack' (its own limit, 179 MP, applies in the header read and the decode): the verify22 audit.
    Pillow's limit is raised to the user's for the decode only, and put back."""
    from PIL import Image
    from mlc_pipeline.model.predict import pillow_limit_at_least
    bomb, default = png_bomb(tmp_path / "bomb.png", 14000), Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    with pillow_limit_at_least(250_000_000):
        with Image.open(bomb) as im:                 # the header: the decode is load_rgb's, as the default
            assert im.size == (14000, 14000)
    assert Image.MAX_IMAGE_PIXELS == default
    with pillow_limit_at_least(64_000_000):          # the default 64 MP: Pillow's own limit stays
        assert Image.MAX_IMAGE_PIXELS == default
