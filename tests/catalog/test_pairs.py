"""catalog/pairs.py's review pairs: the note curate writes is the one the catalog reads."""

from mlc_pipeline.catalog.pairs import REVIEW_PAIR, review_note, review_partner


def test_the_note_curate_writes_is_the_one_read():
    assert review_note(1234, 3, 0.951) == f"{REVIEW_PAIR}1234:d=3:s=0.95"
    assert review_partner(review_note(1234, 3, 0.951)) == (1234, 3, 0.95)
    assert review_partner("near-duplicate:d=2") is None and review_partner(f"{REVIEW_PAIR}12") is None
