"""Folder mode, the way to bring your own images: symbolic links, clear errors, and each photo's
original file name (source_file), over real HTTP with the fixture photos."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from camera_files import camera_folder
from helpers import ENV, FIXTURES, MLC

from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec, build_world
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
    os.symlink("/dev/zero", root / "ants" / "zero.jpg")     # the security26 audit: called "a link to nothing"
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", root / "ants" / "fifo.jpg")
    (root / "ants" / "notes.txt").write_text("not an image name: not listed")
    world = build_world(WorldSpec(kind="folder", folder=str(root), query_map={"ants": "ants", "also": "ants"}))
    assert [p.source_file for p in world.photos] == ["ants/real.jpg"]
    assert world.unreadable == {"ants/empty.jpg": "empty file", "ants/page.jpg": "not an image",
                                "ants/gone.jpg": "a link to nothing",
                                "ants/zero.jpg": "a link to something that is not a regular file",
                                "ants/fifo.jpg": "a link to something that is not a regular file"}
    assert "page.jpg, not an image" in caplog.text and caplog.text.count("empty.jpg, empty file") == 1


def search_urls(rest_url: str, text: str) -> dict[str, str]:
    """source_file -> url_t of each photo a search finds."""
    reply = requests.get(rest_url, timeout=10, params={
        "method": "flickr.photos.search", "api_key": "k", "format": "json", "nojsoncallback": 1,
        "text": text, "per_page": 500, "extras": "url_t,source_file"}).json()["photos"]["photo"]
    return {p["source_file"]: p["url_t"] for p in reply}


def padded_photo(path: Path) -> Path:
    """A real photo with 300 KB of noise after its end: still an image, and several chunks long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((ANTS / jpgs(ANTS)[0]).read_bytes() + os.urandom(300_000))
    return path


