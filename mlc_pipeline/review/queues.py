"""What the latest model bundle says about images, read from its CSV files (no torch import): the
class images it scores low on their own label (review.csv: possible label noise), every mining
decision with its score (mined.csv), and its scores on the test and probe images (test_scores.csv):
the test images it answers wrong, by the HTML report's rule and in its order (report/analysis.py),
and the unknown kinds it accepts. Cached per file modification time."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.model import registry
from mlc_pipeline.model.bundle import MetaError, read_meta
from mlc_pipeline.model.assess import SCORES_FILE
from mlc_pipeline.model.mine_record import bundle_folders, settle_in
from mlc_pipeline.report import analysis

log = logging.getLogger(__name__)

_cache: dict[Path, tuple[float, list[dict]]] = {}
_scored: dict[Path, tuple[tuple, analysis.Scored | None, str | None]] = {}
_lists: dict[tuple[Path, str], tuple[tuple, list[dict]]] = {}


def bundle_csv(bundle: Path | None, name: str) -> list[dict]:
    if bundle is None or not (bundle / name).is_file():
        return []
    path = bundle / name
    mtime = path.stat().st_mtime
    hit = _cache.get(path)
    if hit is None or hit[0] != mtime:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["score"] = float(r["score"]) if r.get("score") not in (None, "") else None
        hit = _cache[path] = (mtime, rows)
    return hit[1]


def mining_bundle(cfg: Config) -> Path | None:
    """The bundle the latest mining round wrote its review.csv and mined.csv into: the latest bundle
    when it mined, else the most recently mined one. A run that ships its retrained round ships a
    bundle that never mined, and the queues page said "lists none" beside a run summary counting the
    round's class images to review (the day24 audit). A record a stopped round left pending is
    settled against the catalog first (mine_record.settle_in): a round killed after its commit shows."""
    models = cfg.layout.models
    folders = bundle_folders(models)        # settling writes inside bundles, never a folder: listed once
    settle_in(cfg.catalog_path, folders)
    latest = registry.latest_bundle(models)
    if latest is not None and any((latest / name).is_file() for name in ("review.csv", "mined.csv")):
        return latest
    mined = [p for p in folders if (p / "mined.csv").is_file()]
    return max(mined, key=lambda p: (p / "mined.csv").stat().st_mtime, default=latest)


def model_review_list(cfg: Config) -> tuple[Path | None, list[dict]]:
    """Class images the model rejects (the latest mining round's review.csv), the lowest score (the
    surest disagreement) first."""
    bundle = mining_bundle(cfg)
    rows = bundle_csv(bundle, "review.csv")
    return bundle, sorted(rows, key=lambda r: (r["score"] is None, r["score"] or 0.0))


def scores_for(cfg: Config, cid: int, photo_id: str | None = None, source: str | None = None) -> list[dict]:
    """Every line of the latest mining round's review.csv and mined.csv about one candidate; with its
    `photo_id` (and `source`), also the latest bundle's scores of it as a test or probe image (scores_on_test)."""
    bundle = mining_bundle(cfg)
    out = []
    for name in ("review.csv", "mined.csv"):
        out += [{**r, "file": name} for r in bundle_csv(bundle, name) if r.get("candidate_id") == str(cid)]
    return out + (scores_on_test(cfg, photo_id, source) if photo_id is not None else [])


def probes_accepted(cfg: Config, catalog) -> tuple[Path | None, list[dict]]:
    """Unknown-kind (probe) images the latest model still accepts as a class, from its test_scores.csv
    (written since 0.2) and its thresholds: the decisions `scored` holds (the HTML report's reading),
    the surest wrong acceptance (score furthest above its class's threshold) first, each matched to its
    candidate in one query (`candidate_ids`). Each row: candidate_id, photo_id, label, score, threshold.
    Empty when the scores cannot be read or the head is softmax: `unread` says why. It read the file and
    the thresholds itself and asked the catalog once per probe row (the review29 code review)."""
    bundle = registry.latest_bundle(cfg.layout.models)
    s = scored(bundle)
    if s is None or s.meta.get("head") == "softmax":
        return bundle, []
    return bundle, resolved(bundle, "probes", lambda: accepted_probes(s, catalog))


