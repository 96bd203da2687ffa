"""`mlc curate` on real fixture photos, through the real CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURES

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config

FIXTURES = FIXTURES / "hymenoptera"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixture photos missing (../shared/fixtures)")


def curate_cli(config: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "curate", "-c", str(config)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_curate_notices_files_damaged_after_curation(tmp_path):
    # One accepted file truncated to half, another emptied, after curate accepted them: the next
    # curate sees their sizes differ from the catalog's, inspects them again and rejects them
    # (it used to reuse the cached verdicts: "inspected": 0, both still accepted).
    world = tmp_path / "world"
    for name, files in (("ants", sorted((FIXTURES / "ants").glob("*.jpg"))[:6]),
                        ("bees", sorted((FIXTURES / "bees").glob("*.jpg"))[:6]),
                        ("scenery", sorted((FIXTURES / "ants").glob("*.jpg"))[100:102])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    raw = {"data_dir": str(tmp_path / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                      "local": {"port": 0, "folder": str(world), "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
           "classes": {"ants": {"queries": ["ants"], "count": 6}, "bees": {"queries": ["bees"], "count": 6}},
           "other": {"queries": ["scenery"], "count": 2}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    collect(cfg, progress=False)
    first = curate_cli(config)
    assert first["inspected"] == first["accepted"] == 14
    with Catalog(cfg.catalog_path) as c:
        truncated, emptied = sorted(c.candidates("status='accepted'"), key=lambda r: r["id"])[:2]
    data = Path(truncated["file_path"]).read_bytes()
    Path(truncated["file_path"]).write_bytes(data[:len(data) // 2])
    Path(emptied["file_path"]).write_bytes(b"")

    again = curate_cli(config)
    assert again["inspected"] == 2 and again["reused"] == 12 and again["accepted"] == 12
    assert again["rejected"] == {"truncated": 1, "empty-file": 1}
    with Catalog(cfg.catalog_path) as c:
        assert c.get(truncated["id"])["status"] == c.get(emptied["id"])["status"] == "rejected"
    assert curate_cli(config)["inspected"] == 0          # and unchanged files are not read again
