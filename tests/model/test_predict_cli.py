"""`mlc predict` as a user calls it: folders, globs and @lists; thresholds and margins shown; exit
codes; no warnings from the libraries. Uses the bundle test_train trains once per session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from camera_files import ANTS, AVIF, HEIC_HEAD
from shapes import trained_bundle  # noqa: E402

from mlc_pipeline.cli import main  # noqa: E402
from mlc_pipeline.model.predict_cli import claimed_text, expand_inputs, missed_text  # noqa: E402

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


def test_a_file_named_several_ways_is_one_row(tmp_path, monkeypatch):
    """x.jpg, ./x.jpg, its absolute path and a `**` glob under a link to a parent folder were each a
    row (3 images came out as 328 inputs): the verify22 audit."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "x.jpg").write_bytes(b"x")
    (tmp_path / "in" / "sub" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    got = expand_inputs(["in/x.jpg", "./in/x.jpg", str(tmp_path / "in" / "x.jpg"), "in/**/*.jpg", "gone.jpg",
                         "gone.jpg"])
    assert got == [("in/x.jpg", None), ("gone.jpg", "no such file or folder")]


def test_a_fifo_or_a_dangling_link_is_a_row_with_its_reason_never_opened_or_dropped(tmp_path, monkeypatch):
    """A glob matching a FIFO hung predict until killed (opening one blocks); a link dangling inside a
    folder (an unmounted drive) was silently left out (audit realphoto22 #7)."""
    import os
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weird").mkdir()
    os.mkfifo(tmp_path / "weird" / "fifo.jpg")
    (tmp_path / "weird" / "broken.jpg").symlink_to("/nonexistent/x.jpg")
    (tmp_path / "weird" / "ok.jpg").write_bytes(b"x")
    want = [("weird/broken.jpg", "a link to nothing (/nonexistent/x.jpg)"),
            ("weird/fifo.jpg", "not a regular file (a FIFO): not read"), ("weird/ok.jpg", None)]
    assert expand_inputs(["weird"]) == want
    assert expand_inputs(["weird/*.jpg"]) == want
    assert expand_inputs(["weird/fifo.jpg", "weird/broken.jpg"]) == [want[1], want[0]]


@pytest.mark.parametrize("other_mode", ["negative", "class"])
def test_predict_shows_thresholds_and_margins(tmp_path, capsys, other_mode):
    """Thresholds and margins are the classes' only: the "other" output of an other_mode 'class' bundle
    had both, and a margin >= 0 on "none of these" images (audit realphoto22 #4)."""
    manifest, bundle = trained_bundle("sigmoid", other_mode)
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
    assert "notes.jpg: error: not scored: not an image (curation: not-an-image)" in out
    assert "*.jpg: error: no file matches this pattern" in out


def test_a_training_setting_given_to_predict_is_said_to_change_nothing(capsys):
    """`--set train.max_unknown_accepted=1` was accepted silently and the thresholds stayed the bundle's."""
    manifest, bundle = trained_bundle()
    image = str(manifest.parent / "images" / "red_000.jpg")
    assert main(["predict", "--model", str(bundle), image]) == 0
    plain = capsys.readouterr()
    assert main(["predict", "--set", "train.max_unknown_accepted=1", "--model", str(bundle), image]) == 0
    out, err = capsys.readouterr()
    assert out == plain.out                                          # the same decision, as said:
    assert "mlc predict: train.max_unknown_accepted=1 changes nothing here" in err and "training again" in err


def test_predict_prints_no_library_warnings():
    manifest, bundle = trained_bundle()
    res = subprocess.run(MLC + ["predict", "--model", str(bundle), str(manifest.parent / "images" / "red_000.jpg")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Warning" not in res.stderr, res.stderr
    model, line = res.stdout.splitlines()
    assert model.startswith("# model bundle (created ") and line.startswith(str(manifest.parent / "images" / "red_000.jpg") + ": red (")


def test_close_calls_print_enough_digits_to_be_true_as_printed(tmp_path, capsys):
    """A calibrated threshold near 0 or 1 printed with two decimals read as arithmetic errors:
    'sailboat (0.99, needs 1.00: 0.00 short)' and 'sailboat (1.00 >= 1.00)' (audit, 2026-12-06).
    Each entry now has as many decimals (2 to 6) as it takes for the probability and the threshold
    to differ and the gap to be non-zero as printed; the ordinary entries keep two."""
    import re
    manifest, trained = trained_bundle()
    images = manifest.parent / "images"
    bundle = tmp_path / "bundle"
    shutil.copytree(trained, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert main(["predict", "--json", "--model", str(bundle), str(images / "red_000.jpg"),
                 str(images / "probe_000.jpg")]) == 0
    red, probe = json.loads(capsys.readouterr().out)
    ordinary = meta["thresholds"][meta["vocab"].index("blue")]
    cases = [(red, red["probs"]["red"] - 0.0004, ": red ("),          # claimed by a hair, near 1
             (red, red["probs"]["red"] + 0.0004, ": none of: red ("),  # missed by a hair, near 1
             (probe, probe["probs"]["red"] + 0.0003, ": none of: red (")]   # missed by a hair, near 0
    for row, threshold, start in cases:
        meta["thresholds"][meta["vocab"].index("red")] = threshold
        (bundle / "bundle.json").write_text(json.dumps(meta))
        assert main(["predict", "--model", str(bundle), row["path"]]) == 0
        line = capsys.readouterr().out.strip()
        assert start in line, line
        claimed = re.findall(r"(\w+) \(([\d.]+) >= ([\d.]+)\)", line)
        missed = re.findall(r"(\w+) \(([\d.]+), needs ([\d.]+): ([\d.]+) short\)", line)
        assert len(claimed) + len(missed) == 2, line
        for _, prob, shown in claimed:
            assert float(prob) > float(shown), line
        for _, prob, shown, short in missed:
            assert float(prob) < float(shown) and float(short) > 0, line
        red_entry = next(e for e in claimed + missed if e[0] == "red")
        assert len(red_entry[2].split(".")[1]) in (3, 4), line                  # no more digits than needed
        blue_entry = next(e for e in claimed + missed if e[0] == "blue")
        assert blue_entry[2] == f"{ordinary:.2f}", line                         # far from the line: two
    # the audit's threshold: not shown as 1.00 (only a certain picture would pass that)
    assert missed_text("sailboat", 0.99, 0.9954) == "sailboat (0.990, needs 0.995: 0.005 short)"
    assert claimed_text("kite", 0.5, 0.5) == "kite (0.50 >= 0.50)"



def test_every_output_names_the_model_that_scored(tmp_path):
    """The realfiles27 audit (#8): the bundle was named only at a terminal; a saved `predict > out.txt`
    or `--json` result could not be traced to a model, and LATEST moves with every `mlc train`."""
    manifest, trained = trained_bundle()
    bundle = tmp_path / "default-v1-sigmoid-20261207T084407121851-b3bd18"
    shutil.copytree(trained, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    image = str(manifest.parent / "images" / "red_000.jpg")
    text = subprocess.run(MLC + ["predict", "--model", str(bundle), image], capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr[-2000:]
    assert text.stdout.splitlines()[0] == (f"# model {bundle.name} (created {meta['created_at']}, export.pkl sha256 "
                                           f"{meta['export_sha256'][:12]})")
    assert f"scoring 1 file(s) with {bundle.name} (created {meta['created_at']})" in text.stderr
    said = subprocess.run(MLC + ["predict", "--json", "--model", str(bundle), image], capture_output=True, text=True,
                          timeout=300)
    assert said.returncode == 0, said.stderr[-2000:]
    (row,) = json.loads(said.stdout)
    assert row["bundle"] == {"name": bundle.name, "created_at": meta["created_at"],
                             "export_sha256": meta["export_sha256"]}


def test_what_curation_refuses_is_not_scored_and_each_row_says_why(tmp_path, capsys):
    """The realfiles27 audit (#9): predict scored a 1x1 PNG and an AVIF file as if the model knew such
    images ('none of: ...', no note), said 'cannot decode image: UnidentifiedImageError' both for an
    empty file and a HEIC photo, and skipped HEIC and AVIF files in a folder without a row. Curation's
    own rules (its formats and sizes, under the curate settings the model's dataset was built with)
    now decide, and each row says why, with curation's reason code."""
    manifest, bundle = trained_bundle()            # its dataset.json: curate.min_side 16 (40 px shapes)
    photo = Image.open(ANTS / sorted(p.name for p in ANTS.glob("*.jpg"))[0]).convert("RGB")
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo.save(inputs / "photo.jpg")
    photo.save(inputs / "camera.jpg", "MPO", save_all=True, append_images=[photo.rotate(3)])   # a camera's MPO: a JPEG
    photo.resize((1, 1)).save(inputs / "tiny.png")
    photo.resize((400, 80)).save(inputs / "pano.jpg")                      # 5:1, over curation's 4:1
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "IMG_0002.HEIC").write_bytes(HEIC_HEAD + (inputs / "photo.jpg").read_bytes())
    if AVIF:
        photo.save(inputs / "phone.avif", "AVIF")
    assert main(["predict", "--model", str(bundle), str(inputs)]) == 1
    out, err = capsys.readouterr()
    rows = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in out.splitlines()[1:]}
    said = "the curate settings test-v1 was built with"
    assert "error" not in rows[str(inputs / "tiny.png")] and rows[str(inputs / "tiny.png")].endswith(
        f"; note: 1x1 pixels, under the 16 px side every training image had, upscaled as no training image was "
        f"(curation: too-small, by {said})")          # scored: a small picture still gets an answer, with why to doubt it
    assert rows[str(inputs / "empty.jpg")] == "error: not scored: an empty file (curation: empty-file)"
    assert rows[str(inputs / "IMG_0002.HEIC")] == \
        "error: not scored: HEIC, a format not decoded here (curation: unsupported-format)"
    assert rows[str(inputs / "pano.jpg")].endswith(
        f"; note: 400x80 pixels, longer than 4:1 as no training image was (curation: extreme-aspect, by {said})")
    for scored in ("photo.jpg", "camera.jpg"):
        assert "error" not in rows[str(inputs / scored)] and "note" not in rows[str(inputs / scored)], rows
    if AVIF:
        assert rows[str(inputs / "phone.avif")] == (
            "error: not scored: AVIF, a format curation does not take (only JPEG, PNG, GIF, WEBP, BMP, TIFF): "
            "the model was trained on none (curation: unsupported-format:AVIF)")
    assert len(rows) == 6 + AVIF and f"mlc: {2 + AVIF} of {6 + AVIF} inputs could not be scored" in err
    assert main(["predict", "--json", "--model", str(bundle), str(inputs / "pano.jpg")]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["note"].startswith("400x80 pixels, longer than 4:1") and row["error"] is None and row["probs"]


def test_a_model_whose_dataset_is_not_here_is_held_to_curations_defaults(tmp_path, capsys):
    """A bundle copied away from its data root: curation's default rules, and the row says so."""
    manifest, trained = trained_bundle()
    bundle = tmp_path / "bundle"
    shutil.copytree(trained, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["manifest"] = str(tmp_path / "elsewhere" / "manifest.csv")
    (bundle / "bundle.json").write_text(json.dumps(meta))
    shape = manifest.parent / "images" / "red_000.jpg"              # 40 px: curation's default side is 64
    assert main(["predict", "--model", str(bundle), str(shape)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(
        "; note: 40x40 pixels, under the 64 px side every training image had, upscaled as no training image was "
        "(curation: too-small, by curation's defaults: the settings test-v1 was built with are not here)")
