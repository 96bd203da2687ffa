"""An export (`mlc export -c`) and the HTML report (`mlc inspect --html --version`) of a version published
before a takedown: the photos taken down and the copies the takedown holds (the same pictures, held for
review) are both left out and named (the export26 audit). Real `mlc` processes on real photos served
by the bundled server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from storage_world import FIXTURES, MIRROR, OWNERS, mirrored_v1

from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.config import load_config
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.manifest import read_manifest


def mlc(config: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def taken_down(tmp_path):
    """v1 of ten ants, ten bees, eight scenery photos (storage_world.py) and a mirror image of one ant
    photo; then `mlc remove` of that photo, which holds the mirror. (config path, v1 folder, the
    photo's id, the mirror's id)."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    config, _, v1 = mirrored_v1(tmp_path)
    photo, mirror = photo_id_for(OWNERS), photo_id_for(MIRROR)
    assert {photo, mirror} <= {r["photo_id"] for r in read_manifest(v1 / "manifest.csv")}
    done = mlc(config, "remove", "--photo-id", photo, "--reason", "owner request")
    assert f"held 1 near duplicate(s) of the photos taken down for review: local:{mirror}" in done.stdout, done.stdout
    return config, v1, photo, mirror


def exported(config: Path, fmt: str, out: Path, *more: str) -> tuple[subprocess.CompletedProcess, dict]:
    "`mlc export v1` (it must succeed): the process and the export's export.json."
    done = mlc(config, "export", "v1", "--format", fmt, "--out", str(out), *more)
    return done, json.loads((out / "export.json").read_text())


def test_an_export_after_a_takedown_leaves_out_the_copies_it_holds_and_names_them(taken_down, tmp_path):
    config, v1, photo, mirror = taken_down
    rows = read_manifest(v1 / "manifest.csv")
    out = tmp_path / "exp"
    r, info = exported(config, "imagefolder", out)
    assert f"{len(rows) - 2} images" in r.stdout, r.stdout
    assert not list(out.rglob(f"*{mirror}*")) and not list(out.rglob(f"*{photo}*"))
    assert sorted(info["taken_down_left_out"]) == sorted([f"local:{photo}", f"local:{mirror}"])
    assert info["held_left_out"] == [f"local:{mirror}"] and info["images"] == len(rows) - 2
    note = [line for line in r.stderr.splitlines() if line.startswith("left out")]
    assert len(note) == 1 and note[0].startswith("left out 2 photo(s) taken down since the version was published"), \
        r.stderr
    assert f"local:{mirror} (held)" in note[0] and f"local:{photo}," in note[0] + ",", note
    readme = (out / "README.md").read_text()
    assert (f"> This export holds {len(rows) - 2} images: the version's card below counts {len(rows)}; 2 photo(s) "
            "taken down since the version was built, or held as copies of them (1), are left out") in readme, readme
    attribution = (out / "ATTRIBUTION.md").read_text()
    assert mirror not in attribution and photo not in attribution

    # a hold the user undoes (another picture, they said) no longer keeps the image out of an export
    with Catalog(load_config(config).catalog_path) as c:
        held = c.get_by_photo("local", mirror)
        (hold,) = overrides.actions(c, held["id"])
        overrides.undo(c, held["id"], hold["id"], "it is another picture", "test")
    _, info = exported(config, "imagefolder", out, "--force")
    assert list(out.rglob(f"*{mirror}*")) and info["held_left_out"] == []


def test_the_html_report_of_an_older_version_shows_no_copy_a_takedown_holds(taken_down, tmp_path):
    config, v1, photo, mirror = taken_down
    page_path = tmp_path / "report.html"
    mlc(config, "inspect", "--version", "v1", "--html", str(page_path))
    page = page_path.read_text()
    note = re.search(r"<p id='taken-down'>(.*?)</p>", page)
    assert note and note.group(1).startswith("2 photo(s) of v1 taken down since it was built (<code>mlc remove</code>), "
                                             "or held as copies of them (1), are not shown"), note and note.group(1)
    assert f"local:{mirror} (held)" in note.group(1) and f"local:{photo}" in note.group(1)
    for pid in (photo, mirror):
        assert f"· {pid}</figcaption>" not in page            # no thumbnail
        assert f"local-{pid}.jpg" not in page                 # no attribution row


def test_export_json_and_the_hf_card_count_the_licences_of_the_rows_exported(taken_down, tmp_path):
    config, v1, photo, mirror = taken_down
    rows = read_manifest(v1 / "manifest.csv")
    _, info = exported(config, "hf", tmp_path / "hf")
    kept = [row for row in rows if row["photo_id"] not in (photo, mirror)]
    assert info["licenses"] == dict(sorted(Counter(row["license"] for row in kept).items()))
    assert sum(info["licenses"].values()) == info["images"] == len(kept)
    assert info["licenses"] != json.loads((v1 / "dataset.json").read_text())["counts"]["licenses"]
