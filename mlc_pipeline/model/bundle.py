"""The model bundle: the one contract between training and everything that uses a model.

A bundle is a folder: `export.pkl` (a fastai Learner, pickled), `bundle.json` (classes, vocab,
thresholds, the training config, export.pkl's sha256), `metrics.json` and plots. Training writes it
(`export_learner` + `write_meta`, model/train.py); predict, assess and mine only ever read it through
`load_bundle`. This module is the one reader of bundle.json (`read_meta`), the one check of a bundle's
files before unpickling (`check_files`); `point_latest`, the one writer of models/LATEST, is layout.py's
(the store's registry, storemodels.py, writes the pointer too and imports no numpy).

Trust model: `export.pkl` is a pickle, and unpickling runs code. A bundle is therefore a trusted file,
like a script: only load bundles this pipeline wrote. `load_bundle` checks that export.pkl still has
the sha256 recorded in bundle.json *before* unpickling, which catches corruption, truncation and a
swapped file. It is an integrity check, not a signature: whoever can rewrite export.pkl can rewrite
bundle.json too, so the folder itself must be writable only by people you trust.

Bundles exported before 0.2 name the flat module layout inside their pickle (`mlc_pipeline.nets`,
`mlc_pipeline.train`); `LEGACY_MODULES` maps those class paths to today's modules when unpickling.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
import types
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlc_pipeline import layout
from mlc_pipeline.fsutil import pid_alive, remove_dead_leftovers, sha256_file, write_text_atomic

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("vocab", "classes", "head", "thresholds", "export_sha256", "image_size")
META, EXPORT = "bundle.json", "export.pkl"
# bundle.json's `format`: 1 was written by mlc-pipeline 0.1.0 and 0.2.0 alike (0.1.0's pickles name the
# flat modules: LEGACY_MODULES); 2 since 0.3.0 (2026-12-07): the package layout, and the keys 0.2.0 did
# not write (takedowns, learned_from, time_budget, class_score, precision, weights...), which readers
# look up with a default. A bundle of a newer format than this is refused (`check_files`), not misread.
BUNDLE_FORMAT = 2


class BundleError(Exception):
    """A model bundle that is missing, unreadable, or not the file that was recorded."""


class MetaError(BundleError):
    """bundle.json missing, unreadable, not JSON, or JSON but not an object. The message names the
    file; `reason` says what is wrong in a few words (the `mlc models` listing shows it)."""

    def __init__(self, path: Path, reason: str, detail: str = ""):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}" + (f": {detail}" if detail else ""))


def read_meta(bundle_dir: str | Path) -> dict:
    """A bundle's bundle.json, the one reader of it: a dict, or MetaError."""
    path = Path(bundle_dir) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetaError(path, "missing (not a model bundle folder?)") from None
    except (OSError, ValueError) as exc:        # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MetaError(path, f"unreadable or not JSON ({type(exc).__name__})", str(exc)) from None
    if not isinstance(meta, dict):
        raise MetaError(path, f"is not a JSON object (a {type(meta).__name__})")
    return meta


def check_files(bundle_dir: Path, meta: dict, hash_export: bool = True, stored: dict | None = None) -> str | None:
    """Why a bundle cannot be loaded, from its bundle.json (`read_meta`), checked before anything is
    unpickled; None: it can. `hash_export=False` does not compute export.pkl's sha256 (a listing).
    `stored`: the files an object store's marker lists for a bundle listed from its bundle.json alone
    (`mlc models` on a store: storemodels.pull_listing); export.pkl is looked for there, never hashed."""
    fmt = meta.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        return f"{META} has no format number this mlc-pipeline knows (format {fmt!r})"
    if fmt > BUNDLE_FORMAT:
        return (f"{META} is of format {fmt}, written by a newer mlc-pipeline; this one reads bundle formats up to "
                f"{BUNDLE_FORMAT}: upgrade mlc-pipeline to use it")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return f"{META} lacks {missing}"
    export = Path(bundle_dir) / EXPORT
    if not (export.is_file() if stored is None else EXPORT in stored):
        return f"{EXPORT} missing"
    if stored is None and hash_export and (actual := sha256_file(export)) != meta["export_sha256"]:
        return (f"{EXPORT} is not the file {META} recorded (its sha256 {actual[:12]}... does not match "
                f"the {str(meta['export_sha256'])[:12]}... recorded)")
    return None


def write_meta(bundle_dir: Path, meta: dict) -> None:
    """Write a bundle's bundle.json, atomically: a reader sees the old file or the new one."""
    write_text_atomic(Path(bundle_dir) / META, json.dumps(meta, indent=2))


point_latest = layout.point_latest     # models/LATEST's one writer, kept under its name here


@dataclass
class Bundle:
    path: Path
    learn: object                      # fastai Learner
    classes: list[str]                 # real classes
    vocab: list[str]                   # model output columns, may end with "other"
    thresholds: np.ndarray | None      # per vocab column (sigmoid); None for softmax
    head: str
    other_mode: str
    image_size: int
    meta: dict = field(repr=False)


