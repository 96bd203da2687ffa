"""A small curated and built data root for the review app's tests: real photos (hymenoptera fixtures)
served by the bundled server in folder mode, collected, curated (with a planted duplicate) and built.

With MLC_REVIEW_WORLD=generated the same world is made of drawn shapes instead (red discs as "ants",
blue squares as "bees", noise and stripes as "scenery"): that is what the screenshots in docs/ show,
so that no fixture photo is copied into the project."""

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from PIL import Image

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect import collect
from mlc_pipeline.config import load_config
from mlc_pipeline.curate import curate
from mlc_pipeline.dataset import build_dataset

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hymenoptera"


def generated_photos(root: Path) -> tuple[list[Path], list[Path]]:
    """Drawn stand-ins for the fixture photos: 160 "ants" (red discs) and 12 "bees" (blue squares)."""
    import numpy as np
    from shapes import draw
    rng = np.random.default_rng(7)
    out = {}
    for name, kind, n in (("ants", "red", 160), ("bees", "blue", 12)):
        (root / "_drawn" / name).mkdir(parents=True)
        out[name] = []
        for i in range(n):
            path = root / "_drawn" / name / f"{name}_{i:03d}.jpg"
            (draw(kind if i < 150 else "other", rng)).resize((240, 180)).save(path, quality=90)
            out[name].append(path)
    return out["ants"], out["bees"]


def make_world(root: Path) -> Path:
    if os.environ.get("MLC_REVIEW_WORLD") == "generated":
        ants, bees = generated_photos(root.parent)
    else:
        ants, bees = sorted((FIXTURES / "ants").glob("*.jpg")), sorted((FIXTURES / "bees").glob("*.jpg"))
    for name, files in (("ants", ants[:12]), ("bees", bees[:12]), ("scenery", ants[150:156])):
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / name / f.name)
    shutil.copy(ants[0], root / "ants" / "zz_exact_copy.jpg")          # duplicates for the queue
    with Image.open(ants[1]) as im:                                    # a near one: smaller, re-encoded
        im.convert("RGB").resize((im.width * 7 // 10, im.height * 7 // 10)).save(root / "ants" / "zz_near.jpg",
                                                                                quality=70)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "bees" / "zz_tiny.jpg")   # quarantined: too-small
    return root


def make_data_root(tmp: Path, settings: dict | None = None) -> tuple[Path, object]:
    """(config file, config): collected, curated and built (v1). `settings`: more config keys, such as
    a PostgreSQL catalog (conftest's `catalog_settings`)."""
    world = make_world(tmp / "world")
    raw = {
        "data_dir": str(tmp / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s", "url_t", "url_sq"],
                   "local": {"port": 0, "folder": str(world),
                             "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
        "classes": {"ants": {"queries": ["ants"], "count": 100}, "bees": {"queries": ["bees"], "count": 100}},
        "other": {"queries": ["scenery"], "count": 100},
        "curate": {"min_side": 64},
        "build": {"max_side": 128},
        **(settings or {}),
    }
    path = tmp / "review.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    collect(cfg, progress=False)
    curate(cfg)
    build_dataset(cfg)
    return path, cfg


def plant_review_list(cfg, rows: list[dict], scores: list[float], label: str = "ants") -> Path:
    """A latest model bundle whose review.csv (written with mine's own writer and columns: training a
    model would take minutes) lists the candidates `rows` as `label` with `scores`."""
    from mlc_pipeline.model.mine import REVIEW_COLUMNS, write_csv
    bundle = cfg.data_dir / "models" / "m-1"
    bundle.mkdir(parents=True)
    (cfg.data_dir / "models" / "LATEST").write_text("m-1\n")
    write_csv(bundle / "review.csv", [{"candidate_id": r["id"], "photo_id": r["photo_id"], "label": label, "score": score,
                                       "file": r["file_path"]} for r, score in zip(rows, scores)], REVIEW_COLUMNS)
    return bundle


class ReviewServer:
    """`mlc review` as a real process on a free port."""

    def __init__(self, config: Path, port: int, host: str = "127.0.0.1", env: dict | None = None):
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "mlc_pipeline.cli", "review", "-c", str(config),
                                      "--host", host, "--port", str(port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlc review exited: {self.proc.stdout.read()}")
            try:
                requests.get(self.url + "/static/review.css", timeout=2)
                return
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> str:
        """Stop the server; its whole output."""
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


# What a hostile image host sent (the security26 audit): a valid GIF with HTML after it, whose script
# acts on the catalog through the app's own API, as `image/gif, text/html` (a browser takes the last type).
POLYGLOT_SCRIPT = (b"<html><body><h1>polyglot</h1><script>alert('script ran in ' + location.host);"
                   b"fetch('/api/action', {method: 'POST', headers: {'X-MLC-Client': 'pwned-by-image', "
                   b"'Content-Type': 'application/json'}, body: JSON.stringify({id: %d, action: 'reject', "
                   b"reason: 'rejected by script in a downloaded file'})})</script></body></html>")
HOSTILE_TYPE = "image/gif, text/html"


def polyglot_gif(victim: int) -> bytes:
    """A 120x100 GIF, then HTML whose script rejects candidate `victim`."""
    out = io.BytesIO()
    Image.new("RGB", (120, 100), (200, 30, 30)).save(out, "GIF")
    return out.getvalue() + POLYGLOT_SCRIPT % victim


def plant_polyglot(cfg) -> tuple[int, int]:
    """An accepted image's file replaced by polyglot_gif, its catalog row holding the type such a host
    sent (as collected before 2026-12-07); its script aims at another accepted image. (planted, victim)."""
    with Catalog(cfg.catalog_path) as c:
        planted, victim = c.candidates("status='accepted' AND purpose='train'")[:2]
        Path(planted["file_path"]).write_bytes(polyglot_gif(victim["id"]))
        c.update_fields(planted["id"], content_type=HOSTILE_TYPE)
    return planted["id"], victim["id"]