def test_a_big_file_is_sent_in_chunks_never_read_whole(tmp_path):
    """The security26 audit: the server read a file whole to serve it (2 GB of memory for a 2 GB
    file, and a copy per download at once). `mlc serve-flickr`, which sets no size limit, now sends
    a 512 MiB file to three clients at once without holding it."""
    root = tmp_path / "photos"
    big = root / "ants" / "big.jpg"
    padded = padded_photo(root / "ants" / "padded.jpg")
    shutil.copy(ANTS / jpgs(ANTS)[0], big)
    os.truncate(big, 512 * 1024**2)                         # a JPEG's header, then sparse zeros
    server = subprocess.Popen([*MLC, "serve-flickr", "--port", "0", "--folder", str(root), "--map", "ants=ants"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(2)]
        rest_url = lines[1].split(":", 1)[1].strip()
        urls = search_urls(rest_url, "ants")

        def first_megabyte(url: str) -> tuple[str, bytes]:
            with requests.get(url, timeout=60, stream=True) as reply:
                return reply.headers["Content-Length"], next(reply.iter_content(1 << 20))

        with ThreadPoolExecutor(3) as pool:
            starts = list(pool.map(first_megabyte, [urls["ants/big.jpg"]] * 3))
        with open(big, "rb") as f:
            head = f.read(len(starts[0][1]))
        assert starts == [(str(512 * 1024**2), head)] * 3
        assert requests.get(urls["ants/padded.jpg"], timeout=10).content == padded.read_bytes()
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
        assert peak_mb < 300, f"the server peaked at {peak_mb:.0f} MB sending a 512 MiB file thrice"
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.parametrize("fault", ["truncated", "dropped", "oversize", "trickle", "octet"])
def test_image_faults_apply_to_a_file_sent_in_chunks(tmp_path, fault):
    """Each image fault on a folder-mode file, which is read from disk as it is sent (several chunks)."""
    padded = padded_photo(tmp_path / "photos" / "ants" / "padded.jpg")
    original = padded.read_bytes()
    spec = WorldSpec(kind="folder", folder=str(tmp_path / "photos"), query_map={"ants": "ants"})
    with FlickrServer(spec, FaultSpec(**{fault: 1.0}, trickle_ms=50)) as srv:
        url = search_urls(srv.rest_url, "ants")["ants/padded.jpg"]
        if fault == "trickle":
            started = time.monotonic()
            with requests.get(url, timeout=10, stream=True) as reply:
                assert reply.headers["Content-Length"] == str(len(original))
                assert reply.raw.read(3) == original[:3] and time.monotonic() - started >= 0.1
        elif fault == "dropped":
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                requests.get(url, timeout=10).content
            assert requests.get(url, timeout=10).content == original       # then it is served
        else:
            reply = requests.get(url, timeout=10)
            body, ctype = reply.content, reply.headers["Content-Type"]
            if fault == "truncated":
                assert (body, ctype) == (original[: int(len(original) * 0.6)], "image/jpeg")
            elif fault == "oversize":
                assert "Content-Length" not in reply.headers and len(body) == 25 * 1024 * 1024
                assert body.startswith(original) and not body[len(original):].strip(b"\0")
            else:
                assert (body, ctype) == (original, "application/octet-stream")
        assert srv.stats()["faults_injected"][fault] >= 1


def test_camera_and_web_formats_are_served_as_their_type_and_the_rest_counted(tmp_path, caplog):
    """The realfiles27 audit: a 196 MP PNG (25 KB) stopped the listing with Pillow's traceback, naming
    no file (#2); .tif/.tiff/.jfif and files without an extension were left out without a word, and
    HEIC too (#6); a WebP, BMP or TIFF was sent as image/jpeg, and recorded so (#10)."""
    import logging
    import warnings
    caplog.set_level(logging.INFO)
    served = camera_folder(tmp_path / "photos")
    spec = WorldSpec(kind="folder", folder=str(tmp_path / "photos"), query_map={"ants": "ants"})
    with warnings.catch_warnings(record=True) as raised, FlickrServer(spec) as srv:
        warnings.simplefilter("always")
        urls = search_urls(srv.rest_url, "ants")
        assert set(urls) == set(served)
        for name, url in urls.items():
            reply = requests.get(url, timeout=10)
            assert (reply.headers["Content-Type"], reply.content) == (served[name], (tmp_path / "photos" / name).read_bytes())
        unreadable = srv.world.unreadable
    assert not [w for w in raised if issubclass(w.category, Image.DecompressionBombWarning)]
    size = (tmp_path / "photos" / "ants" / "pano.png").stat().st_size
    assert unreadable == {
        "ants/pano.png": f"too large to open (decompression-bomb): 196 MP in {size} bytes, over the 179 MP Pillow opens",
        "ants/IMG_0002.HEIC": "unsupported format (HEIC): not served",
        "ants/IMG_0003.jpg": "unsupported format (HEIF, brand heic): not served",
        "ants/drawing.svg": "unsupported format (SVG): not served"}
    assert f"skipping {tmp_path / 'photos' / 'ants' / 'pano.png'}, too large to open" in caplog.text
    assert ("folder mode: 3 file(s) left out, in a format not served here (HEIC 1, HEIF, brand heic 1, SVG 1): "
            "ants/IMG_0002.HEIC, ants/IMG_0003.jpg, ants/drawing.svg") in caplog.text
    assert "big.png has 100 MP (10000x10000): served; curation refuses" in caplog.text


def test_serve_flickr_names_a_decompression_bomb_and_serves_the_rest(tmp_path):
    """`mlc serve-flickr --folder` ended with a traceback on a 196 MP PNG (the realfiles27 audit, #2)."""
    served = camera_folder(tmp_path / "photos")
    server = subprocess.Popen([*MLC, "serve-flickr", "--port", "0", "--folder", str(tmp_path / "photos"),
                               "--map", "ants=ants"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert first == f"Offline Flickr serving {len(served)} photos\n", err[-2000:]
    assert "Traceback" not in err and "DOS attack" not in err, err[-2000:]
    assert "pano.png, too large to open (decompression-bomb): 196 MP" in err
