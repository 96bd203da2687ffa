"""What the review app serves of a collected file, over real HTTP to a real `mlc review` process: the
type its bytes show (never the Content-Type its host sent, which the catalog records), and headers
under which a browser runs nothing of it (the security26 audit: a GIF with HTML after it, sent as
`image/gif, text/html`, ran as a page of the app's origin). Chromium opening it: test_review_browser.py."""

from pathlib import Path

import pytest
import requests

from helpers import free_port
from review_world import HOSTILE_TYPE, ReviewServer, make_data_root, plant_polyglot

from mlc_pipeline.catalog import Catalog

SANDBOX = "default-src 'none'; sandbox"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A built data root holding a planted polyglot, and `mlc review` over it."""
    config, cfg = make_data_root(tmp_path_factory.mktemp("served"))
    planted, _ = plant_polyglot(cfg)
    server = ReviewServer(config, free_port())
    yield cfg, server, planted
    server.stop()


def sandboxed(res: requests.Response) -> bool:
    policy = res.headers.get("Content-Security-Policy", "")
    return (policy.startswith(SANDBOX) and "frame-ancestors 'none'" in policy
            and res.headers.get("X-Content-Type-Options") == "nosniff")


def test_a_file_stored_with_a_hostile_type_is_served_as_its_bytes_show_and_sandboxed(served):
    cfg, server, planted = served
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert c.get(planted)["content_type"] == HOSTILE_TYPE        # the catalog still holds it
    res = requests.get(f"{server.url}/file/{planted}", timeout=30)
    assert res.status_code == 200 and res.headers["Content-Type"] == "image/gif", res.headers
    assert sandboxed(res), res.headers
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert res.content == Path(c.get(planted)["file_path"]).read_bytes()


def test_every_file_is_served_as_its_format_whatever_type_was_stored(served):
    """A JPEG recorded as text/html (or as nothing) is image/jpeg; a PNG and a WebP theirs."""
    cfg, server, planted = served
    from PIL import Image
    with Catalog(cfg.catalog_path) as c:
        jpeg, png, webp, untyped = c.candidates("status='accepted' AND purpose='train'")[2:6]
        c.update_fields(jpeg["id"], content_type="text/html")
        c.update_fields(untyped["id"], content_type=None)
        for row, fmt in ((png, "PNG"), (webp, "WEBP")):
            with Image.open(row["file_path"]) as im:
                im.convert("RGB").save(row["file_path"], fmt)
            c.update_fields(row["id"], content_type="text/html; charset=utf-8")
    for row, expected in ((jpeg, "image/jpeg"), (png, "image/png"), (webp, "image/webp"), (untyped, "image/jpeg")):
        res = requests.get(f"{server.url}/file/{row['id']}", timeout=30)
        assert (res.status_code, res.headers["Content-Type"]) == (200, expected), (row["id"], res.headers)
        assert sandboxed(res)


def test_a_file_whose_bytes_are_no_image_format_is_not_served(served):
    """Stored as image/jpeg, but HTML: no type to serve it as, so it is not served at all."""
    cfg, server, planted = served
    with Catalog(cfg.catalog_path) as c:
        row = c.candidates("status='accepted' AND purpose='train'")[6]
        Path(row["file_path"]).write_bytes(b"<html><script>alert(1)</script></html>")
        c.update_fields(row["id"], content_type="image/jpeg")
    res = requests.get(f"{server.url}/file/{row['id']}", timeout=30)
    assert res.status_code == 403 and "not served" in res.json()["error"]
    assert "script" not in res.text


def test_thumbnails_and_their_placeholders_are_sandboxed_too(served):
    cfg, server, planted = served
    with Catalog(cfg.catalog_path, readonly=True) as c:
        ok = c.candidates("status='accepted' AND purpose='train'")[7]
        bad = c.candidates("status='rejected'")[0]
    res = requests.get(f"{server.url}/thumb/{ok['id']}", timeout=30)
    assert res.headers["Content-Type"] == "image/jpeg" and sandboxed(res)
    res = requests.get(f"{server.url}/thumb/{planted}", timeout=30)       # the polyglot's, re-encoded
    assert res.headers["Content-Type"] == "image/jpeg" and b"<script" not in res.content and sandboxed(res)
    with Catalog(cfg.catalog_path) as c:
        c.update_fields(bad["id"], verify_reason="not-an-image")
    res = requests.get(f"{server.url}/thumb/{bad['id']}", timeout=30)
    assert res.headers["Content-Type"].startswith("image/svg+xml") and sandboxed(res)


def test_pages_keep_their_own_policy(served):
    """A page is not sandboxed (its own script runs): it keeps the framing rule alone."""
    cfg, server, planted = served
    res = requests.get(f"{server.url}/image/{planted}", timeout=30)
    assert res.status_code == 200 and res.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
