"""The review app's thumbnails (review/thumbs.py): made once per content, never from a dangerous file."""

from __future__ import annotations

from PIL import Image

from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.review.thumbs import thumbnail


def test_a_file_that_crashed_a_decoder_in_curation_is_never_decoded_for_a_thumbnail(tmp_path):
    """It killed a worker process during curation; decoded in the review server it would kill the app
    (and again each time its queue is opened). A good file gets its thumbnail, once."""
    good = tmp_path / "good.jpg"
    Image.new("RGB", (400, 300), (200, 30, 30)).save(good)
    sha = sha256_file(good)
    assert thumbnail(tmp_path / "data", sha, str(good), "decode-error:WorkerCrashed") is None
    assert not (tmp_path / "data").exists()                         # nothing decoded, nothing cached
    made = thumbnail(tmp_path / "data", sha, str(good))
    with Image.open(made) as im:
        assert max(im.size) == 160