def accepted_probes(s: analysis.Scored, catalog) -> tuple[list[dict], bool]:
    """probes_accepted's rows, and whether each accepted probe was found in the catalog."""
    thresholds = s.meta["thresholds"]
    accepted = [i for i in map(int, (s.probe & s.pred[:, s.real].any(axis=1)).nonzero()[0])]
    ids = candidate_ids(catalog, [s.rows[i] for i in accepted], "probe")
    out = []
    for i in accepted:
        margin, j = max((float(s.probs[i, j]) - thresholds[j], j) for j in s.real)
        if row_key(s.rows[i]) in ids:
            out.append({"candidate_id": ids[row_key(s.rows[i])], "photo_id": s.rows[i]["photo_id"],
                        "label": s.vocab[j], "score": float(s.probs[i, j]), "threshold": thresholds[j],
                        "margin": margin})
    return sorted(out, key=lambda r: -r["margin"]), len(out) == len(accepted)


def resolved(bundle: Path, name: str, build) -> list[dict]:
    """List `name` of the bundle's scores, matched to candidates by `build()` ((rows, all found)), kept
    while its test_scores.csv and bundle.json are unchanged: an image page opened from the list read
    the list again, a query per probe row (the review29 code review). A list with a photo the catalog
    lacks is matched again next time (a candidate is never deleted, so a whole match stays right)."""
    key = scores_key(bundle)
    hit = _lists.get((bundle, name))
    if hit is not None and hit[0] == key:
        return hit[1]
    rows, whole = build()
    if whole:
        _lists[(bundle, name)] = (key, rows)
    return rows


def scores_key(bundle: Path) -> tuple:
    return tuple((bundle / name).stat().st_mtime_ns for name in (SCORES_FILE, "bundle.json"))


def scored(bundle: Path | None) -> analysis.Scored | None:
    """The bundle's test and probe scores with its decisions (analysis.load_scored: the HTML report's
    reading), cached while its test_scores.csv and bundle.json are unchanged; None without them, or
    when either cannot be read (`unread` says why)."""
    if bundle is None or not (bundle / SCORES_FILE).is_file() or not (bundle / "bundle.json").is_file():
        return None
    key = scores_key(bundle)
    hit = _scored.get(bundle)
    if hit is None or hit[0] != key:
        s, why = None, None
        try:
            read_meta(bundle)
            s = analysis.load_scored(bundle)
        except MetaError as exc:
            why = f"bundle.json cannot be read ({str(exc).split(': ', 1)[-1]})"
        except (KeyError, ValueError, TypeError) as exc:   # a column missing, a score not a number, no thresholds
            why = f"{SCORES_FILE} cannot be read ({type(exc).__name__}: {exc})"
        if s is None:
            why = why or "bundle.json cannot be read (no vocab)"
            log.warning("no wrong answers, accepted probes or test scores: %s/%s", bundle.name, why)
        hit = _scored[bundle] = (key, s, why)
    return hit[1]


def unread(bundle: Path | None, name: str) -> str | None:
    """Why list `name` ("wrong" or "probes") of the bundle's scores cannot be drawn, in words: no
    test_scores.csv ("missing": trained before 0.2), a file that cannot be read, or (the probes) a
    softmax head, which has no per-class threshold to accept an image over. None: it can. The page said
    "accepts none of its probe images" in each of these cases."""
    if bundle is None:
        return None
    if not (bundle / SCORES_FILE).is_file():
        return "missing"
    s = scored(bundle)
    if s is None:
        hit = _scored.get(bundle) if (bundle / "bundle.json").is_file() else None
        return f"unreadable: {hit[2] if hit else 'bundle.json cannot be read (missing)'}"
    return "softmax" if name == "probes" and s.meta.get("head") == "softmax" else None


