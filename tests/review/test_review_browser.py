"""The review app in a real browser: Playwright driving Debian's chromium against `mlc review` (a real
process over a real curated data root), then a real `mlc build` that must reflect the review.

Screenshots for docs/review.md: set MLC_REVIEW_SCREENSHOTS=<folder> and run this test."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port
from review_world import ReviewServer, make_data_root, plant_polyglot, plant_review_list

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.catalog import overrides as co
from mlc_pipeline.review import app as review_app
from mlc_pipeline.manifest import read_manifest

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.environ.get("MLC_REVIEW_SCREENSHOTS")


def all_images_loaded(page) -> None:
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")


def shoot(page, name: str, full: bool = False) -> None:
    all_images_loaded(page)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"review-{name}.png"), full_page=full)


@pytest.fixture
def world(tmp_path):
    config, cfg = make_data_root(tmp_path)
    server = ReviewServer(config, free_port())
    yield config, cfg, server
    server.stop()


@pytest.fixture
def browser():
    assert CHROMIUM, "scripts/test.sh installs Debian's chromium for this test"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def state_after(page, key: str) -> str:
    """Press a shortcut on an image page and wait for the reload it triggers."""
    with page.expect_navigation():
        page.keyboard.press(key)
    return page.inner_text("#state")


def test_filter_open_relabel_reject_undo_then_build(world, browser):
    config, cfg, server = world
    v1 = cfg.data_dir / "datasets" / "default" / "v1"
    v1_manifest = (v1 / "manifest.csv").read_bytes()
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Browse, then filter: training images labelled ants
    page.goto(server.url + "/")
    everything = int(page.inner_text("#total"))
    page.select_option("select[name=set]", "train")
    page.select_option("select[name=label]", "ants")
    page.select_option("select[name=status]", "accepted")
    with page.expect_navigation():
        page.click("form#filters button[type=submit]")
    shoot(page, "browse")
    ants = int(page.inner_text("#total"))
    # every thumbnail decoded (JPEGs made once, cached under the data root by file content)
    widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == ants and min(widths) > 0
    assert len(list((cfg.data_dir / "review" / "thumbs").rglob("*.jpg"))) >= ants
    assert 0 < ants < everything
    labels = page.locator(".card .labels").all_inner_texts()
    assert len(labels) == ants and all("ants" in x.split() for x in labels)

    # Open the first image; add the label bees (key 2) and save (s)
    with page.expect_navigation():
        page.locator(".card").first.click()
    first = page.get_attribute("#image-page", "data-id")
    assert page.inner_text("#labels") == "ants" and page.inner_text("#state") == "in"
    page.keyboard.press("2")
    page.fill("#reason", "shows bees too")
    page.locator("#reason").blur()
    assert state_after(page, "s") == "in"
    assert page.inner_text("#labels") == "ants bees"
    shoot(page, "image", full=True)

    # Reject it, then undo the rejection: the relabel stays
    assert state_after(page, "r") == "out (rejected in review)"
    assert state_after(page, "u") == "in"
    assert page.inner_text("#labels") == "ants bees"
    actions = page.locator("#actions tr").all_inner_texts()
    assert [a.split("\t")[2] for a in actions[1:]] == ["relabel", "reject", "undo"]
    assert "shows bees too" in actions[1]

    # Next image under the same filter (j): reject it for good
    with page.expect_navigation():
        page.keyboard.press("j")
    second = page.get_attribute("#image-page", "data-id")
    assert second != first
    page.fill("#reason", "not an ant")
    page.locator("#reason").blur()
    assert state_after(page, "r") == "out (rejected in review)"
    page.keyboard.press("r")                     # a refused action shows why, and changes nothing
    page.wait_for_function("document.getElementById('msg').textContent.length > 0")
    assert page.inner_text("#msg") == "already out of the dataset"
    page.goto(server.url + "/duplicates")
    shoot(page, "duplicates")
    page.goto(server.url + "/log")
    shoot(page, "log")
    page.goto(server.url + "/queues")
    assert page.locator("#queues tr").count() == len(review_app.QUEUES) + 1     # a header row, a row each

    # A pool image mining held back (made one here: mining needs a trained model), decided from its
    # queue: saved as "other", the label it shows, it becomes a hard negative and leaves the queue
    with Catalog(cfg.catalog_path) as c:
        held = c.candidates("status='accepted' AND purpose='train' AND curated_label='bees'")[0]
        c.update_fields(held["id"], purpose="pool", curated_label="other", reason="held:like-class:bees:round=1",
                        mined_score=0.8)
    with page.expect_navigation():
        page.click("text=not decided yet")
    assert page.inner_text("#total") == "1"
    assert page.eval_on_selector("select[name=reviewed]", "s => s.value") == "0"   # a new filter keeps the queue's
    with page.expect_navigation():
        page.locator(".card").first.click()
    assert page.inner_text("#state").startswith("out (in the mining pool")
    assert state_after(page, "s") == "in (a pool image labelled in review)"
    page.goto(server.url + "/queues")
    assert page.locator("#queues tr", has_text="not decided yet").inner_text().endswith("0")
    assert not errors, errors

    # The next build applies the review; v1 is untouched
    res = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "build", "-c", str(config)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "dataset default v2: published" in res.stdout
    assert "changed in review" in res.stdout, res.stdout
    v2 = {r["candidate_id"]: r for r in read_manifest(cfg.data_dir / "datasets" / "default" / "v2" / "manifest.csv")}
    assert v2[first]["labels"] == "ants bees" and v2[first]["path"].startswith("images/ants+bees/")
    assert second not in v2
    assert (v2[str(held["id"])]["labels"], v2[str(held["id"])]["purpose"]) == ("", "pool")
    assert (v1 / "manifest.csv").read_bytes() == v1_manifest
    # the image page now lists the label in both versions
    page.goto(f"{server.url}/image/{first}")
    rows = page.locator("text=Labels per published version >> xpath=following-sibling::table[1] >> tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows[1:]] == ["v1", "v2"] and rows[2].endswith("ants bees")


def test_a_takedown_shows_the_published_versions_that_still_hold_the_photo(world, browser):
    """The takedown's answer lists the published versions that contain the photo (as `mlc remove`
    prints them), so that the reviewer can rebuild or withdraw them. The page showed only "out
    (taken down)" after its reload: the answer was dropped."""
    config, cfg, server = world
    with Catalog(cfg.catalog_path, readonly=True) as c:
        target = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[0]
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept("the owner asked"))
    page.goto(f"{server.url}/image/{target['id']}")
    with page.expect_navigation():
        page.click("button[data-action=remove]")
    assert page.inner_text("#state") == "out (taken down)"
    shown = page.inner_text("#msg")
    assert "Published versions that still contain this photo: v1." in shown, shown
    assert "mlc build" in shown
    page.reload()                                # shown once: the next load is the plain page again
    assert page.inner_text("#msg") == ""
    assert not errors, errors


