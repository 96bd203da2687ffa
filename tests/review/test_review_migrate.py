"""A running `mlc review` while `mlc catalog migrate` moves its SQLite catalog to PostgreSQL (the
concurrency28 audit): every action the app answers 200 is in PostgreSQL, and every other one is
refused in words (409 once the catalog moved, 503 while the copy holds the catalog), never a 200 into
the old file, nor a bare 500. A real `mlc review` process, a real migration, real HTTP requests."""

import subprocess
import sys

import requests

from helpers import free_port
from review_world import ReviewServer, make_data_root

from mlc_pipeline.catalog import Catalog, PostgresCatalog
from mlc_pipeline.catalog import overrides as co

MLC = [sys.executable, "-m", "mlc_pipeline.cli"]


def test_review_actions_during_and_after_a_migration_reach_postgresql_or_are_refused(tmp_path, pg_url):
    """Relabels go on from before the migration starts until it ends (before, during and after the copy),
    then a reject, a takedown and a page come after it. On main: all answered 200 into the SQLite file,
    the takedown a bare 500, and the next build on PostgreSQL published the rejected images."""
    config, cfg = make_data_root(tmp_path)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        ids = [r["id"] for r in c.candidates("status='accepted' AND purpose='train'")]
        photo = c.get(ids[-1])
    answers: list[tuple[int, requests.Response]] = []
    server = ReviewServer(config, free_port())
    try:
        with requests.Session() as s:
            def act(cid: int, **body) -> requests.Response:
                res = s.post(server.url + "/api/action", json={"id": cid, "reason": "r", **body},
                             headers={"X-MLC-Client": "t1"}, timeout=60)
                answers.append((cid, res))
                return res

            assert act(ids[0], action="reject").status_code == 200
            migrate = subprocess.Popen([*MLC, "catalog", "migrate", "-c", str(config), "--to", pg_url],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            turn = 0
            while migrate.poll() is None:      # each relabel changes the image: each one is a write
                turn += 1
                act(ids[1 + turn % 4], action="relabel", labels=["bees"] if turn // 4 % 2 else ["ants", "bees"])
            out, err = migrate.communicate(timeout=120)
            assert migrate.returncode == 0, err[-2000:]
            after = act(ids[6], action="reject")
            takedown = s.post(server.url + "/api/action", headers={"X-MLC-Client": "t1"}, timeout=60,
                              json={"id": photo["id"], "action": "remove", "reason": "licence withdrawn"})
            page = s.get(server.url + "/", timeout=60)
    finally:
        log = server.stop()
    for res in (after, takedown):          # the catalog moved: refused in words, naming the URL to set
        assert res.status_code == 409, (res.status_code, res.text, log[-3000:])
        assert "was moved to" in res.json()["error"] and "catalog.url" in res.json()["error"], res.text
    assert page.status_code == 409 and "was moved to" in page.text, page.text
    assert "Traceback" not in log, log[-3000:]
    others = [(cid, res.status_code, res.text) for cid, res in answers if res.status_code != 200]
    assert all(code in (409, 503) and "error" in res for _, code, res in others), others
    saved = [(cid, res.json()) for cid, res in answers if res.status_code == 200]
    assert len(saved) > 1, answers
    last = {cid: body["state"] for cid, body in saved}
    with Catalog(PostgresCatalog(pg_url, cfg.data_dir), readonly=True) as pg:
        in_pg = {cid: co.override_of(pg, cid) for cid in last}
        logged = sorted(a["id"] for cid in last for a in co.actions(pg, cid))
        removed = pg.get(photo["id"])["status"]
    assert in_pg == last                   # every action answered 200 is in PostgreSQL, none other
    assert logged == sorted(body["action_id"] for _, body in saved)
    assert removed != "removed"
