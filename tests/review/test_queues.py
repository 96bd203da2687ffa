"""review/queues.py: what the latest model bundle says about images, read from its CSV files."""

from __future__ import annotations

import shutil

import pytest

from mlc_pipeline.config import Config
from mlc_pipeline.review.queues import probes_accepted, scores_on_test, unread, wrong_answers


@pytest.mark.parametrize("damage", ["[]", "{not json"])
def test_a_damaged_bundle_json_empties_the_probe_queue_and_says_why(tmp_path, trained_shapes_bundle, caplog, damage):
    """probes_accepted parsed bundle.json itself: a list there was an AttributeError and bad JSON a
    JSONDecodeError, a 500 in the review app (the arch24 audit). The queue is empty and the log says why."""
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    bundle = shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "m1")
    (cfg.layout.models / "LATEST").write_text("m1\n")
    assert (bundle / "test_scores.csv").is_file()
    (bundle / "bundle.json").write_text(damage)
    with caplog.at_level("WARNING", logger="mlc_pipeline.review.queues"):
        assert probes_accepted(cfg, None) == (bundle, [])
    assert "m1/bundle.json cannot be read" in caplog.text
    assert wrong_answers(cfg, None) == (bundle, []) and scores_on_test(cfg, "any") == []    # the report's reading
    for name in ("wrong", "probes"):        # the queues page says why, never "none" (unread)
        assert unread(bundle, name).startswith("unreadable: bundle.json cannot be read ("), unread(bundle, name)


def test_a_damaged_scores_file_empties_the_wrong_answers_and_says_why(tmp_path, trained_shapes_bundle, caplog):
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    bundle = shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "m1")
    (cfg.layout.models / "LATEST").write_text("m1\n")
    text = (bundle / "test_scores.csv").read_text().splitlines()
    (bundle / "test_scores.csv").write_text("\n".join([text[0].replace("score:", "s:", 1)] + text[1:]) + "\n")
    with caplog.at_level("WARNING", logger="mlc_pipeline.review.queues"):
        assert wrong_answers(cfg, None) == (bundle, []) and scores_on_test(cfg, "any") == []
    assert "test_scores.csv cannot be read (KeyError" in caplog.text
    assert unread(bundle, "probes").startswith("unreadable: test_scores.csv cannot be read (KeyError")


def test_the_review_list_comes_from_the_latest_mining_round_when_its_retrain_shipped(tmp_path):
    """The default job ships round 1's retrained bundle, which never mined: the round's review.csv and
    mined.csv are in round 0's bundle, and the queues page said 'lists none' while the run counted
    class images to review (the day24 audit)."""
    from mlc_pipeline.review.queues import mining_bundle, model_review_list, scores_for
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    models = cfg.layout.models
    for name in ("r0", "r1"):
        (models / name).mkdir(parents=True)
    (models / "r0" / "review.csv").write_text("candidate_id,photo_id,label,score\n7,p7,red,0.20\n5,p5,red,0.05\n")
    (models / "r0" / "mined.csv").write_text("candidate_id,photo_id,decision,score\n9,p9,added,0.91\n")
    (models / "LATEST").write_text("r1\n")
    assert mining_bundle(cfg) == models / "r0"
    bundle, rows = model_review_list(cfg)
    assert bundle == models / "r0" and [r["candidate_id"] for r in rows] == ["5", "7"]     # lowest score first
    assert [(r["file"], r["score"]) for r in scores_for(cfg, 9)] == [("mined.csv", 0.91)]
    (models / "r1" / "mined.csv").write_text("candidate_id,photo_id,decision,score\n")   # the latest mined: its own
    assert mining_bundle(cfg) == models / "r1" and model_review_list(cfg) == (models / "r1", [])


def test_a_photo_id_two_sources_share_leads_to_the_scored_photo_not_the_other(tmp_path, trained_shapes_bundle):
    """A photo id is unique only within its source (a Flickr id, a folder's, a URL list's): the queues
    matched test_scores.csv rows by photo id alone, so a wrong-answer card could link to another
    source's image, and that image's page showed the scored photo's scores (the review29 code review).
    test_scores.csv names the source since; the lists and the image page match on both."""
    import csv

    from mlc_pipeline.catalog import Catalog, Found
    from mlc_pipeline.report import analysis
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    bundle = shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "m1")
    (cfg.layout.models / "LATEST").write_text("m1\n")
    with open(bundle / "test_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "source" in rows[0]
    s = analysis.load_scored(bundle)
    i = next(i for i, r in enumerate(rows) if r["split"] == "test" and s.pred[i, s.real].any())
    rows[i]["labels"] = ""          # an image of none of the classes the model claims one for: a wrong answer
    with open(bundle / "test_scores.csv", "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    scored = rows[i]
    with Catalog(cfg.catalog_path) as c:      # the same photo id in another source, recorded first
        run = c.start_run("plant")
        c.upsert_found([Found(src, scored["photo_id"], "train", "red", "red", None, None, None, None, 4, "CC BY 2.0",
                              "o", "o", "t", None, None, "red") for src in ("elsewhere", scored["source"])], run)
        ours = c.get_by_photo(scored["source"], scored["photo_id"])["id"]
        _, wrong = wrong_answers(cfg, c)
    assert [w["candidate_id"] for w in wrong if w["photo_id"] == scored["photo_id"]] == [ours]
    assert scores_on_test(cfg, scored["photo_id"], scored["source"])
    assert scores_on_test(cfg, scored["photo_id"], "elsewhere") == []
