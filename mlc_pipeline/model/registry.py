"""Model bundles as things to manage: list them, promote one to LATEST, name one.

`data/models/<bundle>/` holds bundle.json and metrics.json (model/bundle.py, model/train.py);
`data/models/LATEST` names the product model (a text file, so it survives copies and filesystems
without links). Training moves it (model/stage.train_version); `promote` moves it by hand, atomically, after checking that the
bundle is complete and its export.pkl is the file bundle.json recorded (nothing is unpickled).

A bundle is named on the command line by its folder, its name under the models folder, or `latest`.
Nothing here imports torch: listing and promoting are instant. The tables users read are in
mlc_pipeline/report/models.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlc_pipeline.config import ConfigError
from mlc_pipeline.layout import MODEL_POINTER as POINTER, latest_name, point_latest
from mlc_pipeline.model.bundle import MetaError, check_files, leftover_why, read_meta
from mlc_pipeline.objectstore import MARKER
from mlc_pipeline.storemodels import LISTINGS, POINTER_KEY, promoting


class RegistryError(ConfigError):
    """A one-line reason (exit 2): no such bundle, no LATEST, an incomplete bundle."""


@dataclass
class BundleInfo:
    name: str
    path: Path
    latest: bool = False
    dataset_version: str = ""
    created_at: str = ""
    meta: dict = field(default_factory=dict)       # bundle.json
    head: str = ""
    test: dict = field(default_factory=dict)       # metrics.json's test metrics ({} when missing)
    problem: str | None = None                     # why it cannot be used (`unusable_because`), or None
    metrics_problem: str | None = None             # why its test metrics are unknown (usable all the same)


def variant_name(head: str, other_mode: str) -> str:
    """A model's head as bundle names, VARIANTS (model/stage.py) and reports spell it; from
    bundle.json's `head` and `other_mode` (the effective one: a softmax always has an "other" class)."""
    return f"{head}-{'negatives' if other_mode == 'negative' else 'other-class'}"


def latest_bundle(models_dir: Path) -> Path | None:
    """The bundle `models/LATEST` names (a text file holding its folder's name; a link to the folder
    is followed too), or None: no pointer, an empty one, or a named folder that is gone. The one
    reader of the pointer (training, mining, the report and the review app all ask here)."""
    pointer = models_dir / POINTER
    if pointer.is_dir():
        return pointer.resolve()
    name = latest_name(models_dir)
    path = models_dir / name if name else None
    return path if path is not None and path.is_dir() else None


def resolve_bundle(spec: str, models_dir: Path) -> Path:
    """`latest`, a bundle folder, or a bundle name under `models_dir`."""
    if spec == "latest":
        path = latest_bundle(models_dir)
        if path is not None:
            return path
        name = latest_name(models_dir)
        if name is None:
            raise RegistryError(f"no {models_dir / POINTER}: no model trained or promoted there yet "
                                f"(train one, or pass -c CONFIG for another data root)")
        raise RegistryError(f"{models_dir / POINTER} names {name!r}, which is not a folder under {models_dir}")
    path = Path(spec) if Path(spec).is_dir() else models_dir / spec if "/" not in spec else None
    if path is not None and path.is_dir():
        if (why := leftover_why(path)) is not None:      # complete-looking after a kill during its test scoring
            raise RegistryError(f"{path} is not a bundle: it is {why}; `mlc models -c CONFIG` lists the bundles")
        return path
    raise RegistryError(f"no model bundle {spec!r}: not a folder, nor a bundle under {models_dir} "
                        f"(`mlc models -c CONFIG` lists them)")


def read_info(path: Path, latest: str | None = None, stored: dict | None = None) -> BundleInfo:
    """A bundle as `mlc models` lists it; `stored`: the files its store marker lists, for a bundle of an
    object store listed from its bundle.json and metrics.json alone (`list_bundles(..., stored=True)`),
    read from the marker kept beside them when not given (`--compare`)."""
    info = BundleInfo(name=path.name, path=path, latest=path.name == latest)
    if stored is None and path.parent.name == LISTINGS and (path / MARKER).is_file():
        stored = json.loads((path / MARKER).read_text()).get("files", {})
    try:
        meta = read_meta(path)
    except MetaError as exc:
        info.problem = f"bundle.json {exc.reason}"
        return info
    info.dataset_version = str(meta.get("dataset_version", ""))
    info.created_at = str(meta.get("created_at", ""))
    info.head = f"{meta.get('head', '?')}/{meta.get('other_mode', '?')}"
    info.meta = meta
    info.test, info.metrics_problem = read_test_metrics(path)
    info.problem = unusable_because(path, meta, hash_export=False, stored=stored)
    return info


def read_test_metrics(path: Path) -> tuple[dict, str | None]:
    """A bundle's test metrics (metrics.json's "test"; {} when it holds none), and why they are
    unknown (None: read): the file missing, not JSON, or not an object where one belongs. The one
    reader of them: `mlc models`, `--compare`, promote's note and the HTML report (report/latest.py).
    A "test" that was a list or null crashed `mlc models` (the mends25 reread)."""
    try:
        test = json.loads((path / "metrics.json").read_text()).get("test", {})
    except (OSError, ValueError, AttributeError) as exc:
        return {}, f"metrics.json unreadable ({type(exc).__name__})"
    if not isinstance(test, dict):
        return {}, f"metrics.json unreadable (its test is {type(test).__name__}, not an object)"
    return test, None