def test_saving_with_no_label_checked_asks_before_saving_other(world, browser):
    """Every box unchecked, "save labels" relabelled the image as "other" without a word: the page
    now asks; cancelled, nothing is saved; confirmed, the image is "other"."""
    config, cfg, server = world
    with Catalog(cfg.catalog_path, readonly=True) as c:
        target = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[0]
    page = browser.new_page()
    errors, asked = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/image/{target['id']}")
    page.keyboard.press("1")                     # uncheck ants: no box is checked now
    assert page.eval_on_selector_all("input[name=label]:checked", "boxes => boxes.length") == 0
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.keyboard.press("s")
    page.wait_for_function("document.getElementById('msg').textContent.length > 0")
    assert asked and '"other"' in asked[0]
    assert page.inner_text("#msg").startswith("not saved") and page.inner_text("#labels") == "ants"
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert co.actions(c, target["id"]) == []
    page.once("dialog", lambda dialog: dialog.accept())
    assert state_after(page, "s") == "in"
    assert page.inner_text("#labels") == "other"
    assert not errors, errors


def test_a_held_pool_image_is_saved_as_other_by_the_documented_keys_or_its_button(world, browser):
    """A user's audit (review25): docs/review.md says `o`, `s` save a held pool image as "other", but
    its "other" box is drawn checked and `o` toggled it off: `s` then asked "No label is checked"
    and, cancelled, saved nothing. `o` now checks "other" (and unchecks the classes), never unchecks
    it; `s` alone saves the label shown; and the page of an undecided pool image has a button "save
    as other". Saving the labels an image already has says nothing changed, and logs nothing."""
    config, cfg, server = world
    with Catalog(cfg.catalog_path) as c:
        held = c.candidates("status='accepted' AND purpose='train' AND curated_label='bees'")[:3]
        for i, r in enumerate(held):
            c.update_fields(r["id"], purpose="pool", curated_label="other", reason="held:like-class:bees:round=1",
                            mined_score=0.8 - i / 10)
        target = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[0]
    page = browser.new_page()
    errors, asked = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    checked = lambda: page.eval_on_selector_all("input[name=label]:checked", "boxes => boxes.map(b => b.value)")
    by_keys, by_button, by_s = (r["id"] for r in held)
    page.goto(f"{server.url}/image/{by_keys}")
    assert checked() == ["other"]
    page.keyboard.press("o")
    assert checked() == ["other"]                # still checked: `o` sets "other"
    page.keyboard.press("1")
    assert checked() == ["ants"]
    page.keyboard.press("o")
    assert checked() == ["other"]
    assert state_after(page, "s") == "in (a pool image labelled in review)" and page.inner_text("#labels") == "other"
    page.goto(f"{server.url}/image/{by_button}")
    with page.expect_navigation():
        page.click("button[data-action=relabel-other]")
    assert page.inner_text("#state") == "in (a pool image labelled in review)" and page.inner_text("#labels") == "other"
    assert page.locator("button[data-action=relabel-other]").count() == 0       # decided: no second offer
    page.goto(f"{server.url}/image/{by_s}")
    assert "s saves it as" in page.inner_text("#held-hint")
    assert state_after(page, "s") == "in (a pool image labelled in review)"
    page.goto(f"{server.url}/image/{target['id']}")
    assert page.locator("button[data-action=relabel-other]").count() == 0       # not a pool image
    page.keyboard.press("s")                     # the labels it has: nothing changed, no reload
    page.wait_for_function("document.getElementById('msg').textContent.length > 0")
    assert page.inner_text("#msg") == "nothing changed: the image already has these labels"
    with Catalog(cfg.catalog_path, readonly=True) as c:
        for cid in (by_keys, by_button, by_s):
            assert [(a["action"], a["detail"]) for a in co.actions(c, cid)] == [("relabel", {"labels": "other"})]
        assert co.actions(c, target["id"]) == []
    assert not asked and not errors, (asked, errors)


