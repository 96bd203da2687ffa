"""`mlc predict`: which inputs, and how a decision is shown.

Inputs: image files, folders (every image file under them, recursively, sorted), globs (quoted, so
the shell leaves `**` to us), and `@list.txt` (one path, folder or glob a line; blank lines and
`#` comments skipped; relative paths are relative to the current folder, as with xargs). An input
that names nothing (a missing file, a glob matching nothing, a folder without images) is a failed
row with its reason, never silently dropped. A file named twice is scored once.

Output: each claimed class with its probability and threshold; for "none of", every class with how
far it fell short of its threshold, closest first (a softmax bundle has no thresholds: it shows the
"other" probability against the best class). Two decimals, more where a probability and its
threshold would otherwise print the same (`decimals`). Exit 0 when every input was scored, 1 when any failed.
Every output names the model that scored (`model_line`, a `bundle` field per JSON row): LATEST moves
with each `mlc train`, and a saved result must say which model it came from. A file curation would
refuse (empty, no image, HEIC, AVIF, too small) is not scored: a row says why, with curation's reason
code, under the rules of the model's dataset version (`trained_on`); one it calls odd gets a note.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import stat
import sys
from pathlib import Path

from mlc_pipeline.model.registry import threshold_places

log = logging.getLogger(__name__)
# Photo files a folder holds: HEIC and AVIF too, each a row saying why it is not scored
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif",
                  ".avif"}


def expand_inputs(items: list[str]) -> list[tuple[str, str | None]]:
    """(path, None) for each image to score, (input, reason) for each input that names none."""
    out: list[tuple[str, str | None]] = []
    for item in items:
        if item.startswith("@") and not os.path.exists(item):
            try:
                lines = Path(item[1:]).read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                out.append((item, f"cannot read the list {item[1:]}: {type(exc).__name__}: {exc}"))
                continue
            entries = [line.strip() for line in lines]
            out += [e for entry in entries if entry and not entry.startswith("#") for e in expand_one(entry)]
        else:
            out += expand_one(item)
    seen: set[str] = set()
    unique = []
    for path, error in out:
        # one row per file however it is spelt (x.jpg, ./x.jpg, its absolute path, through a link:
        # a `**` glob under a link to a parent folder named each image dozens of times)
        key = path if error else os.path.realpath(path)
        if key not in seen:
            unique.append((path, error))
            seen.add(key)
    return unique


def not_a_file(path: str) -> str | None:
    """Why `path` cannot be read as a file (a dangling link, a FIFO, a socket, a device), or None.
    Opening a FIFO blocks until something writes to it: a glob matching one hung predict."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"a link to nothing ({os.readlink(path)})" if os.path.islink(path) else "no such file or folder"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")    # (folders never come here)
    return f"not a regular file ({kind}): not read"