def list_bundles(models_dir: Path, stored: bool = False) -> list[BundleInfo]:
    """Every bundle folder (a folder with bundle.json, not one still being written), oldest first; and
    the folder models/LATEST names even without one, listed UNUSABLE (it vanished from the listing,
    while predict and mining refused it: the verify24 audit). `stored` (`mlc models`): also the bundles
    of an object store this cache lacks whole, from what `mlc models` fetched of them into
    models/.listings/ (storemodels.pull_listing), with the store's LATEST marked."""
    if not models_dir.is_dir():
        return []
    listings = models_dir / LISTINGS
    latest = latest_name(listings) if stored and (listings / POINTER).is_file() else latest_name(models_dir)
    folders = [p for p in models_dir.iterdir()
               if p.is_dir() and p.name != POINTER and leftover_why(p) is None
               and ((p / "bundle.json").exists() or p.name == latest)]
    infos = [read_info(p, latest) for p in folders]
    here = {i.name for i in infos}
    for p in sorted(listings.iterdir()) if stored and listings.is_dir() else []:
        if p.is_dir() and p.name not in here and (p / MARKER).is_file():
            infos.append(read_info(p, latest))          # its files: those its marker lists
    return sorted(infos, key=lambda i: (i.created_at, i.name))


def settings_of(path: Path) -> dict:
    try:
        meta = read_meta(path)
    except MetaError as exc:
        raise RegistryError(str(exc)) from None
    flat = {k: meta.get(k) for k in ("dataset_version", "arch", "image_size", "pretrained", "head", "other_mode",
                                     "classes", "n_train")}
    flat.update({f"config.{k}": v for k, v in (meta.get("config") or {}).items()})
    flat["thresholds"] = [round(t, threshold_places(t)) for t in meta.get("thresholds") or []] or None
    return flat


def threshold_places(threshold: float, least: int = 3) -> int:
    """`least` decimals, or as many more (up to 6) as keep a threshold other than 0 or 1 from reading
    as 0 or 1: a report's 'threshold 1.000' for 0.9997 said the class could never be claimed (the
    day24 audit)."""
    places = least
    while places < 6 and threshold not in (0, 1) and float(f"{threshold:.{places}f}") in (0, 1):
        places += 1
    return places


def unusable_because(path: Path, meta: dict, hash_export: bool = True, stored: dict | None = None) -> str | None:
    """Why a bundle cannot be used (None: it can), from its bundle.json: what `load_bundle` checks
    before unpickling (`bundle.check_files`), so what predict and mining need. metrics.json is not
    needed: it records how the bundle did on its test split (`mlc models`, --compare, the report), and
    a bundle without it predicts the same. `hash_export=False` (the listing): the export.pkl's sha256
    is not computed; `stored`: the files a store's marker lists (`read_info`)."""
    return check_files(path, meta, hash_export, stored)


def check_bundle(path: Path) -> None:
    """Complete and unaltered, without unpickling: what `load_bundle` checks first."""
    try:
        meta = read_meta(path)
    except MetaError as exc:
        raise RegistryError(f"{path}: not a usable bundle: bundle.json {exc.reason}") from None
    problem = unusable_because(path, meta)
    if problem:
        raise RegistryError(f"{path}: not a usable bundle: {problem}")


def promote(spec: str, models_dir: Path, publish: Callable[[Path], str | None] | None = None) -> tuple[str | None, str]:
    """Point LATEST at a bundle under `models_dir`; returns (previous, new) names. `publish` (an
    object-store data root: storemodels.promoting) moves the store's LATEST first, once the bundle is
    checked, and returns the name it named: refused there, nothing moves here."""
    path = resolve_bundle(spec, models_dir)
    if path.resolve().parent != models_dir.resolve():
        raise RegistryError(f"{path} is not under {models_dir}: LATEST names a bundle there (copy it in first)")
    check_bundle(path)
    previous = latest_name(models_dir) if publish is None else publish(path)
    point_latest(models_dir, path.name)
    return previous, path.name


def promote_in(cfg, spec: str) -> tuple[str, str | None, Path]:
    """`mlc promote`: `promote` in -c CONFIG's models folder (None: ./data/models); on an object-store
    data root the store's LATEST is moved first (storemodels.promoting). (the pointer moved, as a path
    or URL; the name it held; the bundle)."""
    models_dir = cfg.layout.models if cfg is not None else Path("data") / "models"
    with promoting(cfg, spec) as publish:
        previous, new = promote(spec, models_dir, publish)
    return (f"{cfg.data_url}/{POINTER_KEY}" if publish else str(models_dir / POINTER)), previous, models_dir / new


def promoted_under_a_writer(cfg) -> str | None:
    """What `mlc promote` adds when a command holds the data root's lock (a run or a training ends by
    moving models/LATEST to its own model, over this promotion: the concurrency28 audit); else None."""
    from mlc_pipeline.locking import describe, holder, lock_is_held
    if cfg is None or not lock_is_held(cfg.data_dir):
        return None
    return (f"note: {describe(holder(cfg.data_dir))} holds this data root: a run or training that ends after "
            f"this moves models/LATEST to the model it trained; check `mlc models` then, and promote again")
