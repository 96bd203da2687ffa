"""The review app over HTTP: concurrent clients, the safety model, the action rules, and the first
page's time on a generated catalog of 100,000 candidates. Every server is a real `mlc review` process
(or the app in-process, through FastAPI's TestClient). The actions, filters, concurrency and `mlc build`
run on both catalog backends: SQLite and a real PostgreSQL server (conftest's `postgres_server`)."""

import html
import json
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from PIL import Image

from helpers import free_port
from review_world import ReviewServer, make_data_root, plant_review_list

from mlc_pipeline.catalog import overrides as co
from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.manifest import read_manifest


def post(session, url, body, client="t1"):
    return session.post(url, json=body, headers={"X-MLC-Client": client}, timeout=60)


@pytest.fixture
def root(tmp_path, request):
    """A built data root; its catalog on SQLite, or on PostgreSQL where a test parametrizes `root`
    (indirect) with "postgresql"."""
    settings = {}
    if getattr(request, "param", "sqlite") == "postgresql":
        settings = {"catalog": {"url": request.getfixturevalue("pg_url")}}
    return make_data_root(tmp_path, settings)


def first_accepted(cfg, label):
    with Catalog(cfg.catalog_path, readonly=True) as c:
        return c.candidates("status='accepted' AND purpose='train' AND curated_label=?", (label,))[0]


