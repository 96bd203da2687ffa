"""Where curation puts a rejected file (curate.stage.quarantine, layout.quarantine_destination)."""

from __future__ import annotations

from mlc_pipeline.curate.stage import quarantine
from mlc_pipeline.layout import DataLayout


def test_the_same_photo_id_from_two_sources_keeps_both_files(tmp_path):
    """Photo ids repeat across sources (flickr and local are both numeric); quarantined by bare
    name under one reason, the second file replaced the first."""
    layout = DataLayout(tmp_path)
    files = [layout.raw(source) / "45" / "12345.jpg" for source in ("flickr", "local")]
    for i, path in enumerate(files):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"file %d" % i)
    moved = [quarantine(path, tmp_path, "too-small:12x12") for path in files]
    assert moved == [layout.quarantine("too-small") / source / "45" / "12345.jpg" for source in ("flickr", "local")]
    assert [m.read_bytes() for m in moved] == [b"file 0", b"file 1"]
    # quarantined again for another reason, it keeps its place below the reason
    again = quarantine(moved[1], tmp_path, "truncated")
    assert again == layout.quarantine("truncated") / "local" / "45" / "12345.jpg" and again.read_bytes() == b"file 1"
    assert layout.quarantined("12345.jpg") == sorted([moved[0], again])


def test_a_photos_files_are_found_at_its_places_only(tmp_path):
    """What a takedown deletes whatever its bytes (a copy set aside damaged): the photo's file under
    raw/ and under every quarantine reason; never another source's photo of the same id, another id
    in the same shard, or a bare-named file of the old quarantine layout."""
    layout = DataLayout(tmp_path)
    mine = [layout.raw("local") / "45" / "12345.jpg", layout.quarantine("truncated") / "local" / "45" / "12345.jpg",
            layout.quarantine("too-small") / "local" / "45" / "12345.png"]
    others = [layout.raw("flickr") / "45" / "12345.jpg", layout.raw("local") / "45" / "112345.jpg",
              layout.quarantine("truncated") / "12345.jpg", layout.quarantine("truncated") / "flickr" / "45" / "12345.jpg"]
    for path in mine + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert layout.photo_files("local", "12345") == sorted(mine[:1]) + sorted(mine[1:])
    assert [layout.is_photo_file(p, "local", "12345") for p in mine + others] == [True] * 3 + [False] * 4
    assert not layout.is_photo_file(tmp_path.parent / "raw" / "local" / "45" / "12345.jpg", "local", "12345")
