"""`mlc predict` as a user calls it: folders, globs and @lists; thresholds and margins shown; exit
codes; no warnings from the libraries. Uses the bundle test_train trains once per session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shapes import trained_bundle  # noqa: E402

from mlc_pipeline.cli import main  # noqa: E402
from mlc_pipeline.model.predict_cli import expand_inputs  # noqa: E402

MLC = [sys.executable, "-m", "mlc_pipeline.cli"]


@pytest.fixture
def tree(tmp_path):
    """photos/a.jpg, photos/sub/b.png, photos/.hidden/c.jpg, photos/notes.txt, empty/"""
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()
    for rel in ("photos/a.jpg", "photos/sub/b.PNG", "photos/.hidden/c.jpg", "photos/notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_folders_globs_and_lists_expand_in_order(tree, monkeypatch):
    monkeypatch.chdir(tree)
    (tree / "list.txt").write_text("# images to check\n\nphotos/sub/b.PNG\n  photos/*.jpg  \nmissing.jpg\n")
    got = expand_inputs(["photos", "photos/**/*.PNG", "@list.txt", "nothing/*.jpg", "empty", "gone.jpg", "@nolist.txt"])
    assert got[:2] == [("photos/a.jpg", None), ("photos/sub/b.PNG", None)]        # hidden and .txt skipped
    assert got[2] == ("missing.jpg", "no such file or folder")                   # the rest were seen already
    assert got[3] == ("nothing/*.jpg", "no file matches this pattern")
    assert got[4][0] == "empty" and got[4][1].startswith("no image files")
    assert got[5] == ("gone.jpg", "no such file or folder")
    assert got[6][0] == "@nolist.txt" and "cannot read the list nolist.txt" in got[6][1]
    assert len(got) == 7


def test_predict_shows_thresholds_and_margins(tmp_path, capsys):
    manifest, bundle = trained_bundle()
    images = manifest.parent / "images"
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("red_000.jpg", "blue_001.jpg", "probe_000.jpg", "probe_001.jpg"):
        shutil.copy(images / name, folder)
    (tmp_path / "list.txt").write_text(f"{images / 'red+blue_000.jpg'}\n")
    assert main(["predict", "--model", str(bundle), str(folder), f"@{tmp_path / 'list.txt'}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in rows] == ["blue_001.jpg", "probe_000.jpg", "probe_001.jpg", "red_000.jpg",
                                                   "red+blue_000.jpg"]
    for r in rows:
        assert set(r["thresholds"]) == {"blue", "red"}
        assert {c for c, m in r["margins"].items() if m >= 0} == {c for c, _ in r["labels"]}
        assert all(abs(r["probs"][c] - r["thresholds"][c] - m) < 1e-5 for c, m in r["margins"].items())
    assert main(["predict", str(bundle), str(folder)]) == 0                       # the older form still works
    lines = capsys.readouterr().out.splitlines()
    none_of = [line for line in lines if ": none of: " in line]
    assert none_of, "the probes are mostly none of"
    for line in none_of:           # every class with its score, its threshold and the gap, closest first
        gaps = [float(part.split(": ")[-1].split(" short")[0]) for part in line.split("needs ")[1:]]
        assert len(gaps) == 2 and gaps == sorted(gaps) and all(g > 0 for g in gaps)
    red = next(line for line in lines if "red_000.jpg" in line)
    assert ": red (" in red and " >= " in red and "; not blue (" in red


def test_every_input_failing_is_exit_1(tmp_path, capsys):
    _, bundle = trained_bundle()
    (tmp_path / "notes.jpg").write_text("not an image")
    rc = main(["predict", "--model", str(bundle), str(tmp_path / "notes.jpg"), str(tmp_path / "nothing" / "*.jpg")])
    out, err = capsys.readouterr()
    assert rc == 1 and "none of the 2 inputs could be scored" in err
    assert "notes.jpg: error: cannot decode image" in out and "*.jpg: error: no file matches this pattern" in out


def test_predict_prints_no_library_warnings():
    manifest, bundle = trained_bundle()
    res = subprocess.run(MLC + ["predict", "--model", str(bundle), str(manifest.parent / "images" / "red_000.jpg")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Warning" not in res.stderr, res.stderr
    assert res.stdout.startswith(str(manifest.parent / "images" / "red_000.jpg") + ": red (")