@pytest.mark.parametrize("root, processes", [("sqlite", 1), ("sqlite", 2), ("postgresql", 2)], indirect=["root"])
def test_two_clients_act_on_one_image(root, processes):
    """Two clients, on one `mlc review` process or on two over one data root (two writers of one SQLite
    file, or two connections to one PostgreSQL catalog), relabel the same image at once: every action
    is recorded, the last write wins, and no catalog row is lost."""
    config, cfg = root
    target = first_accepted(cfg, "ants")
    with Catalog(cfg.catalog_path, readonly=True) as c:
        before = c.candidates()
    servers = [ReviewServer(config, free_port()) for _ in range(processes)]
    servers = servers * (3 - processes)          # one server per client
    plans = {"A": [{"action": "relabel", "labels": ["ants", "bees"]}, {"action": "relabel", "labels": ["bees"]}] * 10,
             "B": [{"action": "relabel", "labels": ["other"]}, {"action": "relabel", "labels": ["ants"]}] * 10}
    answers: dict[str, list] = {"A": [], "B": []}
    start = threading.Barrier(2)

    def client(name, server):
        with requests.Session() as s:
            start.wait()
            for body in plans[name]:
                answers[name].append(post(s, server.url + "/api/action", {"id": target["id"], "reason": name, **body},
                                          client=name))

    try:
        threads = [threading.Thread(target=client, args=(n, s)) for n, s in zip("AB", servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        outputs = [s.stop() for s in servers[:processes]]
    for name in "AB":
        assert [r.status_code for r in answers[name]] == [200] * 20, (answers[name][0].text, outputs)
    with Catalog(cfg.catalog_path) as c:
        acts = co.actions(c, target["id"])
        override = co.override_of(c, target["id"])
        after = c.candidates()
    assert len(acts) == 40 and sorted({a["reason"] for a in acts}) == ["A", "B"]
    assert sorted(a["action_id"] for r in answers.values() for a in (x.json() for x in r)) == [a["id"] for a in acts]
    # interleaved, not one client after the other: both wrote while the other was writing
    order = "".join(a["reason"] for a in acts)
    assert "AB" in order and "BA" in order, order
    last = acts[-1]["detail"]["labels"]
    assert override["labels"] == (None if last == "ants" else last)       # ants is its curated label
    # each action's before-state is the previous action's after-state: no write was lost between them
    for prev, cur in zip(acts, acts[1:]):
        assert json.loads(cur["before_state"]) == json.loads(prev["after_state"])
    assert after == before                   # no row lost, and review never edits a candidate's row


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_loopback_guards(root):
    config, cfg = root
    target = first_accepted(cfg, "bees")
    with Catalog(cfg.catalog_path, readonly=True) as c:
        dup = c.candidates("status='duplicate' AND reason LIKE 'near-%'")[0]
        tiny = c.candidates("reason='too-small'")[0]
    server = ReviewServer(config, free_port())
    try:
        url = server.url + "/api/action"
        body = {"id": target["id"], "action": "reject", "reason": "x"}
        assert requests.get(server.url + "/", headers={"Host": "evil.example:80"}).status_code == 400   # DNS rebinding
        assert requests.get(server.url + "/", headers={"Host": "127.0.0.1.evil.example"}).status_code == 400
        assert requests.get(server.url + "/", headers={"Host": "localhost:9000"}).status_code == 200  # an SSH tunnel
        for page in ("/", f"/image/{target['id']}", "/nope"):     # never framed by another site: no clickjacking
            headers = requests.get(server.url + page).headers
            assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
        assert requests.post(url, json=body).status_code == 403                      # a plain form/fetch from a page
        assert requests.post(url, json=body, headers={"X-MLC-Client": "t", "Origin": "http://evil.example"}
                             ).status_code == 403
        assert post(requests, url, body).status_code == 200
        # the rules: a second reject, an unknown label, 'other' with a class, a probe relabel are refused
        assert post(requests, url, body).json()["error"] == "already out of the dataset"
        for labels in (["wasps"], ["other", "bees"]):
            res = post(requests, url, {"id": target["id"], "action": "relabel", "labels": labels})
            assert res.status_code == 409, res.text
        res = post(requests, url, {"id": dup["id"], "action": "not-duplicate", "reason": "a different photo"})
        assert res.status_code == 200 and res.json()["state"]["include"] == "accepted"
        assert post(requests, url, {"id": tiny["id"], "action": "restore"}).status_code == 200   # a policy reason
        # the takedown: needs a reason, deletes the file, is final
        assert post(requests, url, {"id": target["id"], "action": "remove"}).status_code == 400
        res = post(requests, url, {"id": target["id"], "action": "remove", "reason": "owner asked"})
        assert res.status_code == 200 and res.json()["removed"] == 1 and "v1" in res.json()["published_in"]
        assert not os.path.exists(target["file_path"])
        assert post(requests, server.url + "/api/undo", {"id": target["id"], "action_id": 1}).status_code == 409
        assert post(requests, url, {"id": target["id"], "action": "restore"}).status_code == 409
    finally:
        server.stop()
    res = build_dataset(cfg)
    rows = {r["candidate_id"]: r for r in read_manifest(res.path / "manifest.csv")}
    assert str(target["id"]) not in rows and str(dup["id"]) in rows and str(tiny["id"]) in rows


def test_an_app_bound_to_another_loopback_address_answers_there(root):
    """`--host 127.0.0.2` is loopback (no token), so its own address is a Host the app accepts, as the
    standard loopback names are; any other address still is not. (Every request was 400.)"""
    config, cfg = root
    port = free_port()
    server = ReviewServer(config, port, host="127.0.0.2")
    try:
        assert server.url == f"http://127.0.0.2:{port}"
        assert requests.get(server.url + "/").status_code == 200
        assert requests.get(server.url + "/", headers={"Host": f"localhost:{port}"}).status_code == 200
        for other in ("127.0.0.3", f"127.0.0.3:{port}", "evil.example"):
            assert requests.get(server.url + "/", headers={"Host": other}).status_code == 400, other
    finally:
        out = server.stop()
    assert f"http://127.0.0.2:{port}/" in out and "token" not in out, out


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_an_app_on_ipv6_loopback_prints_a_url_that_works(root):
    """`--host ::1` printed http://::1:8787/, which is no URL; it is http://[::1]:8787/."""
    config, cfg = root
    port = free_port()
    server = ReviewServer(config, port, host="::1")
    try:
        assert server.url == f"http://[::1]:{port}"
        assert requests.get(server.url + "/").status_code == 200
    finally:
        out = server.stop()
    assert f"mlc review: http://[::1]:{port}/ " in out and "token" not in out, out


def listed(client, query: str) -> tuple[int, list[int]]:
    """The browse page under `query`: how many match, and the ids on its first page."""
    text = client.get("/?" + query).text
    return int(re.search(r'<span id="total">(\d+)</span>', text).group(1)), [int(x) for x in re.findall(
        r'class="card[^"]*" href="/image/(\d+)', text)]


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_actions_undo_filters_and_build_on_both_backends(root):
    """Relabel, reject, undo (and a stale undo after another writer's action), not-duplicate, restore;
    the filters, queues, duplicates and log pages over them; then `mlc build` applies the review.
    The same assertions hold on SQLite and on PostgreSQL."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target, other = first_accepted(cfg, "ants"), first_accepted(cfg, "bees")
    with Catalog(cfg.catalog_path, readonly=True) as c:
        dup = c.candidates("status='duplicate' AND reason LIKE 'near-%'")[0]
        tiny = c.candidates("reason='too-small'")[0]
        v1_rows = len(c.candidates("status='accepted' AND purpose IN ('train', 'probe')"))
    h = {"X-MLC-Client": "tab1"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        act = lambda cid, action, **kw: client.post("/api/action", json={"id": cid, "action": action, "reason": "r",
                                                                          **kw}, headers=h)
        undo = lambda cid, aid: client.post("/api/undo", json={"id": cid, "action_id": aid}, headers=h)
        relabel = act(target["id"], "relabel", labels=["ants", "bees"]).json()
        assert relabel["state"] == {"labels": "ants bees", "include": None}
        reject = act(target["id"], "reject").json()
        assert reject["state"] == {"labels": "ants bees", "include": "rejected"}
        # another writer (a second connection: another tab's server) acts on the image after the reject
        with Catalog(cfg.catalog_path) as second:
            later = co.act(second, target["id"], "relabel", "tab2's", "tab2", list(cfg.classes), labels=["bees"])
        stale = undo(target["id"], reject["action_id"])
        assert stale.status_code == 409 and "a later action (relabel by tab2)" in stale.json()["error"]
        assert undo(target["id"], later.action_id).json()["state"] == {"labels": "ants bees", "include": "rejected"}
        assert undo(target["id"], reject["action_id"]).json()["state"] == {"labels": "ants bees", "include": None}
        again = undo(target["id"], reject["action_id"])
        assert again.status_code == 409 and "already undone" in again.json()["error"]
        assert act(dup["id"], "not-duplicate").json()["state"]["include"] == "accepted"
        assert act(tiny["id"], "restore").json()["state"]["include"] == "accepted"
        assert act(other["id"], "reject").json()["state"]["include"] == "rejected"
        assert act(other["id"], "reject").json()["error"] == "already out of the dataset"

        reviewed = sorted([target["id"], dup["id"], tiny["id"], other["id"]])
        assert listed(client, "reviewed=1") == (4, reviewed)
        total, ids = listed(client, "set=train&label=bees")
        assert target["id"] in ids and other["id"] in ids        # the reviewed labels; the curated ones
        assert listed(client, "status=rejected&reason=too-small") == (1, [tiny["id"]])
        assert listed(client, "version=v1&reviewed=1")[1] == sorted([target["id"], other["id"]])   # v1 rows
        assert listed(client, "version=v1")[0] == v1_rows
        assert sum(listed(client, f"version=v1&split={s}")[0] for s in ("train", "valid", "test")) == v1_rows
        unversioned = client.get("/?split=train").text       # a split alone filters nothing, and says why
        assert "split needs a version" in unversioned and "split needs a version" not in client.get("/").text
        page = client.get(f"/image/{target['id']}?reviewed=1").text
        after = [i for i in reviewed if i > target["id"]]
        assert (f'id="next" href="/image/{after[0]}?' in page) if after else ('id="next"' not in page)
        queues = client.get("/queues").text
        assert re.search(r"changed in review</a></td><td>4</td>", queues), queues
        assert f'/image/{dup["id"]}' in client.get("/duplicates").text
        log_page = client.get("/log").text
        assert log_page.count("<tr") - 1 == 8 and "tab2" in log_page       # every action; none refused
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert [a["action"] for a in co.actions(c, target["id"])] == ["relabel", "reject", "relabel", "undo", "undo"]
        assert co.review_changed_photos(c) == [f"local:{r['photo_id']}" for r in
                                               sorted((target, dup, tiny, other), key=lambda r: r["id"])]
    built = build_dataset(cfg)
    rows = {r["candidate_id"]: r for r in read_manifest(built.path / "manifest.csv")}
    assert rows[str(target["id"])]["labels"] == "ants bees"
    assert str(dup["id"]) in rows and str(tiny["id"]) in rows and str(other["id"]) not in rows
    assert len(rows) == v1_rows + 2 - 1
    # Put back, they keep the class they were searched under (curate left their curated label NULL)
    assert rows[str(dup["id"])]["labels"] == "ants" and rows[str(dup["id"])]["path"].startswith("images/ants/")
    assert rows[str(tiny["id"])]["labels"] == "bees"


def test_changed_in_review_counts_the_decisions_in_force_as_the_build_does(root):
    """The "changed in review" filter and queue count mean a review decision in force, as the card's
    badge and `mlc build`'s diff do: not an image whose action was undone, nor a taken-down photo.
    (They counted every image with any logged action: 13 in the queue for 10 decisions in force.)"""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path, readonly=True) as c:
        undone, kept, taken_down = c.candidates("status='accepted' AND purpose='train'")[:3]
    h = {"X-MLC-Client": "tab1"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        act = lambda cid, action, **kw: client.post("/api/action", json={"id": cid, "action": action, "reason": "r",
                                                                          **kw}, headers=h)
        relabel = act(undone["id"], "relabel", labels=["ants", "bees"]).json()
        assert client.post("/api/undo", json={"id": undone["id"], "action_id": relabel["action_id"]},
                           headers=h).status_code == 200
        assert act(kept["id"], "reject").status_code == 200
        assert act(taken_down["id"], "reject").status_code == 200
        assert act(taken_down["id"], "remove", reason="owner asked").status_code == 200
        assert listed(client, "reviewed=1") == (1, [kept["id"]])
        assert re.search(r"changed in review</a></td><td>1</td>", client.get("/queues").text)
        page = client.get("/").text
        badged = re.findall(r'class="card [a-z]+ reviewed" href="/image/(\d+)', page)
        assert badged == [str(kept["id"])], badged
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert co.review_changed_photos(c) == [f"local:{kept['photo_id']}"]


def test_the_label_filter_matches_a_whole_label_wildcards_included(root):
    """`label` matches one whole effective label: SQL's LIKE wildcards in it are plain characters
    (`?label=ball%25` listed 49 images for a label that does not exist)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        ants = listed(client, "label=ants")[0]
        assert ants > 0 and listed(client, "label=ant")[0] == 0
        for pattern in ("%25", "ant%25", "an_s", "_____", "%25 %25", "!", "ants!"):
            assert listed(client, "label=" + pattern)[0] == 0, pattern


def next_build_labels(client, cid: int) -> str:
    """The labels the image page says the next build publishes, as the manifest writes them."""
    shown = re.search(r'<b id="labels">([^<]*)</b>', client.get(f"/image/{cid}").text).group(1)
    return "" if shown == "other" else shown


def test_images_put_back_are_published_with_the_labels_the_app_shows(root):
    """A curation duplicate (curated label NULL) put back with "not a duplicate" is published under the
    label it was searched for, as the image page's "next build" line says: a class image stays in its
    class, an image of the "other" set stays a negative. Relabelling it to that same label changes
    nothing. The "other" duplicate is a real one: a near copy of a scenery photo (resized, re-encoded),
    collected and curated (a byte copy cannot be marked "not a duplicate")."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.collect import collect
    from mlc_pipeline.curate import curate
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    scenery = sorted((config.parent / "world" / "scenery").glob("*.jpg"))[0]
    with Image.open(scenery) as im:
        im.convert("RGB").resize((im.width * 8 // 10, im.height * 8 // 10)).save(scenery.parent / "zz_copy.jpg",
                                                                                quality=75)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        dup = c.candidates("status='duplicate' AND label='ants' AND reason LIKE 'near-%'")[0]
        negative = c.candidates("status='duplicate' AND label='other'")[0]
    assert dup["curated_label"] is None and negative["curated_label"] is None
    h = {"X-MLC-Client": "tab1"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        act = lambda cid, action, **kw: client.post("/api/action", json={"id": cid, "action": action, "reason": "r",
                                                                          **kw}, headers=h).json()
        assert act(dup["id"], "not-duplicate")["state"] == {"labels": None, "include": "accepted"}
        assert act(negative["id"], "not-duplicate")["state"] == {"labels": None, "include": "accepted"}
        assert act(dup["id"], "relabel", labels=["ants"])["state"] == {"labels": None, "include": "accepted"}
        shown = {cid: next_build_labels(client, cid) for cid in (dup["id"], negative["id"])}
    rows = {r["candidate_id"]: r for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    assert shown == {dup["id"]: "ants", negative["id"]: ""}
    assert {cid: rows[str(cid)]["labels"] for cid in shown} == shown
    assert rows[str(dup["id"])]["path"].startswith("images/ants/")
    assert rows[str(negative["id"])]["path"].startswith("images/other/")


def test_the_next_build_line_says_what_the_build_does_after_a_takedown(root):
    """Restored, then taken down: the page said "in (put back in review)" from the review's own
    record, while the build (which also reads the status) left it out."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path, readonly=True) as c:
        tiny, kept = c.candidates("reason='too-small'")[0], c.candidates("status='duplicate' AND reason LIKE 'near-%'")[0]
    h = {"X-MLC-Client": "tab1"}
    state = lambda client, cid: re.search(r'<b id="state">([^<]*)</b>', client.get(f"/image/{cid}").text).group(1)
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        for cid in (tiny["id"], kept["id"]):
            assert client.post("/api/action", json={"id": cid, "action": "restore" if cid == tiny["id"] else
                                                    "not-duplicate", "reason": "r"}, headers=h).status_code == 200
        assert client.post("/api/action", json={"id": tiny["id"], "action": "remove", "reason": "owner asked"},
                           headers=h).status_code == 200
        shown = {cid: state(client, cid) for cid in (tiny["id"], kept["id"])}
    rows = {r["candidate_id"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    assert shown == {tiny["id"]: "out (taken down)", kept["id"]: "in (put back in review)"}
    assert str(tiny["id"]) not in rows and str(kept["id"]) in rows


def test_a_held_copy_whose_hold_is_undone_says_why_it_is_out_until_the_next_curate(root):
    """The review29 audit: a takedown holds the near copy curate dropped for the photo; the hold undone,
    the page said "out" with no reason, and the next build still left it out (a duplicate of a photo
    taken down) while the docs said undo puts it back. The page says what happens: the next curate
    decides it again (and takes it, the photo gone), or restore puts it in the next build now."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.curate import curate
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path, readonly=True) as c:
        near = c.candidates("status='duplicate' AND reason LIKE 'near-%'")[0]
    h = {"X-MLC-Client": "tab1"}
    state = lambda client, cid: re.search(r'<b id="state">([^<]*)</b>', client.get(f"/image/{cid}").text).group(1)
    undo = lambda client, cid, action_id: client.post("/api/undo", json={"id": cid, "action_id": action_id},
                                                      headers=h).json()
    why = "out (a copy of a photo taken down: the next `mlc curate` decides it again, or restore it now with `a`)"
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        taken = client.post("/api/action", json={"id": near["duplicate_of"], "action": "remove", "reason": "owner"},
                            headers=h).json()
        assert taken["held"] == 1, taken
        assert state(client, near["id"]) == "out (rejected in review)"
        with Catalog(cfg.catalog_path, readonly=True) as c:
            hold = co.latest_undoable(c, near["id"])
        assert json.loads(hold["detail"]) == {"held": True}
        assert undo(client, near["id"], hold["id"])["state"] == {"labels": None, "include": None}
        assert html.unescape(state(client, near["id"])) == why
        restored = client.post("/api/action", json={"id": near["id"], "action": "restore", "reason": "r"},
                               headers=h).json()
        assert state(client, near["id"]) == "in (put back in review)"
        assert undo(client, near["id"], restored["action_id"])["state"] == {"labels": None, "include": None}
        assert html.unescape(state(client, near["id"])) == why
    assert str(near["id"]) not in {r["candidate_id"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    curate(cfg)                                         # decides it again: with the photo gone, it is in
    assert str(near["id"]) in {r["candidate_id"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert state(client, near["id"]) == "in"


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_pool_images_held_from_mining_are_decided_in_review(root):
    """A pool image mining held back (maybe a class member a pool query found) is the reviewer's: labels
    saved make the next build train on it (a class, or "other": a hard negative) in the splits mined
    images take, never test; a reject keeps it out; the queue of held images empties as they are
    decided, and undo puts one back in it. (Three class images made held pool images here: mining them
    for real needs a trained model; tests/model/test_mine.py checks that mining leaves them alone.)"""
    from fastapi.testclient import TestClient
    from mlc_pipeline.dataset.splits import mined_split
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        held = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[:3]
        tally = lambda c: (c.set_tally("train", "ants", "any")["accepted"], c.set_tally("train", "other", "any")["accepted"])
        ants, other = tally(c)
        for i, r in enumerate(held):
            c.update_fields(r["id"], purpose="pool", curated_label="other", reason="held:like-class:ants:round=1",
                            mined_score=0.9 - i / 10)
    as_class, as_negative, kept_out = (r["id"] for r in held)
    h = {"X-MLC-Client": "tab1"}
    queue = "reason=held&sort=score&reviewed=0"
    state = lambda client, cid: re.search(r'<b id="state">([^<]*)</b>', client.get(f"/image/{cid}").text).group(1)
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        act = lambda cid, action, **kw: client.post("/api/action", json={"id": cid, "action": action, "reason": "r",
                                                                          **kw}, headers=h).json()
        # the round a held image comes from (the page said "mining round held": a user's audit)
        assert "0.900 (mining round 1, held for review, model" in client.get(f"/image/{as_class}").text
        assert listed(client, queue) == (3, [as_class, as_negative, kept_out])          # highest score first
        assert state(client, as_class).startswith("out (in the mining pool")
        assert "labels saved in review" in act(as_class, "restore")["error"]
        assert act(as_class, "relabel", labels=["ants"])["state"] == {"labels": "ants", "include": "from-pool"}
        assert act(as_negative, "relabel", labels=["other"])["state"] == {"labels": "other", "include": "from-pool"}
        assert "already in" in act(as_negative, "restore")["error"]
        rejected = act(kept_out, "reject")
        assert rejected["state"] == {"labels": None, "include": "rejected"}
        assert listed(client, queue) == (0, [])
        with Catalog(cfg.catalog_path, readonly=True) as c:       # decided: no longer in the pool
            assert c.set_tally("pool", "other", "any")["accepted"] == 0
            # but in the sets they are trained in: collect tops a class up by what its labels gave it
            assert tally(c) == (ants - 3 + 1, other + 1)
        assert re.search(r"not decided yet, highest score first</a></td><td>0</td>", client.get("/queues").text)
        assert state(client, as_class) == "in (a pool image labelled in review)"
        assert next_build_labels(client, as_class) == "ants" and next_build_labels(client, as_negative) == ""
        assert state(client, kept_out) == "out (rejected in review)"
        assert client.post("/api/undo", json={"id": kept_out, "action_id": rejected["action_id"]},
                           headers=h).json()["state"] == {"labels": None, "include": None}
        assert listed(client, queue) == (1, [kept_out])
        assert act(kept_out, "reject")["state"]["include"] == "rejected"
    for search_found_it_later in (False, True):
        if search_found_it_later:         # a class query finds the labelled image: its set becomes train
            with Catalog(cfg.catalog_path) as c:
                c.update_fields(as_class, purpose="train")
        rows = {r["candidate_id"]: r for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
        assert str(kept_out) not in rows
        assert rows[str(as_class)]["labels"] == "ants" and rows[str(as_class)]["path"].startswith("images/ants/")
        assert rows[str(as_negative)]["labels"] == "" and rows[str(as_negative)]["path"].startswith("images/other/")
        for cid in (as_class, as_negative):     # the splits mined images take, marked as from the pool
            assert rows[str(cid)]["purpose"] == "pool"
            assert rows[str(cid)]["split"] == mined_split("local", rows[str(cid)]["photo_id"],
                                                          cfg.mine.calibration_share)


def test_the_next_build_line_leaves_out_a_licence_source_licenses_no_longer_allows(root):
    """`source.licenses` narrowed since collect: the build leaves out the images whose licence it no
    longer allows, and the image page and the browse badge said "in" for them (the review29 audit).
    Every candidate's page must say what the real build then does."""
    import yaml
    from fastapi.testclient import TestClient
    from mlc_pipeline.config import load_config
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        everyone = c.candidates()
        narrowed = first_accepted(cfg, "bees")
        c.update_fields(narrowed["id"], license_id=99)
        relabelled = first_accepted(cfg, "ants")
        c.update_fields(relabelled["id"], license_id=99)
    raw = yaml.safe_load(config.read_text())
    raw["source"]["licenses"] = sorted({r["license_id"] for r in everyone if r["license_id"] not in (None, 99)})
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    h = {"X-MLC-Client": "tab1"}
    state = lambda client, cid: re.search(r'<b id="state">([^<]*)</b>', client.get(f"/image/{cid}").text).group(1)
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert client.post("/api/action", json={"id": relabelled["id"], "action": "relabel", "labels": ["bees"],
                                                "reason": "r"}, headers=h).status_code == 200
        shown = {r["id"]: state(client, r["id"]) for r in everyone}
        badge = client.get("/?reviewed=1").text
    rows = {int(r["candidate_id"]) for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    why = f"out (source.licenses ({', '.join(map(str, raw['source']['licenses']))}) does not allow its licence 99"
    assert shown[narrowed["id"]].startswith(why) and shown[relabelled["id"]].startswith(why)
    assert why in badge             # the browse card's badge of the image changed in review
    assert {cid for cid, s in shown.items() if s == "in" or s.startswith("in (")} == rows


def test_the_mining_queues_show_each_cards_score_and_round(root):
    """The hard-negative and held-pool queues are sorted by score, and their cards showed neither the
    score nor the mining round (the review29 audit): the reviewer opened each image to see them."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import QUEUES, create_app
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        rows = c.candidates("status='accepted' AND purpose='train'")[:4]
        for r, score, round_no in zip(rows, (0.2, 0.9526, 0.5), (1, 2, 1)):
            c.update_fields(r["id"], curated_label="other", reason=f"hard-negative:round={round_no}", mined_score=score,
                            mined_round=round_no)
        c.update_fields(rows[3]["id"], purpose="pool", curated_label="other", reason="held:like-class:bees:round=3",
                        mined_score=0.8)           # mining records no round on an image it holds: its reason does
    cards = lambda text: re.findall(r'href="/image/(\d+)\?[^"]*".*?class="meta mined">([^<]*)<', text, re.S)
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        negatives = cards(client.get("/?" + urlencode(QUEUES["mined hard negatives, highest score first"])).text)
        held = cards(client.get("/?" + urlencode(next(f for f in QUEUES.values() if f.get("reason") == "held"))).text)
    assert negatives == [(str(rows[1]["id"]), "score 0.953 · mining round 2"),
                         (str(rows[2]["id"]), "score 0.500 · mining round 1"),
                         (str(rows[0]["id"]), "score 0.200 · mining round 1")]
    assert held == [(str(rows[3]["id"]), "score 0.800 · mining round 3, held for review")]


def steps_in_order(client, order: list[int], query: str, back) -> None:
    """Each image of `order`, its page opened with `query`, steps (j/k) to its neighbours in `order`
    with the same query, and "← list" (Esc) goes to `back(its place in order)`."""
    for at, cid in enumerate(order):
        page = client.get(f"/image/{cid}?{query}").text
        prev = re.search(rf'id="prev" href="/image/(\d+)\?{re.escape(html.escape(query))}"', page)
        nxt = re.search(rf'id="next" href="/image/(\d+)\?{re.escape(html.escape(query))}"', page)
        assert (int(prev.group(1)) if prev else None) == (order[at - 1] if at else None)
        assert (int(nxt.group(1)) if nxt else None) == (order[at + 1] if at + 1 < len(order) else None)
        assert f'href="{back(at)}" id="back"' in page


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_image_pages_step_and_go_back_in_the_lists_order(root, monkeypatch):
    """j/k on an image page follow the list's order (by mining score, highest first, then the images
    without one by id), and "← list" returns to the page that holds the image (it went to page 1)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    monkeypatch.setattr(review_app, "PAGE_SIZE", 2)
    with Catalog(cfg.catalog_path) as c:
        ids = [r["id"] for r in c.candidates("purpose='train'")]
        for cid, score in zip(ids, (0.2, 0.9, 0.5)):
            c.update_fields(cid, mined_score=score)
    query = "set=train&sort=score"
    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        order = []
        for page_no in range(1, 100):
            text = client.get(f"/?{query}&page_no={page_no}").text
            shown = [int(x) for x in re.findall(r'class="card[^"]*" href="/image/(\d+)', text)]
            if not shown or (order and shown[-1] == order[-1]):
                break
            order += shown
        assert order[:4] == [ids[1], ids[2], ids[0], ids[3]] and len(order) == len(ids)
        steps_in_order(client, order, query, lambda at: f"/?set=train&amp;sort=score&amp;page_no={at // 2 + 1}")


@pytest.mark.parametrize("root", ["postgresql"], indirect=True)
def test_the_app_reconnects_after_the_catalogs_server_drops_its_connections(root, postgres_server):
    """The secrets21 audit: after a PostgreSQL restart every page and action answered a bare 500,
    with a 35-line traceback each, until the app itself was restarted. The server drops the app's
    connections here (as a restart does): the request that finds one lost is a 503 in words, the app
    opens new ones, and the next request works."""
    import psycopg
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    h = {"X-MLC-Client": "tab1"}
    database = cfg.catalog.url.rsplit("/", 1)[1]

    def drop_connections():
        with psycopg.connect(postgres_server.url(), password=postgres_server.password, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND "
                          "pid <> pg_backend_pid()", (database,))

    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert client.get("/").status_code == 200
        drop_connections()
        page = client.get("/")
        assert page.status_code == 503 and "the connection to the catalog was lost" in page.text, page.text
        assert "reconnected: reload the page" in page.text and "Traceback" not in page.text
        assert client.get(f"/image/{target['id']}").status_code == 200
        drop_connections()
        lost = client.post("/api/action", json={"id": target["id"], "action": "reject", "reason": "r"}, headers=h)
        assert lost.status_code == 503 and "may not have been saved" in lost.json()["error"], lost.text
        done = client.post("/api/action", json={"id": target["id"], "action": "reject", "reason": "r"}, headers=h)
        assert done.status_code == 200, done.text
        assert postgres_server.password not in page.text + lost.text

        # still down when the app reconnects (the database refuses connections), then back (verify21:
        # the first request after that found the closed connections, a 503 again)
        with psycopg.connect(postgres_server.url(), password=postgres_server.password, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            drop_connections()
            down = client.get("/")
            assert down.status_code == 503 and "cannot be reached yet" in down.text, down.text
            waiting = client.post("/api/action", json={"id": target["id"], "action": "undo", "reason": "r"}, headers=h)
            assert waiting.status_code == 503 and "nothing was done" in waiting.json()["error"], waiting.text
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert client.get(f"/image/{target['id']}").status_code == 200


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_an_action_while_another_command_writes_is_answered_503_not_held(root, monkeypatch):
    """Another writer holding the image (SQLite: the catalog's write lock, as a collect's transaction
    does; PostgreSQL: the image's row): the action waits ACTION_LOCK_WAIT_S, then says the catalog is
    busy (503, Retry-After), changes nothing, and goes through once it is free. (Before: it waited
    the batch commands' 60 s and answered 500.)"""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    monkeypatch.setattr(review_app, "ACTION_LOCK_WAIT_S", 0.5)
    h = {"X-MLC-Client": "tab1"}
    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        with Catalog(cfg.catalog_path) as writer, writer.locked_candidate(target["id"]):
            started = time.monotonic()
            busy = client.post("/api/action", json={"id": target["id"], "action": "reject", "reason": "r"},
                               headers=h)
            waited = time.monotonic() - started
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5" and waited < 10
        assert "the catalog is busy" in busy.json()["error"] and "nothing was changed" in busy.json()["error"]
        assert client.get(f"/image/{target['id']}").status_code == 200          # pages still read (WAL)
        with Catalog(cfg.catalog_path, readonly=True) as c:
            assert co.actions(c, target["id"]) == []
        assert client.post("/api/action", json={"id": target["id"], "action": "reject", "reason": "r"},
                           headers=h).status_code == 200


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_pages_answer_at_once_while_an_action_waits_for_the_catalog(root, monkeypatch):
    """While an action waits for another command's write lock (SQLite's BEGIN IMMEDIATE; PostgreSQL's
    row lock), pages go on answering: the action waits on its own connection. (Before, every page
    waited behind the action for the whole ACTION_LOCK_WAIT_S: 9 s instead of 0.014 s.)"""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    monkeypatch.setattr(review_app, "ACTION_LOCK_WAIT_S", 4.0)
    h = {"X-MLC-Client": "tab1"}
    answers = []
    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert client.get(f"/image/{target['id']}").status_code == 200        # versions indexed: a plain read now
        with Catalog(cfg.catalog_path) as writer, writer.locked_candidate(target["id"]):
            acting = threading.Thread(target=lambda: answers.append(client.post("/api/action", headers=h, json={
                "id": target["id"], "action": "reject", "reason": "r"})))
            started = time.monotonic()
            acting.start()
            time.sleep(0.5)                      # the action is waiting for the lock now
            took = {}
            for url in (f"/image/{target['id']}", "/", "/queues"):
                at = time.monotonic()
                assert client.get(url).status_code == 200
                took[url] = time.monotonic() - at
            assert max(took.values()) < 2.0, took
            assert acting.is_alive(), "the action should still be waiting for the lock"
            acting.join()
    assert answers[0].status_code == 503 and time.monotonic() - started >= 4.0


def test_the_queues_lists_page_through_every_image(root, monkeypatch):
    """The model's review list and the accepted probes list show a page at a time, with links to the
    rest (only the first page was reachable)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    monkeypatch.setattr(review_app, "PAGE_SIZE", 2)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        first_accepted_rows = c.candidates("status='accepted' AND purpose='train'")[:5]
    plant_review_list(cfg, first_accepted_rows, [i / 100 for i in range(5)])
    seen = []
    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        url = "/queues"
        while url:
            page = client.get(url).text
            grid = page.split('id="noisy"')[1].split("</div>")[0]
            seen += [int(x) for x in re.findall(r'href="/image/(\d+)\?list=noisy"', grid)]
            more = re.search(r'class="noisy-pager" href="([^"]+)">next', page)
            url = more.group(1).replace("&amp;", "&") if more else None
        assert "page 3 of 3" in page
        last = client.get("/queues?noisy_page=99").text                         # past the end: the last page
        assert "page 3 of 3" in last and f'href="/image/{first_accepted_rows[-1]["id"]}?list=noisy"' in last
    assert seen == [r["id"] for r in first_accepted_rows]                  # lowest score first, each once


def test_an_image_opened_from_a_models_list_steps_through_that_list_and_its_cards_show_the_work_done(root, monkeypatch):
    """The review29 audit: the model's lists on the queues page linked `/image/<id>` without the list,
    so j stepped by id over every candidate and Esc went to the unfiltered browse page; and a card of
    an image already rejected or relabelled looked as before. An image page opened from a list steps
    in the list's order and goes back to the list's page that holds it; a card says what the review
    decided."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    monkeypatch.setattr(review_app, "PAGE_SIZE", 2)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        listed = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[:5]
    plant_review_list(cfg, listed, [0.5 - i / 10 for i in range(5)])
    order = [r["id"] for r in reversed(listed)]              # lowest score first: against the ids
    h = {"X-MLC-Client": "tab1"}
    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        steps_in_order(client, order, "list=noisy", lambda at: f"/queues?noisy_page={at // 2 + 1}#noisy")
        assert re.search(r'href="/\?page_no=\d+" id="back"', client.get(f"/image/{order[0]}?list=nope").text)  # no list
        for cid, body in ((order[0], {"action": "reject"}), (order[3], {"action": "relabel", "labels": ["bees"]})):
            assert client.post("/api/action", json={"id": cid, "reason": "r", **body}, headers=h).status_code == 200
        cards = {}
        for page_no in (1, 2, 3):
            grid = client.get(f"/queues?noisy_page={page_no}").text.split('id="noisy"')[1].split("</div>")[0]
            cards.update({int(cid): (css, badge) for css, cid, badge in re.findall(
                r'<a class="([^"]*)" href="/image/(\d+)\?list=noisy">.*?</span>(?:<span class="badge">([^<]*)</span>)?</a>',
                grid, re.S)})
    assert cards == {order[0]: ("card reviewed", "rejected in review"), order[1]: ("card", ""), order[2]: ("card", ""),
                     order[3]: ("card reviewed", "relabelled: bees"), order[4]: ("card", "")}


def test_a_stale_tab_cannot_silently_replace_another_tabs_work(root):
    """Tab A draws the page; tab B relabels; A's relabel (what the page sends: its latest action) is
    refused with a reason instead of replacing B's, and A's after a reload goes through."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    seen = lambda client: int(re.search(r'data-undo="(\d*)"', client.get(f"/image/{target['id']}").text).group(1) or 0)
    relabel = lambda client, tab, labels, **kw: client.post("/api/action", json={
        "id": target["id"], "action": "relabel", "labels": labels, **kw}, headers={"X-MLC-Client": tab})
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        drawn_for_a = seen(client)
        assert relabel(client, "tabB", ["ants", "bees"], seen_action=seen(client)).status_code == 200
        stale = relabel(client, "tabA", ["bees"], seen_action=drawn_for_a)
        assert stale.status_code == 409 and "changed since the page was loaded (relabel by" in stale.json()["error"]
        assert "ants bees" in client.get(f"/image/{target['id']}").text
        assert relabel(client, "tabA", ["bees"], seen_action=seen(client)).status_code == 200
        assert relabel(client, "script", ["ants"]).status_code == 200          # no seen_action: the last write wins
        assert relabel(client, "tabA", ["bees"], seen_action="1").status_code == 400


@pytest.mark.parametrize("root", ["sqlite", "postgresql"], indirect=True)
def test_collect_counts_usable_images_as_the_build_will_see_them(root):
    """`count` means usable: an image the review rejected is not one (the next collect tops the set
    up), a duplicate it put back is one, and a relabelled image counts under its new class."""
    config, cfg = root
    target, other = first_accepted(cfg, "ants"), first_accepted(cfg, "bees")
    with Catalog(cfg.catalog_path) as c:
        dup = c.candidates("status='duplicate' AND label='ants' AND reason LIKE 'near-%'")[0]
        before = {label: c.set_tally("train", label, "any") for label in ("ants", "bees")}    # no review tables yet
        co.ensure_schema(c)
        co.act(c, target["id"], "reject", "blurry", "t", list(cfg.classes))
        co.act(c, dup["id"], "not-duplicate", "a different photo", "t", list(cfg.classes))
        co.act(c, other["id"], "relabel", "both", "t", list(cfg.classes), labels=["ants", "bees"])
        after = {label: c.set_tally("train", label, "any") for label in ("ants", "bees")}
    assert after["ants"]["accepted"] == before["ants"]["accepted"] - 1 + 1 + 1
    assert after["ants"]["rejected"].get("review") == 1 and after["bees"]["accepted"] == before["bees"]["accepted"]
    assert sum(after["ants"]["duplicate"].values()) == sum(before["ants"]["duplicate"].values()) - 1


def test_token_off_loopback_never_printed(root, tmp_path):
    config, cfg = root
    env = {k: v for k, v in os.environ.items() if k != "MLC_REVIEW_TOKEN"}
    server = ReviewServer(config, free_port(), host="0.0.0.0", env=env)
    try:
        token_file = cfg.data_dir / "review" / "token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 32
        r = requests.get(server.url + "/", allow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert post(requests, server.url + "/api/action", {"id": 1, "action": "reject"}).status_code == 401
        with requests.Session() as s:
            assert "wrong token" in s.post(server.url + "/login", data={"token": "guess" * 8}).text
            assert s.get(server.url + "/", allow_redirects=False).status_code == 303
            logged_in = s.post(server.url + "/login", data={"token": token})
            assert logged_in.status_code == 200                                    # redirected to /
            assert "Max-Age=43200" in logged_in.history[0].headers["set-cookie"]   # the session expires
            assert token not in str(s.cookies.get_dict())                              # the cookie is an HMAC
            assert s.get(server.url + "/").status_code == 200
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(server.url + "/image/1", headers=auth).status_code == 200
    finally:
        out = server.stop()
    assert "review/token" in out and token not in out


def generated_catalog(path, n: int) -> None:
    """n candidates through the catalog's own insert path, curated-looking statuses and labels."""
    labels = ["grizzly", "black", "teddy", "other"]
    with Catalog(path) as c:
        run = c.start_run("test")
        c.save_licenses({4: ("CC BY 2.0", ""), 9: ("CC0", "")})
        c.upsert_found((Found("local", str(10**6 + i), "train" if i % 10 else "pool", labels[i % 4], "q",
                              f"http://x/{i}.jpg", "url_m", 500, 375, 4 if i % 3 else 9, None, f"o{i % 500}", None,
                              f"photo {i}", None, None, None) for i in range(n)), run)
        with c.transaction():
            for cid in range(1, n + 1, 7):       # every 7th rejected, the rest accepted (curated labels)
                c.update_fields(cid, status="rejected", reason="too-small", sha256=None)
            c.db.execute("UPDATE candidates SET status='accepted', curated_label=label WHERE status='pending'")


@pytest.mark.slow
def test_first_page_of_100k_candidates_under_a_second(tmp_path):
    import yaml
    data = tmp_path / "data"
    data.mkdir()
    t0 = time.perf_counter()
    generated_catalog(data / "catalog.sqlite", 100_000)
    made = time.perf_counter() - t0
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "source": {"kind": "local"},
                                      "classes": {k: {"queries": [k], "count": 1} for k in ("grizzly", "black", "teddy")},
                                      "other": {"queries": ["x"], "count": 1}}))
    server = ReviewServer(config, free_port())
    try:
        timings = {}
        for name, query in (("first page", "/"), ("first page again", "/"), ("label filter", "/?label=teddy&set=train"),
                            ("status+licence", "/?status=rejected&licence=9"), ("page 1000", "/?page_no=1000")):
            t = time.perf_counter()
            r = requests.get(server.url + query)
            timings[name] = time.perf_counter() - t
            assert r.status_code == 200 and r.text.count('class="card') == 60
        assert '<span id="total">100000</span>' in requests.get(server.url + "/").text
    finally:
        server.stop()
    print(f"\n100k catalog made in {made:.1f} s; " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    assert timings["first page"] < 1.0 * 3, timings     # the issue asks < 1 s; generous for a busy CI box


def test_model_scores_and_queues_from_the_latest_bundle(root):
    """The queues page and the image page read the latest bundle's review.csv / mined.csv (written here
    with mine's own writer and columns: training a model for this would take minutes)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.model.mine import MINED_COLUMNS, REVIEW_COLUMNS, write_csv
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "bees")
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert "No model bundle yet" in client.get("/queues").text
        bundle = cfg.data_dir / "models" / "m-1"
        bundle.mkdir(parents=True)
        (cfg.data_dir / "models" / "LATEST").write_text("m-1\n")
        write_csv(bundle / "review.csv", [{"candidate_id": target["id"], "photo_id": target["photo_id"], "label": "bees",
                                           "score": 0.0123, "file": target["file_path"]}], REVIEW_COLUMNS)
        write_csv(bundle / "mined.csv", [], MINED_COLUMNS)
        queues = client.get("/queues").text
        assert f'href="/image/{target["id"]}?list=noisy"' in queues and "score 0.012" in queues
        page = client.get(f"/image/{target['id']}").text
        assert "The latest model's scores" in page and "0.012" in page
        assert "rejected files" in queues and '<td>1</td>' in queues      # the planted too-small image


def test_probe_images_the_latest_model_accepts_are_queued_surest_first(root):
    """The queue of unknown kinds the model still accepts reads the latest bundle's test_scores.csv
    and thresholds (written by training since 0.2; planted here, as above)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        probes = c.candidates("status='accepted' AND purpose='train'")[:3]
        for r in probes:
            c.update_fields(r["id"], purpose="probe")
    bundle = cfg.data_dir / "models" / "m-2"
    bundle.mkdir(parents=True)
    (cfg.data_dir / "models" / "LATEST").write_text("m-2\n")
    (bundle / "bundle.json").write_text(json.dumps({"vocab": ["ants", "bees"], "classes": ["ants", "bees"],
                                                    "thresholds": [0.5, 0.7]}))
    scores = [(0.9, 0.1), (0.2, 0.65), (0.3, 0.95)]      # accepted as ants by 0.4; rejected; bees by 0.25
    (bundle / "test_scores.csv").write_text("path,split,labels,query,photo_id,score:ants,score:bees\n" + "".join(
        f"p{i}.jpg,probe,,q,{r['photo_id']},{a},{b}\n" for i, (r, (a, b)) in enumerate(zip(probes, scores))))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        page = client.get("/queues").text
    grid = page.split('id="probes"')[1]
    assert "2 probe images accepted" in page
    assert grid.index(f'/image/{probes[0]["id"]}?') < grid.index(f'/image/{probes[2]["id"]}?')   # surest first
    assert f'/image/{probes[1]["id"]}?' not in grid
    assert "as ants" in grid and "0.900 &ge; 0.500" in grid


def test_a_bundle_with_no_per_image_scores_is_said_to_have_none_not_to_accept_none(root):
    """The upgrade29 audit: with a 0.1.0 bundle as LATEST (it accepted 90% of its probes), the queues
    page said it "accepts none of its probe images": it kept no test_scores.csv (trained before 0.2),
    so neither list can be read. Both lists say that, and to retrain; none says "none" or "right"."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    bundle = cfg.data_dir / "models" / "m-01"
    bundle.mkdir(parents=True)
    (cfg.data_dir / "models" / "LATEST").write_text("m-01\n")
    (bundle / "bundle.json").write_text(json.dumps({"vocab": ["ants", "bees", "other"], "classes": ["ants", "bees"],
                                                    "thresholds": [0.5, 0.5, 0.5], "head": "sigmoid"}))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        page = client.get("/queues")
    assert page.status_code == 200
    text = html.unescape(page.text)
    said = ("The latest bundle (m-01) has no per-image scores (no test_scores.csv: trained before 0.2), so this "
            "list cannot be read: retrain it (mlc train, or the next mlc run) to see it.")
    assert re.sub(r"</?code>", "", text).count(said) == 2, text      # the wrong answers and the probes
    assert "accepts none" not in text and "answers every test image right" not in text


def test_the_test_images_the_model_answers_wrong_are_listed_and_their_pages_show_the_scores(root):
    """The review29 audit: the model's wrong answers on the test split (the HTML report's "Wrong
    answers") could not be found in the app: not in review.csv, no score on their pages, no id in
    the report. The queues page lists them by the report's rule and in its order (furthest from
    right in logits first), each linking to its page, which shows the scores that made it wrong."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        ants, bees = (c.candidates("status='accepted' AND purpose='train' AND curated_label=?", (x,))[:2]
                      for x in ("ants", "bees"))
        probe = c.candidates("status='accepted' AND purpose='train' AND curated_label='other'")[0]
        c.update_fields(probe["id"], purpose="probe")
    bundle = cfg.data_dir / "models" / "m-3"
    bundle.mkdir(parents=True)
    (cfg.data_dir / "models" / "LATEST").write_text("m-3\n")
    (bundle / "bundle.json").write_text(json.dumps({"vocab": ["ants", "bees", "other"], "classes": ["ants", "bees"],
                                                    "thresholds": [0.5, 0.7, 0.5], "head": "sigmoid"}))
    rows = [(ants[0], "test", "ants", 0.9, 0.1),        # right
            (ants[1], "test", "ants", 0.3, 0.1),        # ants missed: 0.85 logits off
            (bees[0], "test", "bees", 0.2, 0.6),        # bees missed: 0.44 logits off
            (bees[1], "test", "bees", 0.99, 0.9),       # ants claimed wrongly: 4.60 logits off
            (probe, "probe", "", 0.95, 0.1)]            # an unknown kind: the other list's
    (bundle / "test_scores.csv").write_text("path,split,labels,query,photo_id,score:ants,score:bees,score:other\n" +
                                            "".join(f"p{i}.jpg,{split},{labels},q,{r['photo_id']},{a},{b},0.1\n"
                                                    for i, (r, split, labels, a, b) in enumerate(rows)))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        page = client.get("/queues").text
        grid = page.split('id="wrong"')[1].split("</div>")[0]
        shown = re.findall(r'href="/image/(\d+)\?list=wrong"', grid)
        wrongly = client.get(f"/image/{bees[1]['id']}").text
        right = client.get(f"/image/{ants[0]['id']}").text
    assert "3 test images answered wrong" in page
    assert shown == [str(bees[1]["id"]), str(ants[1]["id"]), str(bees[0]["id"])]
    assert "bees → ants 0.99" in grid and "claimed ants wrongly: 0.99 ≥ threshold 0.500, 4.60 logits off" in grid
    scores = wrongly.split('id="scores"')[1].split("</table>")[0]
    assert re.search(r'<tr class="wrong"><td>test_scores.csv \(test\)</td><td>ants</td><td>0.990</td>'
                     r'<td>claimed ≥ threshold 0.500: wrong: not a label of the image</td>', scores), scores
    assert re.search(r"<td>bees</td><td>0.900</td><td>claimed ≥ threshold 0.700: right</td>", scores), scores
    assert "<td>ants</td><td>0.900</td><td>claimed ≥ threshold 0.500: right</td>" in right


def test_bad_requests_get_one_line_answers(root):
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        h = {"X-MLC-Client": "t"}
        assert client.post("/api/action", content=b"{not json", headers=h).status_code == 400
        assert client.post("/api/action", json=[1], headers=h).status_code == 400
        assert client.post("/api/action", json={"id": "x", "action": "reject"}, headers=h).status_code == 400
        explode = client.post("/api/action", json={"id": 1, "action": "explode"}, headers=h)
        assert explode.status_code == 400 and explode.json()["error"].startswith("unknown action 'explode': one of")
        assert client.post("/api/undo", json={"id": 1, "action_id": "last"}, headers=h).status_code == 400
        assert client.post("/api/undo", json={"id": 1, "action_id": 99}, headers=h).status_code == 409
        for no_action in (0, -3):       # no action has such an id: a malformed request, not a conflict
            assert client.post("/api/undo", json={"id": 1, "action_id": no_action}, headers=h).status_code == 400
        assert client.get("/image/999999").status_code == 404
        assert client.get("/?licence=abc").status_code == 400
        assert client.get("/thumb/999999").status_code == 404
        for pager in ("/?page_no=99999999999999999999", "/duplicates?page_no=99999999999999999999"):
            assert client.get(pager).status_code == 200           # a page past the end, not a 500


def test_the_favicon_is_served_on_loopback_and_before_login(root):
    """Browsers ask every page for /favicon.ico: it was a 404 (logged in the console on every page)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    for token in (None, "t" * 32):
        with TestClient(create_app(cfg, token=token), base_url="http://127.0.0.1:8777") as client:
            icon = client.get("/favicon.ico", follow_redirects=False)
            assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
            assert icon.text.startswith("<svg")
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert '<link rel="icon" type="image/svg+xml" href="/favicon.ico">' in client.get("/").text


def test_a_truncated_file_says_so_on_its_card(root):
    """A truncated file's card showed "no image" while its page shows the part the browser decodes:
    its placeholder now says "truncated file" (other files without a thumbnail keep "no image")."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        cut, gone = c.candidates("status='accepted' AND purpose='train'")[:2]
        data = Path(cut["file_path"]).read_bytes()
        Path(cut["file_path"]).write_bytes(data[:len(data) // 2])
        c.update_fields(cut["id"], status="rejected", reason="truncated", verify_reason="truncated")
        Path(gone["file_path"]).unlink()
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        thumb = client.get(f"/thumb/{cut['id']}")
        assert thumb.headers["content-type"].startswith("image/svg+xml") and ">truncated file<" in thumb.text
        assert ">no image<" in client.get(f"/thumb/{gone['id']}").text


def test_a_page_past_the_end_is_the_last_page(root):
    """`/?page_no=999` said "page 999 of 5" over an empty grid with only a "previous" link: it goes to
    the last page, filters kept (the duplicates list too)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review import app as review_app
    config, cfg = root
    with TestClient(review_app.create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        total, _ = listed(client, "set=train")
        pages = -(-total // review_app.PAGE_SIZE)
        past = client.get("/?set=train&page_no=999", follow_redirects=False)
        assert past.status_code == 303 and past.headers["location"] == f"/?set=train&page_no={pages}"
        text = client.get("/?set=train&page_no=999").text
        assert f"page {pages} of {pages}" in text and 'class="card' in text
        dups = client.get("/duplicates?page_no=999").text
        assert "page 1 of 1" in dups and "/image/" in dups


def test_out_of_range_numbers_and_unknown_ids_are_400_or_404_never_500(root, caplog):
    """Numbers past SQL's 64-bit integers (an OverflowError in a query: a 500 and a traceback), a float,
    a JSON `true` (it acted on candidate 1) are refused at the edge; an unknown id is 404 for every
    action, as for a takedown (an action said 409 "no candidate -1")."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    huge = "99999999999999999999"
    h = {"X-MLC-Client": "t"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777", raise_server_exceptions=False) as client:
        for url in (f"/?licence={huge}", f"/?round={huge}", f"/image/{target['id']}?licence={huge}", "/?round=1.5"):
            assert client.get(url).status_code == 400, url
        for url in (f"/image/{huge}", f"/thumb/{huge}", f"/file/{huge}"):
            assert client.get(url).status_code == 404, url
        action = lambda body: client.post("/api/action", content=body, headers={**h, "Content-Type": "application/json"})
        for body in ('{"id": 1e400, "action": "reject", "reason": "r"}', '{"id": true, "action": "reject", "reason": "r"}',
                     '{"id": 1.0, "action": "reject", "reason": "r"}'):
            assert action(body).status_code == 400, body
        for body in ('{"id": 99999999999999999999999, "action": "reject", "reason": "r"}',
                     '{"id": -1, "action": "reject", "reason": "r"}', '{"id": -1, "action": "remove", "reason": "r"}'):
            res = action(body)
            assert res.status_code == 404 and res.json()["error"].startswith("no candidate"), (body, res.text)
        undo = lambda body: client.post("/api/undo", content=body, headers={**h, "Content-Type": "application/json"})
        for aid in ("99999999999999999999999", "1e400", "true"):
            assert undo(f'{{"id": {target["id"]}, "action_id": {aid}}}').status_code == 400, aid
        assert undo('{"id": -1, "action_id": 1}').status_code == 404
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert co.actions(c, 1) == [] and co.actions(c, target["id"]) == []      # nothing acted on
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_takedown_removes_that_sources_photo_and_waits_for_no_writer(root):
    """Photo ids of different sources may be equal: the takedown removes the one shown. While a curate
    or a build holds the data root's files it is refused (409, naming the holder), never half done;
    beside a run that holds the data root to train (hours), it goes through."""
    import subprocess
    import sys

    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    twin_file = cfg.data_dir / "raw" / "flickr" / f"{target['photo_id']}.jpg"
    twin_file.parent.mkdir(parents=True, exist_ok=True)
    twin_file.write_bytes(open(target["file_path"], "rb").read())
    with Catalog(cfg.catalog_path) as c:     # the same id on Flickr
        c.upsert_found([Found("flickr", target["photo_id"], "train", "ants", "ants", "http://x", "url_m", 8, 8, 4,
                              "CC", "o", "o", "t", None, None, "")], "r")
        twin = c.get_by_photo("flickr", target["photo_id"])
        c.set_status(twin["id"], "downloaded", None, "r", "download", file_path=str(twin_file))
    hold = ("import sys, time\nfrom mlc_pipeline.locking import {lock}\n"
            "with {lock}(sys.argv[1], '{command}'):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    start = lambda lock, command: subprocess.Popen(
        [sys.executable, "-c", hold.format(lock=lock, command=command), str(cfg.data_dir)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    h = {"X-MLC-Client": "t"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        remove = lambda: client.post("/api/action", json={"id": target["id"], "action": "remove",
                                                          "reason": "owner asked"}, headers=h)
        holder = start("files_lock", "mlc curate")
        try:
            assert holder.stdout.readline().strip() == "held"
            busy = remove()
            assert busy.status_code == 409 and "mlc curate" in busy.json()["error"], busy.text
            assert os.path.exists(target["file_path"])
        finally:
            holder.communicate("", timeout=30)
        training = start("data_root_lock", "mlc run")
        try:
            assert training.stdout.readline().strip() == "held"
            done = remove()
            assert done.status_code == 200 and done.json()["removed"] == 1, done.text
        finally:
            training.communicate("", timeout=30)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert c.get(target["id"])["status"] == "removed" and not os.path.exists(target["file_path"])
        assert c.get(twin["id"])["status"] == "downloaded" and twin_file.exists()


def test_on_an_object_store_root_the_app_fetches_and_publishes_when_stopped(root, tmp_path):
    """`mlc review` on a file:// store with an empty cache: it serves what the store holds, and its
    takedown reaches the store (catalog and object) once the app is stopped (SIGTERM)."""
    import sqlite3

    import yaml

    from mlc_pipeline import sync
    from mlc_pipeline.config import load_config
    from mlc_pipeline.objectstore import store_of
    config, cfg = root
    (tmp_path / "store").mkdir()
    on_store = {"data_dir": f"file://{tmp_path}/store", "storage_options": {"auto_mkdir": True}}
    sync.publish(load_config(config, {**on_store, "cache_dir": str(cfg.data_dir)}))    # the root, published
    reviewer = tmp_path / "reviewer.yaml"
    reviewer.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **on_store,
                                        "cache_dir": str(tmp_path / "reviewer-cache")}))
    store = store_of(load_config(reviewer))
    target = first_accepted(cfg, "ants")
    rel = Path(target["file_path"]).relative_to(cfg.data_dir).as_posix()
    assert rel in sync.file_listing(store)
    server = ReviewServer(reviewer, free_port())
    try:
        res = post(requests, server.url + "/api/action", {"id": target["id"], "action": "remove", "reason": "owner"})
        assert res.status_code == 200 and res.json()["removed"] == 1, res.text
    finally:
        out = server.stop()
    assert rel not in sync.file_listing(store), out
    store.download([(sync.CATALOG_OBJECT, tmp_path / "published.sqlite")])
    with sqlite3.connect(tmp_path / "published.sqlite") as db:
        assert db.execute("SELECT status FROM candidates WHERE id=?", (target["id"],)).fetchone()[0] == "removed"


def test_titles_from_the_source_are_escaped(root):
    """Titles, owners and tags come from strangers on Flickr: every page escapes them."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    evil = '<script>alert("x")</script>'
    with Catalog(cfg.catalog_path) as c:
        c.update_fields(target["id"], title=evil, owner_name=evil)
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        for url in (f"/image/{target['id']}", "/?label=ants"):
            text = client.get(url).text
            assert evil not in text and "&lt;script&gt;" in text


def test_a_damaged_version_does_not_break_the_pages(root):
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    v1 = cfg.data_dir / "datasets" / "default" / "v1"
    (v1 / "manifest.csv").write_text("path,labels\nimages/x.jpg\n")          # truncated columns
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert client.get("/").status_code == 200
        assert "In no published version" in client.get(f"/image/{first_accepted(cfg, 'ants')['id']}").text


def test_token_from_the_environment_and_one_line_errors(tmp_path, monkeypatch):
    import subprocess
    import sys
    import yaml
    from mlc_pipeline.review.security import resolve_token
    from mlc_pipeline.secrets import redact
    monkeypatch.setenv("MLC_REVIEW_TOKEN", "short")
    with pytest.raises(ValueError, match="too short"):
        resolve_token(tmp_path)
    monkeypatch.setenv("MLC_REVIEW_TOKEN", "a-long-enough-token-from-env")
    token, where = resolve_token(tmp_path)
    assert token == "a-long-enough-token-from-env" and "MLC_REVIEW_TOKEN" in where
    assert not (tmp_path / "review" / "token").exists()
    assert redact(f"oops {token}") == "oops ***"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "empty"), "source": {"kind": "local"},
                                      "classes": {"a": {"queries": ["a"], "count": 1}},
                                      "other": {"queries": ["x"], "count": 1}}))
    res = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "review", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().startswith("mlc: no catalog at") and "\n" not in res.stderr.strip()


def test_a_port_in_use_is_one_line_and_exit_code_2(tmp_path):
    """`mlc review --port BUSY`: one line naming the port and --port, exit code 2 (a usage error, as for
    serve-flickr and collect), not uvicorn's startup log and its exit code 3 ("damaged dataset")."""
    import socket
    import subprocess
    import sys
    import yaml
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "source": {"kind": "local"},
                                      "classes": {"a": {"queries": ["a"], "count": 1}},
                                      "other": {"queries": ["x"], "count": 1}}))
    (tmp_path / "data").mkdir()
    Catalog(tmp_path / "data" / "catalog.sqlite").close()          # a catalog: the app would start
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "review", "-c", str(config),
                              "--port", str(port)], capture_output=True, text=True, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and res.stdout == "", (res.returncode, res.stdout, res.stderr)
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0] and "--port" in lines[0], lines[0]


