"""A version's ATTRIBUTION.md (dataset/card.py) with hostile Flickr text."""

from __future__ import annotations

from mlc_pipeline.dataset.card import attribution


def test_a_hostile_title_stays_in_its_own_cell_and_hides_nothing():
    rows = [{"path": "images/cat/1.jpg", "title": "a|b\r\nc <!-- hide", "owner": "x\\|y\u2028z & co",
             "license": "CC BY 2.0", "url": "https://www.flickr.com/photos/x/1"},
            {"path": "images/cat/2.jpg", "title": "<script>alert(1)</script>", "owner": "o", "license": "CC BY 2.0",
             "url": "https://www.flickr.com/photos/o/2"}]
    text = attribution(rows, "v1")
    table = [line for line in text.splitlines() if line.startswith("| images/")]
    assert len(table) == 2 and len(text.splitlines()) == 6 + 2       # title, blank, note, blank, header, rule
    for line in table:                # five cells: no pipe left unescaped inside a cell
        assert len(line.replace("\\\\", "").replace("\\|", "").split("|")) == 7, line
    assert "<" not in text.split("\n", 1)[1] and "&lt;!-- hide" in table[0] and "&lt;script&gt;" in table[1]
    assert "a\\|b c &lt;!-- hide" in table[0] and "x\\\\\\|y z &amp; co" in table[0]