def same_photo(row: dict, source: str | None, photo_id: str) -> bool:
    """Whether a scores file's row is the photo (source, photo_id): a photo id is unique only within its
    source; a file written before 2026-12-07 has no source column, and its photo id alone decides."""
    return row.get("photo_id") == photo_id and (not row.get("source") or source is None or row["source"] == source)


def candidate_ids(catalog, rows: list[dict], purpose: str) -> dict[tuple[str, str], int]:
    """(source, photo_id) of each scores-file row (source '' in a file without the column) -> the
    catalog's candidate id of that photo (a scores file names photos, not candidates)."""
    photo_ids = sorted({r.get("photo_id") or "" for r in rows})
    out: dict[tuple[str, str], int] = {}
    for at in range(0, len(photo_ids), 500):          # bound the statement's parameters
        for c in catalog.candidates(photo_id=photo_ids[at:at + 500], purpose=purpose):
            out.setdefault((c["source"], c["photo_id"]), c["id"])
            out.setdefault(("", c["photo_id"]), c["id"])
    return out


def row_key(row: dict) -> tuple[str, str]:
    return row.get("source") or "", row.get("photo_id") or ""


def wrong_answers(cfg: Config, catalog) -> tuple[Path | None, list[dict]]:
    """The latest bundle's test images it answers wrong at its thresholds: the HTML report's "Wrong
    answers" (analysis.wrong_answers: its rule, most wrong first), each with the candidate that is the
    photo. Each row: candidate_id, photo_id, caption (true labels → what it claimed), note (its column
    furthest from right), label and score of that column. A reviewer could not find them in the app
    (the review29 audit)."""
    bundle = registry.latest_bundle(cfg.layout.models)
    s = scored(bundle)
    if s is None:
        return bundle, []
    return bundle, resolved(bundle, "wrong", lambda: answered_wrong(s, catalog))


def answered_wrong(s: analysis.Scored, catalog) -> tuple[list[dict], bool]:
    """wrong_answers' rows, and whether each was found in the catalog."""
    wrong = analysis.wrong_answers(s)
    ids = candidate_ids(catalog, [s.rows[i] for i, _, _ in wrong], "train")
    return [{"candidate_id": ids[row_key(s.rows[i])], "photo_id": s.rows[i]["photo_id"],
             "caption": analysis.caption(s, i), "note": analysis.wrong_note(s, i, j, margin).lstrip(" ·"),
             "label": s.vocab[j], "score": float(s.probs[i, j])}
            for i, j, margin in wrong if row_key(s.rows[i]) in ids], all(row_key(s.rows[i]) in ids for i, _, _ in wrong)


def scores_on_test(cfg: Config, photo_id: str, source: str | None = None) -> list[dict]:
    """The latest bundle's scores of a test or probe photo (its image page's table): each class it has
    or claims (an image answered with none: its best class), right or wrong at the threshold."""
    s = scored(registry.latest_bundle(cfg.layout.models))
    if s is None:
        return []
    out = []
    for i in (i for i, r in enumerate(s.rows) if same_photo(r, source, photo_id)):
        best = max(s.real, key=lambda j: s.probs[i, j])
        for j in (j for j in s.real if s.truth[i, j] or s.pred[i, j] or j == best):
            thresholds = s.meta.get("thresholds")
            at = "" if thresholds is None else (f" {'≥' if s.pred[i, j] else '<'} threshold "
                                                f"{thresholds[j]:.{registry.threshold_places(thresholds[j])}f}")
            said = ("claimed" if s.pred[i, j] else "not claimed") + at
            right = bool(s.pred[i, j]) == bool(s.truth[i, j])
            why = "right" if right else "wrong: not a label of the image" if s.pred[i, j] else "wrong: a label of it, missed"
            out.append({"file": f"{SCORES_FILE} ({s.rows[i]['split']})", "label": s.vocab[j],
                        "score": float(s.probs[i, j]), "wrong": not right, "decision": f"{said}: {why}"})
    return out