def test_a_collected_file_opened_on_its_own_runs_no_script(world, browser):
    """The security26 audit: a valid GIF with HTML after it, collected from a host that sent it as
    `image/gif, text/html` (a catalog of before 2026-12-07 still holds that type), was served with that
    type; opened on its own ("Open image in new tab", or another site's link to /file/N) Chromium took
    the last type, ran its script in the app's origin, and the script rejected an image through
    /api/action. It is served as the GIF its bytes are, sandboxed: nothing runs, nothing is acted on,
    and the image page still shows it."""
    config, cfg, server = world
    planted, victim = plant_polyglot(cfg)
    page = browser.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/file/{planted}")
    page.wait_for_timeout(1500)                  # the script's alert, then its fetch, came at once
    assert not dialogs, dialogs
    assert page.evaluate("document.contentType") == "image/gif"
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert co.actions(c, victim) == [] and c.get(victim)["status"] == "accepted"
    page.goto(f"{server.url}/image/{planted}")
    all_images_loaded(page)
    assert page.eval_on_selector("img.full", "i => [i.naturalWidth, i.naturalHeight]") == [120, 100]
    assert not dialogs and not errors, (dialogs, errors)


def test_a_huge_title_or_owner_keeps_the_take_down_button_on_screen(world, browser):
    """The security26 audit: a 100,000-character title made the image page 2,167,586 px wide and put
    the "take down…" button off the screen; a 50,000-character owner made pages 412,318 px wide. They
    are clipped (the whole text in the element's title), and the page is no wider than the window."""
    config, cfg, server = world
    title, owner = "A" * 100_000, "B" * 50_000
    with Catalog(cfg.catalog_path) as c:
        target = c.candidates("status='accepted' AND purpose='train'")[0]
        c.update_fields(target["id"], title=title, owner_name=owner, owner=owner, url="http://x/" + "u" * 50_000,
                        license_name="L" * 50_000, date_taken="D" * 50_000)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    for url in (f"{server.url}/image/{target['id']}", f"{server.url}/"):
        page.goto(url)
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, url
    page.goto(f"{server.url}/image/{target['id']}")
    box = page.locator("button[data-action=remove]").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1280 and box["y"] >= 0 and box["y"] + box["height"] <= 860, box
    assert page.get_attribute("#title", "title") == title        # all of it, on hover
    assert page.evaluate("document.documentElement.scrollHeight") < 5000


