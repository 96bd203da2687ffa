"""A small curated data root of real photos, for the storage tests (locking, versions, paths), and
the same photos planted in a catalog as downloads (`plant_downloads`).

Collect and curate run in-process against the bundled server in folder mode; the tests then drive
`mlc` subprocesses (real processes, as a user would) against the config file written here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import Config, load_config
from mlc_pipeline.curate.stage import curate

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hymenoptera"
MLC = [sys.executable, "-m", "mlc_pipeline.cli"]


def make_world(root: Path, per_class: int = 12) -> Path:
    ants, bees = sorted((FIXTURES / "ants").glob("*.jpg")), sorted((FIXTURES / "bees").glob("*.jpg"))
    return folder_world(root, {"ants": ants[:per_class], "bees": bees[:per_class], "scenery": ants[100:108]})


def folder_world(root: Path, sets: dict[str, list[Path]]) -> Path:
    "A folder-mode world: one subfolder per query name, holding copies of the given photos."
    for name, files in sets.items():
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / name / f.name)
    return root


def write_config(path: Path, data_dir: Path, world: Path, **extra) -> Path:
    data = {
        "data_dir": str(data_dir),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                   "local": {"port": 0, "folder": str(world),
                             "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
        "classes": {"ants": {"queries": ["ants"], "count": 100}, "bees": {"queries": ["bees"], "count": 100}},
        "other": {"queries": ["scenery"], "count": 100},
        "curate": {"min_side": 64},
        "build": {"max_side": 96},
        "train": {"epochs": 1, "image_size": 32, "batch_size": 16, "pretrained": "none",
                  "compare_baselines": False},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    path.write_text(yaml.safe_dump(data))
    return path


OWNERS = "ants/1099452230_d1949d3250.jpg"      # the photo a takedown test takes down: in v1's train split
MIRROR = "ants/zz_mirror.jpg"                  # its mirror image, collected before the takedown: v1's test split


def mirrored_v1(tmp: Path) -> tuple[Path, Config, Path]:
    """The takedown tests' world: make_world's ten ants, ten bees and eight scenery photos, and the mirror
    image of OWNERS saved as MIRROR (a takedown of OWNERS holds it), collected, curated and built
    in-process. (config file, config, v1 folder)."""
    from PIL import Image, ImageOps
    from mlc_pipeline.dataset.build import build_dataset
    world = make_world(tmp / "world", per_class=10)
    with Image.open(world / OWNERS) as im:
        ImageOps.mirror(im.convert("RGB")).save(world / MIRROR, quality=90)
    config = write_config(tmp / "config.yaml", tmp / "data", world)
    cfg = load_config(config)
    collect(cfg, progress=False)
    curate(cfg)
    return config, cfg, build_dataset(cfg).path


def curated_root(tmp: Path, per_class: int = 12) -> Path:
    """A collected and curated data root under tmp/data; returns its config file."""
    world = make_world(tmp / "world", per_class)
    cfg_path = write_config(tmp / "cfg.yaml", tmp / "data", world)
    cfg = load_config(cfg_path)
    collect(cfg, progress=False)
    curate(cfg)
    return cfg_path


def mlc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(MLC + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def mlc_start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(MLC + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def plant_downloads(cfg: Config, plan: list[tuple[str, str, Path]], also: list[tuple[int, str]] = ()) -> None:
    """Candidates `p<i>` of `plan` (purpose, label, photo) recorded as found and downloaded (the photo
    copied into raw/), as a collect leaves them, then curated; `also`: (i, label) another search found
    `p<i>` under."""
    def found(i: int, purpose: str, label: str) -> Found:
        return Found("flickr", f"p{i}", purpose, label, label, f"http://h/{i}", "url_m", None, None, 4,
                     "CC BY 2.0", "o", "o", "t", None, None, "")

    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([found(i, purpose, label) for i, (purpose, label, _) in enumerate(plan)]
                       + [found(i, plan[i][0], label) for i, label in also], run)
        for i, (_, _, photo) in enumerate(plan):
            dest = cfg.layout.raw("flickr") / f"p{i}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, dest)
            c.set_status(c.get_by_photo("flickr", f"p{i}")["id"], "downloaded", None, run, "download", file_path=str(dest))
    curate(cfg)