def load_bundle(bundle_dir: str | Path) -> Bundle:
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle not found: {bundle_dir} is not a folder")
    meta = read_meta(bundle_dir)
    problem = check_files(bundle_dir, meta)
    if problem:
        raise BundleError(f"{bundle_dir}: not a usable bundle: {problem}; refusing to unpickle it")
    meta_path, export_path = bundle_dir / META, bundle_dir / EXPORT
    learn = _unpickle_learner(export_path)
    vocab = [str(v) for v in learn.dls.vocab]
    if vocab != list(meta["vocab"]):
        raise BundleError(f"{export_path}: model vocab {vocab} differs from {meta_path.name} vocab {meta['vocab']}")
    thresholds = None if meta["thresholds"] is None else np.asarray(meta["thresholds"], dtype=float)
    if meta["head"] == "sigmoid" and (thresholds is None or len(thresholds) != len(vocab)):
        raise BundleError(f"{meta_path}: a sigmoid bundle needs one threshold per vocab entry")
    return Bundle(path=bundle_dir, learn=learn, classes=list(meta["classes"]), vocab=vocab,
                  thresholds=thresholds, head=meta["head"], other_mode=meta.get("other_mode", "negative"),
                  image_size=int(meta["image_size"]), meta=meta)


def _unpickle_learner(export_path: Path):
    import torch

    with warnings.catch_warnings():
        # fastai warns on every load that pickle is unsafe; we checked the hash just above.
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        from fastai.learner import load_learner
        try:
            return load_learner(export_path, cpu=not torch.cuda.is_available(), pickle_module=legacy_pickle)
        except Exception as exc:  # any unpickling failure: report which file, not a deep traceback
            raise BundleError(f"{export_path}: could not be loaded ({type(exc).__name__}: {exc})") from exc



def export_learner(learn, path: Path) -> None:
    """learn.export, with a full disk reported as one: torch's zip writer says only "enforce fail at
    inline_container.cc" when a write fails, the cli turns an ENOSPC OSError into one clear line."""
    try:
        learn.export(path, pickle_module=pickle)  # stdlib pickle: by reference only
    except (OSError, RuntimeError) as exc:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if not full and "inline_container" not in str(exc) and "file write failed" not in str(exc):
            raise
        free = shutil.disk_usage(path.parent).free
        if not full and free > 256 * 2**20:    # room enough: some other write failure, not a full disk
            raise OSError(errno.EIO, f"could not write the model bundle: {str(exc).splitlines()[0][:200]}",
                          str(path)) from exc
        raise OSError(errno.ENOSPC, f"No space left on device for the model bundle ({free / 2**20:.1f} MB free there; "
                                    f"the export failed with: {str(exc).splitlines()[0][:120]})", str(path)) from exc


# old module path -> today's, for class paths pickled by 0.1.x bundles (tests/test_bundle_compat.py)
LEGACY_MODULES = {
    "mlc_pipeline.nets": "mlc_pipeline.model.nets",
    "mlc_pipeline.train": "mlc_pipeline.model.learner",   # macro_f1_at_half
}


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(LEGACY_MODULES.get(module, module), name)


# torch.load takes a pickle *module*; this one is the stdlib's with the remapping Unpickler
legacy_pickle = types.ModuleType("mlc_legacy_pickle")
legacy_pickle.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
legacy_pickle.Unpickler = _LegacyUnpickler
legacy_pickle.load = lambda f, **kw: _LegacyUnpickler(f, **kw).load()


# ---------------------------------------------------------------- writing a bundle into place

# The two names a training gives a folder that is not a bundle (yet, or any more): `<name>.tmp-<pid>-<hex>`
# while it is written, `<name>.old-<pid>-<hex>` while its replacement takes the name.
LEFTOVER_RE = re.compile(r".+\.(tmp|old)-\d+-[0-9a-f]{8}")     # as train.py and move_into_place name them


def leftover_why(path: Path) -> str | None:
    """Why a folder under models/ is no bundle to name (being written, or being replaced), or None."""
    found = LEFTOVER_RE.fullmatch(path.name)
    if found is None:
        return None
    return ("a bundle still being written, or left half-written by a training that did not finish (the next "
            "training deletes it)" if found.group(1) == "tmp" else
            "a bundle being replaced by a newer one of its name (the next training deletes it or puts it back)")


def remove_stale_tmp_dirs(parent: Path) -> list[Path]:
    """Delete half-written bundles (`*.tmp-<pid>-*`) whose writer is gone (killed, e.g. kill -9)."""
    removed = remove_dead_leftovers([p for p in parent.glob("*.tmp-*-*") if p.is_dir()],
                                    lambda p: p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
    for path in removed:
        log.info("removed %s, left by a training that did not finish", path)
    # A replaced bundle (overwrite=True) is renamed `<name>.old-<pid>-*` before the new one takes
    # its name; a writer killed in between left the old one there and no `<name>`: it goes back.
    # One killed after the swap left only the old one to delete, as any dead writer's leftover.
    old_pid = lambda p: p.name.rpartition(".old-")[2].split("-", 1)[0]     # noqa: E731
    olds = sorted(p for p in parent.glob("*.old-*-*") if p.is_dir())
    for old in olds:
        bundle = parent / old.name.rpartition(".old-")[0]
        if not bundle.exists() and old_pid(old).isdigit() and not pid_alive(int(old_pid(old))):
            old.rename(bundle)
            log.warning("put %s back: the training that was replacing it did not finish", bundle)
    remove_dead_leftovers([p for p in olds if p.exists()], old_pid)
    return removed


def move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():  # overwrite: swap, so a reader sees the old or the new bundle, never neither
        old = out_dir.parent / f"{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
        tmp_dir.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp_dir.rename(out_dir)