def expand_one(item: str) -> list[tuple[str, str | None]]:
    if os.path.isdir(item):
        # every image-named entry but folders is a row: a link dangling (an unmounted drive) or a FIFO
        # inside the folder is named with its reason, never silently left out
        found = sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.is_dir() and not any(part.startswith(".") for part in p.relative_to(item).parts))
        return [(p, not_a_file(p)) for p in found] or [
            (item, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")]
    if os.path.lexists(item):
        return [(item, not_a_file(item))]     # a file: the scorer says if it is not an image
    if glob.has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        return [e for m in matches for e in expand_one(m)] or [(item, "no file matches this pattern")]
    return [(item, "no such file or folder")]


def trained_on(bundle):
    """Curation's rules on the images the bundle was trained on: those its dataset version was built
    with (its dataset.json, beside the manifest the bundle recorded or in the data root holding the
    bundle), else curation's defaults, said as such."""
    from mlc_pipeline.config import CurateSettings
    from mlc_pipeline.layout import DataLayout
    from mlc_pipeline.manifest import VersionMetaUnreadable, read_version_meta
    from mlc_pipeline.model.predict import TrainedOn
    version = str(bundle.meta.get("dataset_version") or "")
    places = [Path(str(bundle.meta["manifest"])).parent] if bundle.meta.get("manifest") else []
    if version.count("/") == 1:
        places.append(DataLayout(bundle.path.parent.parent).dataset_version(*version.split("/")))
    defaults = CurateSettings()
    for folder in places:
        try:
            params = read_version_meta(folder).get("params")
            curate = params.get("curate") if isinstance(params, dict) else None
            if isinstance(curate, dict):
                return TrainedOn(int(curate.get("min_side", defaults.min_side)),
                                 float(curate.get("max_aspect", defaults.max_aspect)),
                                 f"the curate settings {version or folder.name} was built with")
        except (VersionMetaUnreadable, TypeError, ValueError):     # a damaged record: the next place, the defaults
            continue
    return TrainedOn(defaults.min_side, defaults.max_aspect,
                     f"curation's defaults: the settings {version or 'its dataset'} was built with are not here")


def model_of(bundle) -> dict:
    """Which model scored: its name, when it was trained, its export.pkl's sha256 (bundle.json)."""
    return {"name": bundle.path.name, "created_at": bundle.meta.get("created_at"),
            "export_sha256": bundle.meta.get("export_sha256")}


def model_line(bundle) -> str:
    """The first line of predict's text output: '# model NAME (created ..., export.pkl sha256 ...)'."""
    said = model_of(bundle)
    return (f"# model {said['name']} (created {said['created_at'] or 'at an unknown time'}, export.pkl sha256 "
            f"{str(said['export_sha256'])[:12]})")


def decision_text(p, bundle) -> str:
    """One line: claimed classes with probability and threshold, then the near misses; a note after."""
    if p.error:
        return f"{p.path}: error: {p.error}"
    line = _decision(p, bundle)
    return f"{line}; note: {p.note}" if p.note else line


def _decision(p, bundle) -> str:
    if bundle.thresholds is None:                       # softmax: argmax over classes and "other"
        best = max(bundle.classes, key=lambda c: p.probs.get(c, 0.0))
        if p.none_of:
            return (f"{p.path}: none of: {', '.join(bundle.classes)} (\"other\" {p.probs.get('other', 0.0):.2f}; "
                    f"closest class {best} {p.probs[best]:.2f})")
        return f"{p.path}: " + ", ".join(f"{c} ({prob:.2f}, the most likely of {len(bundle.vocab)})" for c, prob in p.labels)
    thresholds = dict(zip(bundle.vocab, bundle.thresholds))
    claimed = {c for c, _ in p.labels}
    misses = sorted((c for c in bundle.classes if c not in claimed), key=lambda c: thresholds[c] - p.probs[c])
    short = ", ".join(missed_text(c, p.probs[c], thresholds[c]) for c in misses)
    if p.none_of:
        return f"{p.path}: none of: {short}"
    said = ", ".join(claimed_text(c, prob, thresholds[c]) for c, prob in p.labels)
    return f"{p.path}: {said}" + (f"; not {short}" if short else "")


def decimals(prob: float, threshold: float) -> int:
    """Two decimals, or as many more (up to 6) as it takes for a probability and a different
    threshold to print differently, their gap as non-zero, and a threshold other than 0 or 1 not as
    0 or 1 (the registry's rule for a threshold alone, from 2 decimals): near 0 or 1 two decimals
    showed a threshold of 0.9954 as 'needs 1.00: 0.00 short' and '1.00 >= 1.00'."""
    for places in range(threshold_places(threshold, least=2), 6):
        if prob == threshold or (f"{prob:.{places}f}" != f"{threshold:.{places}f}"
                                 and float(f"{abs(threshold - prob):.{places}f}") > 0):
            return places
    return 6


def claimed_text(c: str, prob: float, threshold: float) -> str:
    n = decimals(prob, threshold)
    return f"{c} ({prob:.{n}f} >= {threshold:.{n}f})"


def missed_text(c: str, prob: float, threshold: float) -> str:
    n = decimals(prob, threshold)
    return f"{c} ({prob:.{n}f}, needs {threshold:.{n}f}: {threshold - prob:.{n}f} short)"


def as_json(p, bundle) -> dict:
    from mlc_pipeline.model.metrics import OTHER
    row = {**p.__dict__, "bundle": model_of(bundle)}
    if bundle.thresholds is not None and not p.error:
        # the classes only: an "other" output is never claimed (it vetoes inside each class's score), so a
        # threshold and a margin for it would read as a claim the model does not make
        thresholds = {c: float(t) for c, t in zip(bundle.vocab, bundle.thresholds) if c != OTHER}
        row["thresholds"] = thresholds
        row["margins"] = {c: round(p.probs[c] - t, 6) for c, t in thresholds.items()}   # >= 0: claimed
    return row


def run_predict(bundle_spec: str, inputs: list[str], models_dir: Path, as_json_output: bool,
                max_pixels: int) -> int:
    from mlc_pipeline.model.bundle import BundleError, load_bundle
    from mlc_pipeline.model.predict import Prediction, ScoringFailed, predict_paths
    from mlc_pipeline.model.registry import RegistryError, resolve_bundle
    try:
        bundle = load_bundle(resolve_bundle(bundle_spec, models_dir))
    except (BundleError, RegistryError) as exc:
        print(f"mlc: {exc}", file=sys.stderr)
        return 2
    expanded = expand_inputs(inputs)
    to_score = [path for path, error in expanded if error is None]
    log.info("scoring %d file(s) with %s (created %s)", len(to_score), bundle.path.name,
             bundle.meta.get("created_at") or "at an unknown time")
    try:
        scored = iter(predict_paths(bundle, to_score, max_pixels=max_pixels, rules=trained_on(bundle))
                      if to_score else [])
    except ScoringFailed as exc:
        print(f"mlc: {exc}", file=sys.stderr)
        return 1
    preds = [next(scored) if error is None else Prediction(path=path, labels=[], none_of=True, error=error)
             for path, error in expanded]
    failed = sum(p.error is not None for p in preds)
    if as_json_output:
        print(json.dumps([as_json(p, bundle) for p in preds], indent=2, default=str))
    else:
        print(model_line(bundle))
        for p in preds:
            print(decision_text(p, bundle))
    if failed == len(preds):
        print(f"mlc: none of the {len(preds)} inputs could be scored (listed above)", file=sys.stderr)
        return 1
    if failed:
        print(f"mlc: {failed} of {len(preds)} inputs could not be scored (listed above)", file=sys.stderr)
        return 1
    return 0