def test_copies_that_must_stay_out_cannot_be_put_back(root):
    """A user's audit: "not a duplicate" put byte copies of a published test image into train and
    valid (its copy stayed in test), and a plain byte copy beside its twin. The same bytes cannot be
    another picture: refused, for either action; a near copy of a test image only as "not a
    duplicate" (a person saying it is another picture), never by "restore"."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.collect import collect
    from mlc_pipeline.curate import curate
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    v1 = read_manifest(cfg.layout.version("v1") / "manifest.csv")
    test_photo = next(r for r in v1 if r["split"] == "test")
    with Catalog(cfg.catalog_path, readonly=True) as c:
        source = Path(c.get(int(test_photo["candidate_id"]))["file_path"])
    source_sha = sha256_file(source)
    world = config.parent / "world" / (test_photo["labels"] or "scenery")
    (world / "zz_test_copy.jpg").write_bytes(source.read_bytes())
    with Image.open(source) as im:
        im.convert("RGB").resize((im.width * 8 // 10, im.height * 8 // 10)).save(world / "zz_test_near.jpg", quality=75)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        of_test = c.candidates("reason LIKE '%-duplicate-of-test:%'")     # the published copy is re-encoded:
        exact_test = [r for r in of_test if r["sha256"] == source_sha]    # both are near copies of it
        near_test = [r for r in of_test if r["sha256"] != source_sha]
        exact = c.candidates("reason LIKE 'exact-duplicate:%'")
    assert len(exact_test) == len(near_test) == len(exact) == 1, (of_test, exact)
    h = {"X-MLC-Client": "tab1"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        act = lambda cid, action: client.post("/api/action", json={"id": cid, "action": action, "reason": "r"},
                                              headers=h)
        for action in ("not-duplicate", "restore"):
            refused = act(exact_test[0]["id"], action)
            assert refused.status_code == 409 and refused.json()["error"] == (
                "the same bytes as a published test image: it is not another picture, and a copy in the version "
                "would train on a test image"), refused.text
            refused = act(exact[0]["id"], action)
            assert refused.status_code == 409 and refused.json()["error"].startswith(
                f"the same bytes as candidate {exact[0]['duplicate_of']}: it is not another picture"), refused.text
        refused = act(near_test[0]["id"], "restore")
        assert refused.status_code == 409 and "a near copy of a published test image" in refused.json()["error"]
        assert act(near_test[0]["id"], "not-duplicate").json()["state"]["include"] == "accepted"
    v2 = read_manifest(build_dataset(cfg).path / "manifest.csv")
    in_v2 = {r["candidate_id"] for r in v2}
    assert str(near_test[0]["id"]) in in_v2            # a person said it is another picture
    assert not {str(exact_test[0]["id"]), str(exact[0]["id"])} & in_v2


def test_the_card_and_inspect_count_what_the_version_left_out_after_the_review(root):
    """A user's audit: the card's "What curation removed" and `mlc inspect` counted images the review
    put back as removed, and not those it rejected."""
    import subprocess
    import sys
    config, cfg = root
    with Catalog(cfg.catalog_path) as c:
        tiny = c.candidates("reason='too-small'")[0]
        target = c.candidates("status='accepted' AND purpose='train'")[0]
        co.ensure_schema(c)
        co.act(c, tiny["id"], "restore", "big enough", "t", list(cfg.classes))
        co.act(c, target["id"], "reject", "blurred", "t", list(cfg.classes))
    v2 = build_dataset(cfg)
    card = (v2.path / "README.md").read_text()
    left_out = card.split("## What curation and review left out")[1].split("\n\n`labels`")[0]
    assert "- rejected: too-small" not in left_out and "- rejected: review: 1" in left_out, left_out
    shown = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "inspect", "-c", str(config)],
                           capture_output=True, text=True, timeout=120)
    assert "rejected: review = 1" in shown.stdout and "rejected: too-small" not in shown.stdout, shown.stdout


def test_a_script_must_name_the_labels_and_ids_are_json_integers(root):
    """A user's audit: a relabel without `labels` (a mistyped key) saved "other" and moved a class
    image to the negatives; a JSON string id was acted on; `/image/abc` answered FastAPI's 422."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        h = {"X-MLC-Client": "t"}
        for body in ({}, {"labels": []}, {"labels": None}, {"label": ["ants"]}):
            res = client.post("/api/action", json={"id": target["id"], "action": "relabel", **body}, headers=h)
            assert res.status_code == 400 and "labels must be a list of names" in res.json()["error"], (body, res.text)
        ok = client.post("/api/action", json={"id": target["id"], "action": "relabel", "labels": ["other"]}, headers=h)
        assert ok.json()["state"]["labels"] == "other"
        assert client.post("/api/action", json={"id": str(target["id"]), "action": "reject"}, headers=h).status_code == 400
        assert client.post("/api/undo", json={"id": target["id"], "action_id": "1"}, headers=h).status_code == 400
        for url, status, said in (("/image/abc", 404, "no candidate 'abc'"), ("/thumb/xyz", 404, "no candidate 'xyz'"),
                                  ("/file/1.5", 404, "no candidate '1.5'"),
                                  ("/?page_no=abc", 400, "page_no must be a whole number"),
                                  ("/duplicates?page_no=1.5", 400, "page_no must be a whole number"),
                                  ("/?licence=abc", 400, "the licence must be a whole number")):
            res = client.get(url)       # every refusal as the actions answer: {"error": ...} (verify17 audit)
            assert res.status_code == status and res.json()["error"].startswith(said), (url, res.text)
        page = client.get(f"/image/{target['id']}").text
        assert re.search(r"taken / uploaded</th><td>[^<]* / (\?|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)</td>", page), page
    with Catalog(cfg.catalog_path, readonly=True) as c:
        with pytest.raises(co.ReviewError, match="a relabel names its labels"):
            co.next_state(c.get(target["id"]), dict(co.EMPTY), "relabel", [], list(cfg.classes))


