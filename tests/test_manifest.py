"""manifest.py, the contract every reader of a published version uses: the markers of its exports
under <data_dir>/exports/ (`read_export_markers`), read alike by `mlc remove` and `mlc withdraw`."""

from __future__ import annotations

import json
import logging
from pathlib import Path


from mlc_pipeline import manifest


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
