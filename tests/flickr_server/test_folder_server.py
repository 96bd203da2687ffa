"""Folder mode, the way to bring your own images: symbolic links, clear errors, and each photo's
original file name (source_file), over real HTTP with the fixture photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from helpers import FIXTURES

from mlc_pipeline.flickr_server import FlickrServer, WorldSpec, build_world
from mlc_pipeline.flickr_server.folder import FolderModeError

ANTS = FIXTURES / "hymenoptera" / "ants"


def jpgs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg")


def test_symlinked_subfolders_are_served_with_their_source_file(tmp_path, caplog):
    root = tmp_path / "photos"
    (root / "picked").mkdir(parents=True)
    os.symlink(ANTS, root / "ants")                          # a subfolder that is a link elsewhere
    os.symlink(ANTS / jpgs(ANTS)[0], root / "picked" / "one.jpg")   # a linked file
    os.symlink(root, root / "picked" / "loop")                # a loop is walked once, not forever
    os.symlink(tmp_path / "deleted.jpg", root / "picked" / "gone.jpg")   # a link to nothing: said, skipped
    spec = WorldSpec(kind="folder", folder=str(root), query_map={"ants": "ants", "picked": "picked"})
    with FlickrServer(spec) as srv:
        reply = requests.get(srv.rest_url, timeout=10, params={
            "method": "flickr.photos.search", "api_key": "k", "format": "json", "nojsoncallback": 1,
            "text": "ants", "per_page": 500, "extras": "url_t,source_file"}).json()["photos"]
        assert sorted(p["source_file"] for p in reply["photo"]) == [f"ants/{n}" for n in jpgs(ANTS)]
        entry = reply["photo"][0]
        assert requests.get(entry["url_t"], timeout=10).content == (root / entry["source_file"]).read_bytes()
        picked = {p.source_file for p in srv.world.photos if p.kind == "picked"}
        assert "picked/one.jpg" in picked
        assert {f"picked/loop/ants/{n}" for n in jpgs(ANTS)} <= picked    # through the loop link, once
        assert not any(f.startswith("picked/loop/picked/") for f in picked)
        plain = requests.get(srv.rest_url, timeout=10, params={
            "method": "flickr.photos.search", "api_key": "k", "format": "json", "nojsoncallback": 1,
            "text": "ants", "extras": "url_t"}).json()["photos"]["photo"]
        assert "source_file" not in plain[0]                   # only when asked for, as Flickr's extras
    assert "gone.jpg, a link to nothing" in caplog.text


@pytest.mark.parametrize("folder, query_map, words", [
    ("missing", {"a": "a"}, "missing does not exist"),
    ("photos", {"a": "nothere"}, "subfolder 'nothere' for query 'a' does not exist"),
    ("photos", {"a": "../.."}, "is outside"),
    ("photos", {"a": "/etc"}, "is outside"),
    ("photos", {}, "at least one query"),
])
def test_folder_mistakes_are_one_line(tmp_path, folder, query_map, words):
    (tmp_path / "photos").mkdir()
    with pytest.raises(FolderModeError) as err:
        build_world(WorldSpec(kind="folder", folder=str(tmp_path / folder), query_map=query_map))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_query_with_punctuation_finds_its_subfolder(tmp_path):
    """Tagged with query.split(), "hot-air balloon" made the tag "hotair", and search (which splits
    "hot-air" into two words) found nothing: a mapped folder a user's query could not reach."""
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink(ANTS, root / "ants")
    for query in ("carpenter-ant colony", "children's ants", "ants (formicidae)"):
        world = build_world(WorldSpec(kind="folder", folder=str(root), query_map={query: "ants"}))
        total, _ = world.search({"text": query})
        assert total == len(jpgs(ANTS)), query


def test_files_that_are_no_image_are_listed_with_why(tmp_path, caplog):
    """A user's audit: a zero-byte file and an HTML page named .jpg were skipped with a log line only,
    counted nowhere. The world lists them (path in the folder -> why), for collect's summary."""
    root = tmp_path / "photos"
    (root / "ants").mkdir(parents=True)
    os.symlink(ANTS / jpgs(ANTS)[0], root / "ants" / "real.jpg")
    (root / "ants" / "empty.jpg").write_bytes(b"")
    (root / "ants" / "page.jpg").write_text("<html>404</html>")
    os.symlink(tmp_path / "deleted.jpg", root / "ants" / "gone.jpg")
    (root / "ants" / "notes.txt").write_text("not an image name: not listed")
    world = build_world(WorldSpec(kind="folder", folder=str(root), query_map={"ants": "ants", "also": "ants"}))
    assert [p.source_file for p in world.photos] == ["ants/real.jpg"]
    assert world.unreadable == {"ants/empty.jpg": "empty file", "ants/page.jpg": "not an image",
                                "ants/gone.jpg": "a link to nothing"}
    assert "page.jpg, not an image" in caplog.text and caplog.text.count("empty.jpg, empty file") == 1
