"""A relative `data_dir` was taken from the current directory until 2026-12-01 (0.1.0) and is taken
from the config file's folder since: a 0.1.0 user's config outside the working directory now names
another folder. Where that folder holds no data root and the current directory holds 0.1.0's, every
command refuses in one line naming both, instead of starting an empty root beside the user's data
(the upgrade29 audit, finding 3)."""

import subprocess

import pytest
from helpers import ENV, MLC, free_port

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import ConfigError, load_config, parse_overrides


def project(tmp_path, data_dir="data"):
    """proj/configs/mine.yaml (`data_dir` as given) over a local photo folder, as a 0.1.0 user had it."""
    proj = tmp_path / "proj"
    for sub in ("cats", "dogs", "ants"):
        (proj / "photos" / sub).mkdir(parents=True)
    (proj / "configs").mkdir()
    cfg = proj / "configs" / "mine.yaml"
    cfg.write_text(f"""
data_dir: {data_dir}
source:
  kind: local
  local: {{port: {free_port()}, folder: {proj / 'photos'}, query_map: {{cats: cats, dogs: dogs, ants: ants}}}}
  licenses: any
classes:
  cat: {{queries: [cats], count: 5}}
  dog: {{queries: [dogs], count: 5}}
other: {{queries: [ants], count: 5}}
""")
    return proj, cfg


def data_root(root, old: bool):
    """A data root with its catalog; `old`: as 0.1.0's collect left it, with tmp/downloads (where that
    code wrote partial downloads; no later version makes it)."""
    root.mkdir(parents=True)
    with Catalog(root / "catalog.sqlite"):
        pass
    if old:
        (root / "tmp" / "downloads").mkdir(parents=True)


def test_collect_refuses_to_start_an_empty_root_beside_a_0_1_0_one(tmp_path):
    proj, cfg = project(tmp_path)
    data_root(proj / "data", old=True)
    res = subprocess.run(MLC + ["collect", "-c", "configs/mine.yaml", "--no-progress"], cwd=proj, env=ENV,
                         capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    new, old = proj / "configs" / "data", proj / "data"
    assert f"({new}, no data root yet)" in lines[0] and f"current directory ({old}, " in lines[0], lines[0]
    assert f"--set data_dir={old}" in lines[0] and f"write data_dir: {old} in " in lines[0], lines[0]
    assert not new.exists(), sorted(p.name for p in new.iterdir())      # nothing downloaded twice


def test_the_ways_out_it_names_work(tmp_path, monkeypatch):
    proj, cfg = project(tmp_path)
    data_root(proj / "data", old=True)
    monkeypatch.chdir(proj)
    with pytest.raises(ConfigError, match=r"^config: data_dir: data is taken from the config file's folder"):
        load_config(cfg)
    assert load_config(cfg, parse_overrides([f"data_dir={proj / 'data'}"])).data_dir == proj / "data"
    assert load_config(cfg, parse_overrides(["data_dir=data"])).data_dir == proj / "data"   # typed: from here
    text = cfg.read_text()
    for absolute in (proj / "data", proj / "configs" / "data"):   # written in the file: either root
        cfg.write_text(text.replace("data_dir: data\n", f"data_dir: {absolute}\n"))
        assert load_config(cfg).data_dir == absolute
    cfg.write_text(text)
    monkeypatch.chdir(proj / "configs")          # from the config's folder both are one: nothing to say
    assert load_config(cfg).data_dir == proj / "configs" / "data"


@pytest.mark.parametrize("case", ["new root beside the config", "later code's root here"])
def test_no_refusal_where_the_config_names_its_own_root(tmp_path, monkeypatch, case):
    """The root the config names exists already (the user chose it), or the one in the current
    directory is no 0.1.0 root: the repository's data/, made by configs/offline.yaml (`../data`),
    is not that of a config elsewhere that says `data_dir: data`."""
    proj, cfg = project(tmp_path)
    data_root(proj / "data", old=case == "new root beside the config")
    if case == "new root beside the config":
        data_root(proj / "configs" / "data", old=False)
    monkeypatch.chdir(proj)
    assert load_config(cfg).data_dir == proj / "configs" / "data"