def test_classes_past_the_ninth_show_no_key_they_cannot_have_and_long_names_stay_in_their_cards(world, browser):
    """The review29 audit: with 12 classes the boxes showed keys 10, 11, 12, which cannot be typed
    (typing 1 then 2 toggles classes 1 and 2, and `s` saved the wrong labels); 41-character class
    names spilled out of the browse cards and made the page wider than the window. A class past the
    ninth has no key hint and is set by a click on its box; a card clips its labels, the whole in
    its title."""
    import yaml
    config, cfg, server = world
    raw = yaml.safe_load(config.read_text())
    names = [f"c{i:02d}" + "x" * 38 for i in range(10)]       # 41 characters (LABEL_RE's most), no hyphen to break at
    raw["classes"].update({name: {"queries": [f"q{i}"], "count": 1} for i, name in enumerate(names)})
    many = config.with_name("many.yaml")
    many.write_text(yaml.safe_dump(raw))
    app = ReviewServer(many, free_port())
    try:
        with Catalog(cfg.catalog_path, readonly=True) as c:
            target = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[0]
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{app.url}/image/{target['id']}")
        boxes = page.locator("#label-boxes label")
        assert boxes.count() == 13                   # ants, bees, ten more, other
        assert page.locator("#label-boxes kbd").all_inner_texts() == [str(i) for i in range(1, 10)] + ["o"]
        assert boxes.nth(11).locator("kbd").count() == 0 and boxes.nth(11).inner_text().strip() == names[-1]
        assert "click its box" in page.inner_text(".keys")
        last = names[-1]
        boxes.nth(11).click()                        # the twelfth class, by its box
        checked = lambda: page.eval_on_selector_all("input[name=label]:checked", "b => b.map(x => x.value)")
        assert checked() == ["ants", last]
        page.keyboard.press("2")                     # a digit still toggles one of the first nine
        assert checked() == ["ants", "bees", last]
        page.keyboard.press("2")
        assert state_after(page, "s") == "in" and page.inner_text("#labels") == f"ants {last}"
        with Catalog(cfg.catalog_path, readonly=True) as c:
            assert co.override_of(c, target["id"])["labels"] == f"ants {last}"
        with Catalog(cfg.catalog_path) as c:      # two rows of cards, the last column's included
            for r in c.candidates("status='accepted' AND purpose='train' AND id <> ?", (target["id"],))[:13]:
                co.act(c, r["id"], "relabel", "long", "test", list(raw["classes"]), labels=[names[0]])
        page.goto(f"{app.url}/?set=train")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280      # it was 1,365 px wide
        card = page.locator(f".card[data-id='{target['id']}']")
        labels = card.locator(".labels")
        inner, outer = labels.bounding_box(), card.bounding_box()
        assert inner["x"] + inner["width"] <= outer["x"] + outer["width"], (inner, outer)
        assert labels.evaluate("e => e.scrollWidth > e.clientWidth")       # clipped, with an ellipsis
        assert labels.get_attribute("title") == f"ants {last}"
        assert not errors, errors
    finally:
        app.stop()


