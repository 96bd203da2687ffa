"""What the model's lists cost the catalog: counted on the catalog's own SQLite connection (its trace
callback sees every statement it runs), on a real built data root and real bundle files. The probe
list asked the catalog once per probe row, and an image page opened from a list read the whole list
again, so each such page paid that too; each card of the queues page paid two queries for its mark
(the review29 code review)."""

import json
import re
from pathlib import Path

from review_world import make_data_root

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.review.queues import probes_accepted


def plant_scores(cfg, probes: list[dict], wrong: list[dict], name: str = "m-costs", head: str = "sigmoid") -> Path:
    """A latest bundle `name` (made, or one plant_review_list made) whose test_scores.csv (the columns
    training writes) says the model accepts each of `probes` as ants and answers each of `wrong` (ants
    test images) with bees."""
    bundle = cfg.data_dir / "models" / name
    bundle.mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / "models" / "LATEST").write_text(f"{name}\n")
    (bundle / "bundle.json").write_text(json.dumps({"vocab": ["ants", "bees", "other"], "classes": ["ants", "bees"],
                                                    "thresholds": None if head == "softmax" else [0.5] * 3, "head": head}))
    rows = [(r, "probe", "", 0.6 + i / 100, 0.1) for i, r in enumerate(probes)]
    rows += [(r, "test", "ants", 0.1, 0.6 + i / 100) for i, r in enumerate(wrong)]
    (bundle / "test_scores.csv").write_text(
        "path,split,labels,query,source,photo_id,score:ants,score:bees,score:other\n" +
        "".join(f"p{i}.jpg,{split},{labels},q,{r['source']},{r['photo_id']},{a},{b},0.1\n"
                for i, (r, split, labels, a, b) in enumerate(rows)))
    return bundle


def by_photo(statements: list[str]) -> list[str]:
    """The statements that look candidates up by photo id (what matching a scores file's rows costs)."""
    return [s for s in statements if re.search(r"FROM candidates WHERE .*photo_id", s)]


def world(tmp_path, probes: int = 8, wrong: int = 3):
    config, cfg = make_data_root(tmp_path)
    with Catalog(cfg.catalog_path) as c:
        ants = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")
        for r in ants[:probes]:
            c.update_fields(r["id"], purpose="probe")
        probe_rows = [c.get(r["id"]) for r in ants[:probes]]
    plant_scores(cfg, probe_rows, ants[probes:probes + wrong])
    return cfg, probe_rows, ants[probes:probes + wrong]


def test_the_probe_list_is_matched_to_candidates_in_one_query_and_read_once(tmp_path):
    """probes_accepted read test_scores.csv and the thresholds itself and asked the catalog once per probe
    row; it now reads the decisions queues.scored holds and matches every row in one query, once while
    the bundle's files are unchanged."""
    cfg, probes, _ = world(tmp_path)
    statements: list[str] = []
    with Catalog(cfg.catalog_path) as c:
        c.db.set_trace_callback(statements.append)
        _, rows = probes_accepted(cfg, c)
        first = by_photo(statements)
        statements.clear()
        assert probes_accepted(cfg, c)[1] == rows
        again = by_photo(statements)
    assert sorted(r["candidate_id"] for r in rows) == sorted(r["id"] for r in probes)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)     # surest first
    assert len(first) == 1, first           # one query for all 8 rows (it was 8)
    assert again == [], again               # the files unchanged: not matched again


def test_an_image_page_opened_from_a_list_and_the_queues_page_cost_no_query_per_row(tmp_path):
    """An image page opened from the probes or the wrong-answers list read that whole list again (the
    probes: a query per probe row); the queues page asked two queries per card for its mark. Now the
    lists are matched once while the bundle's files are unchanged, and the marks are read in two
    queries for the whole page."""
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    cfg, probes, wrong = world(tmp_path)
    statements: list[str] = []
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        h = {"X-MLC-Client": "t"}
        for cid in (probes[0]["id"], wrong[0]["id"]):          # two of them handled: marked on their cards
            assert client.post("/api/action", json={"id": cid, "action": "reject", "reason": "r"},
                               headers=h).status_code == 200
        app_catalog = client.app.state.review.catalog
        app_catalog.db.set_trace_callback(statements.append)
        page = client.get("/queues").text
        assert "8 probe images accepted" in page and "3 test images answered wrong" in page
        assert page.count('<span class="badge">rejected in review</span>') == 2
        per_card = [s for s in statements if re.search(r"FROM (candidates WHERE id|review_overrides WHERE candidate_id)", s)]
        assert per_card == [], per_card        # none per card (it was two per card: 22)
        for name, cid in (("probes", probes[3]["id"]), ("wrong", wrong[1]["id"])):
            statements.clear()
            text = client.get(f"/image/{cid}?list={name}").text
            assert re.search(rf'id="next" href="/image/\d+\?list={name}"', text)
            assert by_photo(statements) == [], (name, by_photo(statements))      # the list not matched again
        statements.clear()
        assert 'href="/queues?probes_page=1&amp;handled=hide#probes" id="back"' in client.get(
            f"/image/{probes[3]['id']}?list=probes&handled=hide").text
        assert by_photo(statements) == []
