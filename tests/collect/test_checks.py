"""collect/checks.py: what collect says about photos no configured size can fetch. Real photos served
by the bundled server in folder mode, real `mlc collect` runs."""

from __future__ import annotations

import subprocess

import yaml

from helpers import ENV, MLC
from storage_world import FIXTURES, folder_world


def folder_project(tmp_path, folders: dict, class_folder: str, other_folder: str, class_count: int,
                   other_count: int):
    """A folder world of `folders` with one class and "other", `sizes: [url_m, url_n, url_s]`; returns
    a function running `mlc collect` on it (with `--set` arguments) that asserts exit 0."""
    world = folder_world(tmp_path / "world", folders)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                   "local": {"port": 0, "folder": str(world), "query_map": {f: f for f in folders}}},
        "classes": {class_folder: {"queries": [class_folder], "count": class_count}},
        "other": {"queries": [other_folder], "count": other_count}}, sort_keys=False))

    def collect(*sets):
        res = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress", *sets], env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return res
    return collect


def test_the_size_hint_suggests_the_sizes_the_skipped_photos_have(tmp_path):
    """180 px cat photos with `sizes: [url_m, url_n, url_s]`: the warning once suggested
    `[url_c, url_z, url_m, url_n, url_s]`, which adds nothing (every size in it is bigger than the
    photos). It now suggests the sizes below the smallest asked for, the only ones such photos have,
    and following it downloads them all."""
    collect = folder_project(tmp_path, {"cat": sorted((FIXTURES.parent / "pets" / "cat").glob("*.jpg"))[:6],
                                        "bees": sorted((FIXTURES / "bees").glob("*.jpg"))[:6]}, "cat", "bees", 6, 6)
    first = collect()
    assert ("6 of 12 photos found were skipped: offered in none of source.sizes (url_m, url_n, url_s); to keep "
            "them, list smaller sizes than url_s, the smallest asked for: Flickr offers a photo only in the sizes "
            "up to its own, so only url_q, url_t, url_sq can fetch them, e.g. "
            "--set 'source.sizes=[url_m, url_n, url_s, url_q, url_t, url_sq]'") in first.stderr, first.stderr
    assert '"downloaded": 6' in first.stdout
    again = collect("--set", "source.sizes=[url_m, url_n, url_s, url_q, url_t, url_sq]")
    assert "skipped" not in again.stderr and '"downloaded": 6' in again.stdout, (again.stderr, again.stdout)


def test_photos_skipped_by_an_earlier_search_are_not_counted_against_new_sizes(tmp_path):
    """A user's audit: after following the hint, a collect that searched nothing (every count met)
    repeated the warning with the new sizes listed, for photos no search had looked at again."""
    collect = folder_project(tmp_path, {"mix": sorted((FIXTURES.parent / "pets" / "cat").glob("*.jpg"))[:6]
                                        + sorted((FIXTURES / "bees").glob("*.jpg"))[:6],
                                        "ants": sorted((FIXTURES / "ants").glob("*.jpg"))[:2]}, "mix", "ants", 6, 2)
    first = collect()
    assert "photos found were skipped: offered in none of source.sizes (url_m, url_n, url_s)" in first.stderr
    again = collect("--set", "source.sizes=[url_m, url_n, url_s, url_z]")     # every count met: no search
    assert '"found_new": 0' in again.stdout, again.stdout
    assert "skipped" not in again.stderr, again.stderr
