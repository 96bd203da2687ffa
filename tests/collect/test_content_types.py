"""The Content-Type an image host sends, over real HTTP: one `image/<subtype>` (parameters allowed), or
one that says nothing (the bytes decide). A comma list, or two Content-Type headers (requests joins them
into one), is refused with a recorded reason: a browser takes the last type of such a list, so a GIF with
HTML after it sent as `image/gif, text/html` was kept, and the review app served it as a page (the
security26 audit)."""

from __future__ import annotations

import csv
import io
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from helpers import ENV, MLC

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.download import Downloader, DownloadJob
from mlc_pipeline.config import SourceSettings


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 100), (200, 30, 30)).save(out, "GIF")
    return out.getvalue()


POLYGLOT = gif() + b"<html><script>alert(document.domain)</script></html>"
# path -> the Content-Type headers sent (in order), and what the download ends as: the type recorded, or why not
CASES = {
    "list": (["image/gif, text/html"], "not-an-image:content-type=several-types"),
    "list-params": (["image/gif; q=1, text/html"], "not-an-image:content-type=several-types"),
    "twice": (["image/gif", "text/html"], "not-an-image:content-type=several-types"),
    "spaced": (["image/gif text/html"], "not-an-image:content-type=malformed"),
    "html": (["text/html; charset=utf-8"], "not-an-image:content-type=text/html"),
    "params": (["image/gif; charset=binary"], "image/gif"),
    "upper": (["Image/GIF"], "image/gif"),
    "octet": (["application/octet-stream"], "application/octet-stream"),
    "none": ([], ""),
}


class Host(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        types, _ = CASES[self.path.strip("/").split(".")[0]]
        self.send_response(200)
        for t in types:
            self.send_header("Content-Type", t)
        self.send_header("Content-Length", str(len(POLYGLOT)))
        self.end_headers()
        self.wfile.write(POLYGLOT)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_only_one_image_type_or_none_is_taken(tmp_path, host):
    jobs = [DownloadJob(i, name, f"http://{host}/{name}.gif") for i, name in enumerate(CASES)]
    results = {jobs[r.cid].photo_id: r for r in Downloader(SourceSettings(timeout_s=10), [host], tmp_path).run(jobs)}
    for name, (_, expected) in CASES.items():
        r = results[name]
        if expected.startswith("not-an-image"):
            assert (r.ok, r.reason, r.path) == (False, expected, None), (name, r)
        else:
            assert r.ok and r.content_type == expected and r.path.read_bytes() == POLYGLOT, (name, r)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"{name}.gif" for name, (_, expected) in CASES.items() if not expected.startswith("not-an-"))


def test_a_collect_records_the_refusal_and_goes_on(tmp_path, host):
    """`mlc collect` of a URL list: each refused file is a failed candidate with its reason, the run
    ends well, and the files with one image type are collected."""
    with (tmp_path / "list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["url", "label"])
        w.writeheader()
        w.writerows({"url": f"http://{host}/{name}.gif", "label": "cat"} for name in CASES)
    (tmp_path / "project.yaml").write_text(
        "data_dir: data\nsource: {kind: urls, csv: list.csv, retry: {attempts: 2, base_delay_s: 0.01, max_delay_s: 0.05}}\n"
        f"classes:\n  cat: {{queries: [cat], count: {len(CASES)}}}\nother: {{queries: [other], count: 1}}\n")
    res = subprocess.run([*MLC, "collect", "-c", str(tmp_path / "project.yaml"), "--no-progress"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    with Catalog(tmp_path / "data" / "catalog.sqlite", readonly=True) as c:
        got = {r["url"].rsplit("/", 1)[1].split(".")[0]: r for r in c.candidates()}
    for name, (_, expected) in CASES.items():
        if expected.startswith("not-an-image"):
            assert (got[name]["status"], got[name]["reason"]) == ("failed", expected), got[name]
        else:
            assert (got[name]["status"], got[name]["content_type"]) == ("downloaded", expected), got[name]
