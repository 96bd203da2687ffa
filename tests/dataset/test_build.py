"""The build against `source.licenses` (the collect25 audit, D3): photos collected from the bundled
server under `licenses: any`, then the setting narrowed to open licences. The build publishes only
the licences the setting allows now, says what it left out and why, and widening the setting again
brings them back: the catalog is not changed."""

from __future__ import annotations

import html
import json
from collections import Counter

import pytest

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import RESTRICTED_LICENSES, parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.manifest import read_manifest

OPEN = [4, 5, 9, 10, 11]


def settings(data_dir, licenses) -> dict:
    return {"data_dir": str(data_dir),
            "source": {"kind": "local", "licenses": licenses, "sizes": ["url_n", "url_m"], "per_page": 50,
                       "local": {"seed": 11, "scale": 0.1, "port": 0}},
            "classes": {"balloon": {"queries": ["balloon"], "count": 25}, "kite": {"queries": ["kite"], "count": 25}},
            "other": {"queries": ["landscape", "sky"], "count": 25}}


@pytest.fixture(scope="module")
def collected_under_any(tmp_path_factory):
    """Collected and curated with `licenses: any`; returns the data folder and the accepted rows."""
    data = tmp_path_factory.mktemp("anylic") / "data"
    cfg = parse_config(settings(data, "any"))
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as catalog:
        accepted = [dict(r) for r in catalog.candidates(status="accepted")]
    return data, accepted


def test_a_narrowed_licence_setting_leaves_out_what_it_no_longer_allows_until_widened(collected_under_any):
    data, accepted = collected_under_any
    ids = Counter(r["license_id"] for r in accepted)
    assert set(ids) - set(OPEN) and set(ids) & set(OPEN), ids       # the world serves both kinds
    wide = build_dataset(parse_config(settings(data, "any")))
    assert wide.published and wide.counts["restricted_licenses"]

    narrow = build_dataset(parse_config(settings(data, OPEN)))
    assert narrow.published and narrow.version == "v2"
    manifest = read_manifest(narrow.path / "manifest.csv")
    assert manifest and {int(m["license_id"]) for m in manifest} <= set(OPEN)    # (every licence, until 2026-12-07)
    assert not wide.not_allowed
    assert narrow.counts["images"] == len(read_manifest(wide.path / "manifest.csv")) - sum(narrow.not_allowed.values())
    expected = Counter(r["license_name"] for r in accepted if r["license_id"] not in OPEN)
    assert narrow.not_allowed == dict(expected) and narrow.counts["restricted_licenses"] == {}
    meta = json.loads((narrow.path / "dataset.json").read_text())
    assert meta["left_out"]["licence-not-allowed"] == dict(sorted(expected.items()))
    assert meta["params"]["source"] == {"licenses": OPEN}

    card = (narrow.path / "README.md").read_text()
    assert "Licences that restrict use" not in card and "lets in licences" not in card
    assert "- licences allowed: `source.licenses: 4, 5, 9, 10, 11` (only these Flickr licence ids" in card
    n = sum(expected.values())
    assert (f"{n} accepted image(s) in the catalog, collected under an earlier setting, carry a licence "
            "`source.licenses: 4, 5, 9, 10, 11` does not allow: ") in card
    some = RESTRICTED_LICENSES[0]
    if some in expected:
        assert f"{some} ({expected[some]})" in card

    # `mlc inspect` says it too (text and HTML): it read only the curation's counts
    from mlc_pipeline.report.inspect import dataset_summary, format_dataset_summary, html_report
    text = format_dataset_summary(dataset_summary(parse_config(settings(data, OPEN)), "v2"))
    named = ", ".join(f"{k} {v}" for k, v in sorted(expected.items()))
    assert f"  licence not in source.licenses: {named}" in text.split("Left out by the build")[1], text
    page = html_report(parse_config(settings(data, OPEN)), "v2")
    assert "id='left-out'" in page and html.escape(f"licence not in source.licenses: {named}") in page

    with Catalog(parse_config(settings(data, OPEN)).catalog_path) as catalog:   # not a catalog change
        assert sorted(r["id"] for r in catalog.candidates(status="accepted")) == sorted(r["id"] for r in accepted)
    again = build_dataset(parse_config(settings(data, "any")))
    assert again.published and again.version == "v3" and again.fingerprint == wide.fingerprint
    assert not again.not_allowed


def test_a_setting_that_allows_none_of_the_accepted_images_is_nothing_to_build(collected_under_any):
    from mlc_pipeline.dataset.build import NothingToBuild
    data, _ = collected_under_any
    with pytest.raises(NothingToBuild, match=r"every accepted image's licence is one source.licenses \(17\) does"):
        build_dataset(parse_config(settings(data, [17])))      # an id no photo carries (Flickr's list ends at 16)