def test_a_photo_not_curated_yet_can_be_rejected_and_stays_out_once_curated(root):
    """The scale2 audit: a reject of a downloaded photo that no curate had judged yet answered
    "already out of the dataset", and the next curate and build published it."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    with Catalog(cfg.catalog_path) as c:      # as a collect leaves a new photo
        c.set_status(target["id"], "downloaded", None, "r", "download")
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        assert "out (not curated yet: the next curate decides)" in client.get(f"/image/{target['id']}").text
        h = {"X-MLC-Client": "t"}
        res = client.post("/api/action", json={"id": target["id"], "action": "restore"}, headers=h)
        assert res.status_code == 409 and res.json()["error"].startswith("not curated yet"), res.text
        res = client.post("/api/action", json={"id": target["id"], "action": "reject"}, headers=h)
        assert res.status_code == 200 and res.json()["state"]["include"] == "rejected", res.text
        res = client.post("/api/action", json={"id": target["id"], "action": "restore"}, headers=h)  # verify19
        assert res.status_code == 200 and res.json()["state"]["include"] is None, res.text
        assert client.post("/api/action", json={"id": target["id"], "action": "reject"}, headers=h).status_code == 200
    curate(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert c.get(target["id"])["status"] == "accepted"
    assert target["photo_id"] not in {r["photo_id"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}


def test_the_original_of_a_bomb_or_a_file_too_large_is_never_served(root):
    """docs/review.md "Files": `/file/<id>` answers 403 for a file quarantined as a decompression bomb or
    as too large, so the browser is never handed it; the originals of accepted images are served."""
    import yaml
    from fastapi.testclient import TestClient
    from mlc_pipeline.config import load_config
    from mlc_pipeline.curate import curate
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    with Catalog(cfg.catalog_path, readonly=True) as c:
        rows = sorted(c.candidates("status='accepted'"), key=lambda r: r["bytes"])
    bytes_cap = rows[-3]["bytes"]                        # the 2 largest files become too large
    pixels_cap = sorted(r["img_width"] * r["img_height"] for r in rows[:-2])[-3]    # and 2 more bombs
    raw = yaml.safe_load(Path(config).read_text())
    raw["source"]["max_image_bytes"], raw["curate"]["max_pixels"] = bytes_cap, pixels_cap
    Path(config).write_text(yaml.safe_dump(raw))
    curate(load_config(config))
    with Catalog(cfg.catalog_path, readonly=True) as c:
        after = {r["id"]: r for r in c.candidates()}
    refused = {cid: r["verify_reason"] for cid, r in after.items()
               if (r["verify_reason"] or "").startswith(("decompression-bomb", "file-too-large"))}
    assert sorted(set(refused.values())) == ["decompression-bomb", "file-too-large"], refused
    kept = [cid for cid, r in after.items() if r["status"] == "accepted"]
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        for cid, reason in refused.items():
            assert Path(after[cid]["file_path"]).is_file(), "the quarantined file is still there: a 404 proves nothing"
            res = client.get(f"/file/{cid}")
            assert res.status_code == 403 and reason in res.text, (cid, res.status_code)
        good = client.get(f"/file/{kept[0]}")
        assert good.status_code == 200 and good.content == Path(after[kept[0]]["file_path"]).read_bytes()


def test_a_deeply_nested_body_is_a_one_line_400_not_a_500_and_a_traceback(root):
    """A user's audit (review25): a JSON object nested 5,000 levels deep (20 KB) got a bare 500 on
    /api/action and /api/undo, and a 90-line RecursionError traceback in the server's log each time
    (json raises RecursionError, not the ValueError the app caught). It is refused as a body that is
    not JSON is: 400 and one line, nothing acted on, nothing in the log but the access line."""
    config, cfg = root
    target = first_accepted(cfg, "ants")
    deep = '{"id": %d, "action": "reject", "action_id": 1, "x": %s%s}' % (target["id"], "[" * 5000, "]" * 5000)
    h = {"X-MLC-Client": "t", "Content-Type": "application/json"}
    server = ReviewServer(config, free_port())
    try:
        for path in ("/api/action", "/api/undo"):
            for _ in range(2):
                res = requests.post(server.url + path, data=deep, headers=h, timeout=60)
                assert res.status_code == 400, (path, res.status_code, res.text)
                assert res.json() == {"error": "the body must be JSON nested at most a few levels deep"}, res.text
        assert post(requests, server.url + "/api/action", {"id": target["id"], "action": "reject"}).status_code == 200
    finally:
        out = server.stop()
    # a 500 as uvicorn logs it (`"POST /api/action HTTP/1.1" 500`), not a client port such as :57500
    assert "Traceback" not in out and "RecursionError" not in out and '" 500' not in out, out
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert [a["action"] for a in co.actions(c, target["id"])] == ["reject"]


def test_a_malformed_action_is_400_and_saving_the_same_labels_changes_nothing(root):
    """A user's audit (review25): an unknown or missing action and a negative `seen_action` got 409
    (Conflict), where a malformed request is a 400; saving the labels an image already has answered
    200 and logged a `relabel` that changed nothing (then offered as "undo relabel")."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    target = first_accepted(cfg, "ants")
    h = {"X-MLC-Client": "t"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        act = lambda **body: client.post("/api/action", json={"id": target["id"], **body}, headers=h)
        for body, said in (({"action": "frobnicate"}, "unknown action 'frobnicate'"), ({}, "the action is missing"),
                           ({"action": None}, "the action is missing"), ({"action": 7}, "unknown action 7")):
            res = act(**body)
            assert res.status_code == 400 and res.json()["error"].startswith(said), (body, res.text)
            assert "relabel, reject, restore, not-duplicate, remove" in res.json()["error"]
        for seen in (-7, -1):
            res = act(action="reject", seen_action=seen)
            assert res.status_code == 400 and res.json()["error"] == "seen_action must be an action id (0: none)"
        assert act(action="reject", seen_action=1).status_code == 409          # a real stale page stays a 409
        with Catalog(cfg.catalog_path, readonly=True) as c:
            assert co.actions(c, target["id"]) == []
        same = act(action="relabel", labels=["ants", "ants"])         # its curated labels
        assert same.status_code == 200, same.text
        assert same.json() == {"ok": True, "changed": False, "action_id": None, "state": co.EMPTY,
                               "message": "nothing changed: the image already has these labels"}
        both = act(action="relabel", labels=["ants", "bees"], seen_action=0).json()
        assert both["changed"] is True and both["state"]["labels"] == "ants bees"
        again = act(action="relabel", labels=["bees", "ants"], seen_action=both["action_id"]).json()
        assert again["changed"] is False and again["state"]["labels"] == "ants bees"
        page = client.get(f"/image/{target['id']}").text
        assert f'data-undo="{both["action_id"]}"' in page and "undo relabel" in page
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert [a["id"] for a in co.actions(c, target["id"])] == [both["action_id"]]


def test_a_byte_copy_of_a_photo_taken_down_says_so_and_the_kept_page_lists_its_copies(root, monkeypatch):
    """A user's audit (review25): restoring the byte copy of a photo taken down was refused as "a
    copy in the version would be in it twice", though the photo is gone from every future version;
    and the kept image's page never named the copies curate dropped in its favour (rejecting it
    takes them out too: the reviewer had to search /duplicates by eye for one to put back). The
    takedown here is one from before the export26 fix, which left a byte copy to the next curate (it
    takes the copy down with the photo now: "this photo was taken down", test_takedown.py)."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.curate import takedown
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    monkeypatch.setattr(takedown, "take_down_byte_copies", lambda *args: None)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        exact = c.candidates("reason LIKE 'exact-duplicate:%'")[0]
        near = c.candidates("status='duplicate' AND reason LIKE 'near-%'")[0]
        kept = c.get(exact["duplicate_of"])
    h = {"X-MLC-Client": "t"}
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        page = client.get(f"/image/{kept['id']}").text
        listed_copies = page.split('id="copies"')[1].split("</p>")[0]
        assert f'href="/image/{exact["id"]}?from=image:{kept["id"]}"' in listed_copies and "exact-duplicate" in listed_copies, listed_copies
        # "not a duplicate" is refused on a byte copy: the page says so, and offers it only for near ones (verify25)
        assert "a byte copy (exact-...) stays out" in listed_copies, listed_copies
        assert ("puts it back" in listed_copies) == ("near-duplicate" in listed_copies), listed_copies
        near_page = client.get(f"/image/{near['duplicate_of']}").text
        near_copies = near_page.split('id="copies"')[1].split("</p>")[0]
        assert f'href="/image/{near["id"]}?from=image:{near["duplicate_of"]}"' in near_copies and "puts it back" in near_copies, near_copies
        assert 'id="copies"' not in client.get(f"/image/{exact['id']}").text        # a copy has none of its own
        gone = client.post("/api/action", json={"id": kept["id"], "action": "remove", "reason": "owner asked"},
                           headers=h)
        assert gone.status_code == 200, gone.text
        for action in ("restore", "not-duplicate"):
            res = client.post("/api/action", json={"id": exact["id"], "action": action, "reason": "r"}, headers=h)
            assert res.status_code == 409 and res.json()["error"] == (
                f"the same bytes as candidate {kept['id']} ({kept['source']}:{kept['photo_id']}), a photo taken "
                f"down: a copy of it stays out of every version, as the photo does"), res.text


def test_the_image_page_links_flickr_only_for_flickr_photos_and_shows_a_folders_file(root):
    """A user's audit (review25): the "photo page" of every image with an owner linked to flickr.com,
    also for the bundled server's photos (folder mode, the generated world), whose owner and id are
    made up: a Flickr 404, or a stranger's photo. Only a Flickr photo links there now (as
    ATTRIBUTION.md does); a folder-mode photo shows the file it was served from, which was shown
    nowhere (the catalog's `source_file`)."""
    from html import escape
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    config, cfg = root
    local = first_accepted(cfg, "ants")
    assert local["source"] == "local" and local["owner"] and local["source_file"].startswith("ants/")
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([Found("flickr", "53012345678", "train", "ants", "ants", "https://live.staticflickr.com/1/x.jpg",
                              "url_m", 8, 8, 4, "CC BY", "12345@N01", "Owner", "t", None, None, "")], "r")
        flickr = c.get_by_photo("flickr", "53012345678")
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        page = client.get(f"/image/{local['id']}").text
        assert "flickr.com" not in page, re.findall(r".{60}flickr\.com.{60}", page)
        record = page.split('class="record"')[1].split("</table>")[0]
        path = str(Path(cfg.source.local.folder) / local["source_file"])
        assert f"<tr><th>file</th><td><code>{escape(path)}</code></td></tr>" in record, record
        assert "<tr><th>photo page</th><td>none: not a Flickr photo" in record, record
        page = client.get(f"/image/{flickr['id']}").text
        assert 'href="https://www.flickr.com/photos/12345@N01/53012345678"' in page
        assert "<tr><th>file</th>" not in page
