"""What a cache of an object-store data root knows of its store: `<cache>/.objectstore.json`, the sync
state, read and written by sync.py, storemodels.py and storeversions.py.

Its keys:
  catalog, catalog_sha256, local, uploading   the catalog snapshot this cache last synced (sync.py)
  published                                   the digests of files rewritten in place (sync.push_rewritten)
  models_latest                               the store's models/LATEST when the command fetched (LATEST_SEEN)
  pointer_move                                a move of models/LATEST a publish owes (storemodels.POINTER_MOVE)
  versions_synced                             versions known to be the store's, file for file (storeversions)
A fresh cache has none of them.
"""

from __future__ import annotations

import json

from mlc_pipeline.config import Config
from mlc_pipeline.fsutil import write_text_atomic

STATE_NAME = ".objectstore.json"
LATEST_SEEN = "models_latest"


def read_state(cfg: Config) -> dict:
    try:
        return json.loads((cfg.data_dir / STATE_NAME).read_text())
    except (OSError, ValueError):     # a fresh cache: nothing synced yet
        return {}


def write_state(cfg: Config, **changes) -> None:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.data_dir / STATE_NAME, json.dumps({**read_state(cfg), **changes}))
