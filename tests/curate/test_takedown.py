"""curate/takedown.py on its own (the whole `mlc remove` through the CLI: test_remove.py): the
exports under <data_dir>/exports/ that still hold a photo taken down."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.takedown import exports_with


def test_exports_with_skips_a_marker_that_is_not_an_object_and_says_so(tmp_path: Path, caplog):
    """An export.json holding `[1, 2]` crashed `mlc remove` (AttributeError: 'list' object has no
    attribute 'get'), after the takedown was committed; `mlc withdraw` skipped the same marker. Both
    read the markers in one place now: a damaged one is skipped, with a warning naming it."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["scenery"], "count": 5}})
    exports = cfg.data_dir / "exports"
    for name, marker in (("a-list", [1, 2]),
                         ("b-v1", {"dataset": "default", "version": "v1", "taken_down_left_out": ["flickr:p2"]}),
                         ("c-v1-after", {"dataset": "default", "version": "v1",
                                         "taken_down_left_out": ["flickr:p1", "flickr:p2"]}),
                         ("d-other-dataset", {"dataset": "birds", "version": "v1"})):
        (exports / name).mkdir(parents=True)
        (exports / name / "export.json").write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING):
        found = exports_with(cfg, {"v1": ["p1", "p2"]})
    assert found == {str(exports / "b-v1"): ["p1"]}
    assert any(f"{exports / 'a-list' / 'export.json'}: not read (not a JSON object)" in r.getMessage()
               for r in caplog.records), caplog.text
