"""model/bundle.py as the one owner of a bundle's metadata: `read_meta` (the one reader of bundle.json),
`check_files` (what is checked before anything is unpickled), `write_meta`, and `point_latest` (the
one writer of models/LATEST). Real files in a temporary folder; nothing here trains or unpickles.
(Loading real bundles: test_predict.py and test_bundle_compat.py.)"""

from __future__ import annotations

import json

import pytest

from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.model.bundle import (REQUIRED_KEYS, BundleError, MetaError, check_files, load_bundle,
                                       point_latest, read_meta, write_meta)


def whole_bundle(folder):
    """bundle.json with every required key, beside an export.pkl it records (not a real pickle)."""
    folder.mkdir()
    (folder / "export.pkl").write_bytes(b"not a network, never unpickled here")
    meta = {k: None for k in REQUIRED_KEYS} | {"export_sha256": sha256_file(folder / "export.pkl")}
    write_meta(folder, meta)
    return meta


@pytest.mark.parametrize("text, reason", [
    (None, "missing"), ("{not json", "unreadable or not JSON (JSONDecodeError)"),
    (b"\xff\xfe{}", "unreadable or not JSON (UnicodeDecodeError)"),
    ("[]", "is not a JSON object (a list)"), ("null", "is not a JSON object (a NoneType)"),
    ('"a model"', "is not a JSON object (a str)")])
def test_a_damaged_bundle_json_is_one_error_that_names_the_file(tmp_path, text, reason):
    if text is not None:
        (tmp_path / "bundle.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MetaError) as caught:
        read_meta(tmp_path)
    assert caught.value.reason.startswith(reason) and isinstance(caught.value, BundleError)
    assert str(caught.value).startswith(f"{tmp_path / 'bundle.json'}: {reason}")
    with pytest.raises(MetaError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(tmp_path)           # predict, assess and mine get the same error, before unpickling


def test_the_files_are_checked_before_unpickling(tmp_path):
    meta = whole_bundle(tmp_path / "b")
    assert read_meta(tmp_path / "b") == meta and check_files(tmp_path / "b", meta) is None
    assert check_files(tmp_path / "b", {k: v for k, v in meta.items() if k != "thresholds"}) == \
        "bundle.json lacks ['thresholds']"
    (tmp_path / "b" / "export.pkl").write_bytes(b"another file")
    changed = check_files(tmp_path / "b", meta)
    assert changed.startswith("export.pkl is not the file bundle.json recorded")
    assert check_files(tmp_path / "b", meta, hash_export=False) is None       # a listing does not hash
    with pytest.raises(BundleError, match="not the file bundle.json recorded.*refusing to unpickle"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "export.pkl").unlink()
    assert check_files(tmp_path / "b", meta, hash_export=False) == "export.pkl missing"


def test_bundle_json_and_latest_are_written_whole(tmp_path):
    whole_bundle(tmp_path / "b")
    write_meta(tmp_path / "b", {"classes": ["a"]})
    assert json.loads((tmp_path / "b" / "bundle.json").read_text()) == {"classes": ["a"]}
    point_latest(tmp_path, "b")
    point_latest(tmp_path, "c")
    assert (tmp_path / "LATEST").read_text() == "c\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "b"]      # written aside, renamed
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "export.pkl"]


def test_a_bundle_of_a_newer_format_is_refused_before_unpickling_and_an_older_one_is_not(tmp_path):
    """bundle.json's `format` was 1 from 0.1.0 on, while keys were added and the pickle's module layout
    changed (the upgrade29 audit, finding 7): nothing could tell, and no reader checked it. It moves now
    (2 since 0.3.0), and a bundle of a format newer than this code knows is one line, not misread."""
    from mlc_pipeline.model.bundle import BUNDLE_FORMAT
    from mlc_pipeline.model.registry import read_info
    assert BUNDLE_FORMAT == 2
    meta = whole_bundle(tmp_path / "b")
    for fmt in (None, 1, BUNDLE_FORMAT):        # no format (a hand-made bundle), 0.1.0's and 0.2.0's, ours
        older = {k: v for k, v in meta.items() if k != "format"} | ({} if fmt is None else {"format": fmt})
        assert check_files(tmp_path / "b", older) is None, fmt
    newer = meta | {"format": BUNDLE_FORMAT + 1}
    says = (f"bundle.json is of format {BUNDLE_FORMAT + 1}, written by a newer mlc-pipeline; this one reads bundle "
            f"formats up to {BUNDLE_FORMAT}: upgrade mlc-pipeline to use it")
    assert check_files(tmp_path / "b", newer) == says
    assert check_files(tmp_path / "b", meta | {"format": "2"}) == \
        "bundle.json has no format number this mlc-pipeline knows (format '2')"
    write_meta(tmp_path / "b", newer)
    with pytest.raises(BundleError) as caught:  # export.pkl is no pickle: refused before unpickling it
        load_bundle(tmp_path / "b")
    assert str(caught.value) == f"{tmp_path / 'b'}: not a usable bundle: {says}; refusing to unpickle it"
    assert read_info(tmp_path / "b").problem == says        # `mlc models` lists it UNUSABLE, saying why
