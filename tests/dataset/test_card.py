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


def test_the_licence_links_to_its_deed_and_the_source_to_the_photos_page():
    """A user's audit: ATTRIBUTION.md said "as the CC licences require" with neither a licence link
    nor the photo's page (the source was the static image URL). A URL that could end or break the
    Markdown link, or is not http(s), stays plain text."""
    rows = [{"path": "images/cat/1.jpg", "title": "t", "owner": "o", "license": "CC BY 2.0", "license_id": "4",
             "license_url": "https://creativecommons.org/licenses/by/2.0/", "url": "https://live.staticflickr.com/1/1_s.jpg",
             "page": "https://www.flickr.com/photos/12@N01/1"},
            {"path": "images/cat/2.jpg", "title": "t", "owner": "o", "license": "CC0", "license_id": "9",
             "license_url": "javascript:alert(1)", "url": "http://127.0.0.1:9/x(1).jpg", "page": ""}]
    table = [line for line in attribution(rows, "v1").splitlines() if line.startswith("| images/")]
    assert table[0].endswith("| [CC BY 2.0](https://creativecommons.org/licenses/by/2.0/) | "
                             "[https://www.flickr.com/photos/12@N01/1](https://www.flickr.com/photos/12@N01/1) |")
    assert table[1].endswith("| CC0 | http://127.0.0.1:9/x(1).jpg |")
