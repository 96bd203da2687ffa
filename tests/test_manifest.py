"""manifest.py, the contract every reader of a published version uses: a version's dataset.json read
in one place (`read_version_meta`), and the markers of its exports under <data_dir>/exports/
(`read_export_markers`), read alike by `mlc remove` and `mlc withdraw`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mlc_pipeline import manifest


def version_with(tmp_path: Path, meta: str | None) -> Path:
    folder = tmp_path / "datasets" / "default" / "v1"
    folder.mkdir(parents=True)
    if meta is not None:
        (folder / "dataset.json").write_text(meta)
    return folder


def test_read_version_meta_returns_the_object(tmp_path):
    folder = version_with(tmp_path, json.dumps({"name": "default", "version": "v1", "fingerprint": "ab"}))
    assert manifest.read_version_meta(folder)["fingerprint"] == "ab"
    assert manifest.recorded_fingerprint(folder) == "ab"


@pytest.mark.parametrize("meta, problem", [
    (None, "is missing"),
    ('{"name": ', "is unreadable (Expecting value"),
    (b"\xff\xfe{}", "is unreadable ("),
    ("[1, 2]", "is not a JSON object"),
    ("directory", "is unreadable ("),
])
def test_a_damaged_dataset_json_is_one_error_naming_the_file(tmp_path, meta, problem):
    folder = version_with(tmp_path, None if meta in (None, b"\xff\xfe{}", "directory") else meta)
    if isinstance(meta, bytes):
        (folder / "dataset.json").write_bytes(meta)
    elif meta == "directory":
        (folder / "dataset.json").mkdir()
    with pytest.raises(manifest.VersionMetaUnreadable) as caught:
        manifest.read_version_meta(folder)
    assert str(caught.value).startswith(f"{folder / 'dataset.json'} {problem}"), str(caught.value)
    assert caught.value.problem.startswith(f"dataset.json {problem}")
    assert "\n" not in str(caught.value)
    assert manifest.recorded_fingerprint(folder) is None       # no fingerprint to read: damaged


def export_marker(exports: Path, name: str, text: str) -> Path:
    (exports / name).mkdir(parents=True)
    (exports / name / manifest.EXPORT_MARKER).write_text(text)
    return exports / name


def test_export_markers_skip_a_damaged_marker_with_a_warning_naming_it(tmp_path, caplog):
    exports = tmp_path / "exports"
    good = export_marker(exports, "a-good", json.dumps({"dataset": "default", "version": "v1"}))
    listed = export_marker(exports, "b-list", "[1, 2]")
    cut = export_marker(exports, "c-cut", '{"dataset": ')
    (exports / "d-no-marker").mkdir()
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.manifest"):
        found = manifest.read_export_markers(exports)
    assert found == {good: {"dataset": "default", "version": "v1"}}
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{listed / manifest.EXPORT_MARKER}: not read (not a JSON object); check that export by hand" in warned
    assert f"{cut / manifest.EXPORT_MARKER}: not read (" in warned
    assert manifest.read_export_markers(tmp_path / "none-here") == {}


def test_a_manifest_written_before_the_csv_rules_still_reads(tmp_path):
    """Versions published before 2026-12-07 hold `source_file` unguarded and a NUL or an ESC as the
    source gave it (and the oldest no `source_file` column at all): read as they were written."""
    old = ("path,labels,split,candidate_id,source,photo_id,url,license_id,license,owner,title,date_taken,sha256,"
           "phash,purpose,mined_round,query,source_file\r\n"
           "images/cat/a.jpg,cat,train,1,local,1,http://h/1,4,CC BY 2.0,\x1b[31mo,a\x00b,'=x,s1,p1,train,,cat,"
           '"=HYPERLINK(""x"").jpg"\r\n')
    (tmp_path / "manifest.csv").write_text(old, newline="")
    [row] = manifest.read_manifest(tmp_path / "manifest.csv")
    assert (row["owner"], row["title"], row["date_taken"], row["source_file"]) == \
        ("\x1b[31mo", "a\x00b", "=x", '=HYPERLINK("x").jpg')
    frame = manifest.read_manifest_frame(tmp_path / "manifest.csv")
    assert frame[list(row)].to_dict("records") == [row]
    oldest = "\r\n".join(",".join(line.split(",")[:-1]) for line in old.splitlines()) + "\r\n"   # no source_file
    (tmp_path / "manifest.csv").write_text(oldest, newline="")
    assert manifest.read_manifest(tmp_path / "manifest.csv") == [{k: v for k, v in row.items() if k != "source_file"}]
