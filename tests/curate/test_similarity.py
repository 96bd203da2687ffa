import numpy as np
import pytest
from PIL import Image

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