def first_card_of(browser, server, name: str):
    """A new page (and the JavaScript errors it raises) on the image of the first card of the queues
    page's list `name`."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/queues")
    with page.expect_navigation():
        page.locator(f"#{name} .card").first.click()
    return page, errors


def test_a_models_list_tracks_the_work_done_from_it(world, browser):
    """The review29 audit, in the browser: rejected from "Class images the model rejects", the image's
    card looked as before; j from a list's image went to the next id (`/image/401` -> `/image/402`
    where the list went 401 -> 2) and Esc to the unfiltered browse page. Now j steps through the list,
    Esc returns to the queues page, and the card says "rejected in review"."""
    config, cfg, server = world
    with Catalog(cfg.catalog_path, readonly=True) as c:
        listed = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")[:3]
    plant_review_list(cfg, listed, [0.3, 0.2, 0.1])
    order = [r["id"] for r in reversed(listed)]              # lowest score first: the ids backwards
    page, errors = first_card_of(browser, server, "noisy")
    assert page.get_attribute("#image-page", "data-id") == str(order[0])
    assert state_after(page, "r") == "out (rejected in review)"
    with page.expect_navigation():
        page.keyboard.press("j")
    assert page.get_attribute("#image-page", "data-id") == str(order[1])        # the list's next, not the next id
    with page.expect_navigation():
        page.keyboard.press("j")
    assert page.get_attribute("#image-page", "data-id") == str(order[2])
    assert page.locator("#next").count() == 0                                   # the list's end
    with page.expect_navigation():
        page.keyboard.press("k")
    assert page.get_attribute("#image-page", "data-id") == str(order[1])
    with page.expect_navigation():
        page.keyboard.press("Escape")
    assert page.url.endswith("/queues?noisy_page=1#noisy")
    cards = page.locator("#noisy .card")
    assert [cards.nth(i).get_attribute("href") for i in range(3)] == [f"/image/{cid}?list=noisy" for cid in order]
    assert "reviewed" in cards.first.get_attribute("class").split()
    assert cards.first.locator(".badge").inner_text() == "rejected in review"
    assert cards.nth(1).locator(".badge").count() == 0
    assert not errors, errors


def press(page, key: str) -> str:
    """Press a key that leaves the page; the URL it lands on (its path and query)."""
    with page.expect_navigation():
        page.keyboard.press(key)
    return page.url.split("://", 1)[1].split("/", 1)[1]


def test_esc_returns_to_the_page_an_image_was_opened_from(world, browser):
    """Esc ("← list") on an image opened from the duplicates page, the action log or another image's
    "kept" link went to the browse page of every candidate; it goes back to that page, after j/k too."""
    config, cfg, server = world
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/duplicates")
    dropped = page.locator(".pair a").first.get_attribute("href").split("?")[0]
    with page.expect_navigation():
        page.locator(".pair a").first.click()
    assert press(page, "Escape") == "duplicates?page_no=1"
    with page.expect_navigation():
        page.locator(".pair a").first.click()
    press(page, "j" if page.locator("#next").count() else "k")   # another image: Esc still goes back there
    assert press(page, "Escape") == "duplicates?page_no=1"
    page.goto(f"{server.url}{dropped}")                         # a copy's page: its kept image, and back
    with page.expect_navigation():
        page.click("text=Duplicate of >> a")
    kept = page.get_attribute("#image-page", "data-id")
    assert state_after(page, "r") == "out (rejected in review)"   # the page reloaded: Esc still goes back
    assert press(page, "Escape") == dropped[1:]
    page.goto(f"{server.url}/log")
    with page.expect_navigation():
        page.locator("table a").first.click()
    assert page.url.endswith(f"/image/{kept}?from=log")
    assert press(page, "Escape") == "log"
    assert not errors, errors


def test_the_queues_page_says_why_a_models_list_cannot_be_drawn(world, browser):
    """With a softmax head, or a test_scores.csv that cannot be read, the queues page said the latest
    bundle "accepts none of its probe images" (and, unreadable, "answers every test image right"): it
    says why it cannot tell."""
    from test_list_costs import plant_scores
    config, cfg, server = world
    with Catalog(cfg.catalog_path) as c:
        ants = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")
        c.update_fields(ants[0]["id"], purpose="probe")
    bundle = plant_scores(cfg, [ants[0]], ants[1:3], name="m-soft", head="softmax")
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(f"{server.url}/queues")
    said = page.inner_text("main")
    assert "accepts none of its probe images" not in said
    assert ("The latest bundle (m-soft) has a softmax head (train.head: softmax): it answers each image with its "
            "best class and has no per-class threshold to accept an image over, so this list cannot tell which "
            "probe images it accepts (not that it accepts none).") in said
    assert page.locator("#wrong .card").count() == 2                     # its wrong answers it can tell
    text = (bundle / "test_scores.csv").read_text().replace("score:bees", "bees?", 1)
    (bundle / "test_scores.csv").write_text(text)
    page.reload()
    said = page.inner_text("main")
    assert "accepts none of its probe images" not in said and "answers every test image right" not in said
    assert said.count("The latest bundle (m-soft) has per-image scores, but its test_scores.csv cannot be read "
                      "(KeyError: 'score:bees'), so this list cannot be drawn (not that it is empty)") == 2, said


def test_the_images_handled_in_review_can_be_hidden_from_the_models_lists(world, browser):
    """The model's lists keep the images handled in review, marked (the bundle's files do not change);
    "hide them" leaves them out, j/k then skip them (an image just handled steps on to the next one
    still to do), and Esc returns to the list as it was shown."""
    from test_list_costs import plant_scores
    config, cfg, server = world
    with Catalog(cfg.catalog_path) as c:
        ants = c.candidates("status='accepted' AND purpose='train' AND curated_label='ants'")
        for r in ants[7:9]:
            c.update_fields(r["id"], purpose="probe")
        probes = [c.get(r["id"]) for r in ants[7:9]]
    plant_review_list(cfg, ants[:4], [0.4, 0.3, 0.2, 0.1])
    plant_scores(cfg, probes, ants[4:7], name="m-1")
    order = [r["id"] for r in reversed(ants[:4])]             # lowest score first
    page, errors = first_card_of(browser, server, "noisy")
    assert state_after(page, "r") == "out (rejected in review)"
    assert press(page, "Escape") == "queues?noisy_page=1#noisy"
    cards = page.locator("#noisy .card")
    assert cards.count() == 4 and cards.first.locator(".badge").inner_text() == "rejected in review"
    assert page.inner_text("#noisy-head").endswith(": 4 images; 1 handled in review (marked).")
    shoot(page, "queues", full=True)
    with page.expect_navigation():
        page.click("#handled-toggle a")                          # hide them
    assert page.inner_text("#noisy-head").endswith(": 3 images; 1 handled in review, hidden.")
    assert [cards.nth(i).get_attribute("href") for i in range(cards.count())] == [
        f"/image/{cid}?list=noisy&handled=hide" for cid in order[1:]]
    with page.expect_navigation():
        cards.first.click()                                      # order[1]: nothing before it left to do
    assert page.locator("#prev").count() == 0
    assert state_after(page, "r") == "out (rejected in review)"
    assert press(page, "j") == f"image/{order[2]}?list=noisy&handled=hide"
    assert page.locator("#prev").count() == 0                   # order[0] and order[1] handled: skipped
    assert press(page, "Escape") == "queues?noisy_page=1&handled=hide#noisy"
    assert cards.count() == 2
    with page.expect_navigation():
        page.click("#handled-toggle a")                          # show them again, marked
    assert cards.count() == 4 and page.locator("#noisy .badge").count() == 2
    assert not errors, errors
