"""Mine hard negatives: pool images ("other" candidates collected for the purpose) that the model
wrongly accepts as a class become training negatives of the next dataset version.

Only pool images move (purpose pool -> train, label other); evaluation probes never do. Class images
the model confidently rejects are listed for review (possible label noise), never moved.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from mlc_pipeline.catalog import Catalog, run_end_status
from mlc_pipeline.catalog.overrides import build_candidates, overrides
from mlc_pipeline import progress
from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.dataset.takedowns import read_takedowns
from mlc_pipeline.executor import cluster_ready, map_chunks
from mlc_pipeline.model.metrics import predict_matrix
from mlc_pipeline.model.predict import score_with_errors
from mlc_pipeline.model.bundle import load_bundle
from mlc_pipeline.model.likeness import pool_likeness
from mlc_pipeline.model.mine_record import (bundle_folders, check_round, next_round, overlapping_queries, pool_overlaps,
                                            publish_record, record_round, settle_record, settle_records,
                                            settle_stopped, write_csv)

log = logging.getLogger(__name__)
# A pool image this close to a class image (PHash bits) is a copy of it: resized and re-encoded real
# photos stay within ~4 bits, while flat drawings of *different* things can sit at 10 (issue 13), so
# curation's looser threshold would hold back true lookalikes, the negatives mining exists for.
NEAR_COPY_BITS = 4
MIN_DEFAULT_CAP = 50
HELD = "held:"          # reason prefix of pool images mining kept out of the negatives, for review
# Reason prefix of a negative a user put back with `mlc mine --undo`: they said it is not one, so no
# later round mines it again (curate keeps the mark; a reviewer can still label it in `mlc review`).
NOT_A_NEGATIVE = "not-a-negative:"
REVIEW_COLUMNS = ["candidate_id", "photo_id", "label", "score", "file"]
MINED_COLUMNS = ["candidate_id", "photo_id", "score", "accepted_as", "likeness", "decision", "file"]


@dataclass
class MineResult:
    round: int
    model: str
    scored: int = 0
    added: int = 0                     # hard negatives moved into the training "other" set
    errors: int = 0
    review: list[dict] = field(default_factory=list)
    negatives: list[dict] = field(default_factory=list)   # photo_id, score, top class
    held: list[dict] = field(default_factory=list)        # accepted pool images kept out, and why
    over_cap: int = 0                  # accepted, not held, but beyond this round's cap (scored again next round)
    accepted: int = 0                  # pool images the model accepted as a class: all of the above, and
    decided_in_review: int = 0         # ... those a person decided in review while the pool was scored
    undoable: bool = False             # the round has mined or held images `mlc mine --undo` puts back

    def undo_hint(self, config: str, overrides: list[str] | None = None) -> str:
        """How to put the round back, as a command to copy (the config and --set overrides the mine ran
        with: without -c the command is a usage error); '' for a round whose undo would be refused."""
        if not self.undoable:
            return ""
        words = ["mlc", "mine", "-c", config, *(w for o in overrides or [] for w in ("--set", o))]
        return f" (undo: `{shlex.join([*words, '--undo', '--round', str(self.round)])}`)"


def accepted_classes(bundle, probs: np.ndarray) -> np.ndarray:
    """Boolean (N, vocab) of the classes each image is accepted as (never the "other" column)."""
    ok = ~np.isnan(probs).any(axis=1)
    pred = np.zeros(probs.shape, dtype=bool)
    pred[ok] = predict_matrix(probs[ok], bundle.thresholds, bundle.vocab, bundle.head)
    return pred


def phash_bits(hashes: list[str | None]) -> np.ndarray:
    """(N, 64) bits of 16-hex-digit perceptual hashes; a missing hash is all-False (never near)."""
    out = np.zeros((len(hashes), 64), dtype=bool)
    for i, h in enumerate(hashes):
        if h and len(h) == 16:
            out[i] = np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)).astype(bool)
    return out


def nearest_class_image(pool_hashes: list[str | None], class_rows: list[dict], max_bits: int) -> list[dict | None]:
    """For each pool hash, a class image within `max_bits` of it (Hamming), or None."""
    if not class_rows or not pool_hashes:
        return [None] * len(pool_hashes)
    known = [r for r in class_rows if r.get("phash") and len(r["phash"]) == 16]
    if not known:
        return [None] * len(pool_hashes)
    cls = phash_bits([r["phash"] for r in known])
    out = []
    for h, bits in zip(pool_hashes, phash_bits(pool_hashes)):
        if not h:
            out.append(None)
            continue
        dist = (cls != bits).sum(axis=1)
        j = int(dist.argmin())
        out.append(known[j] if dist[j] <= max_bits else None)
    return out


def mine_round(cfg: Config, bundle_dir: str | Path, round_no: int | None = None) -> MineResult:
    """Score the pool; accepted pool images become hard negatives, except those held for review:
    near-duplicates of a class image, or images that look like a class, whichever they were
    accepted as (`hold_for_review`: a pool query that returns class members, e.g. "stuffed animal"
    for a "teddy" class). At most `mine.max_per_round` are added (the hardest first). Every decision is written to mined.csv.
    A bundle outside this data root's models folder, or trained on other classes, is refused first.
    `round_no`: None, the round after the catalog's last (mine_record.next_round)."""
    round_no = next_round(cfg) if round_no is None else round_no
    check_round(round_no)
    check_bundle_home(cfg, bundle_dir)
    bundle = load_bundle(bundle_dir)
    check_bundle_classes(cfg, bundle)
    flagged = overlapping_queries(cfg)
    for warning in pool_overlaps(cfg):
        log.warning(warning)
    model = Path(bundle_dir).name
    result = MineResult(round_no, model)
    settings = cfg.mine
    pending = None
    with Catalog(cfg.catalog_path) as catalog:
        settle_records(catalog, Path(bundle_dir))      # a record a stopped round left: published or removed
        run_id = catalog.start_run(f"mine-{round_no}")
        try:
            decided = overrides(catalog)            # a pool image a reviewer labelled or rejected is theirs
            pool = [r for r in catalog.candidates(status="accepted", purpose="pool")
                    if not (r["reason"] or "").startswith((HELD, NOT_A_NEGATIVE)) and r["id"] not in decided]
            probs, errors = score_spread(cfg, bundle, bundle_dir, [r["file_path"] for r in pool])
            result.scored, result.errors = len(pool) - len(errors), len(errors)
            accepted = accepted_classes(bundle, probs)
            training = training_rows(catalog)
            class_rows = [r for r in training if r["curated_label"] != "other"]
            hits = [i for i in range(len(pool)) if accepted[i].any()]
            near = nearest_class_image([pool[i]["phash"] for i in hits], class_rows, NEAR_COPY_BITS)
            candidates = []
            for i, twin in zip(hits, near):
                j = int(np.nanargmax(np.where(accepted[i], probs[i], -1)))
                entry = {"candidate_id": pool[i]["id"], "photo_id": pool[i]["photo_id"], "file": pool[i]["file_path"],
                         "score": round(float(probs[i, j]), 4), "accepted_as": bundle.vocab[j], "likeness": ""}
                if twin is not None:
                    entry["decision"] = f"held:near-duplicate-of:{twin['id']}"
                elif any(entry["accepted_as"] in flagged.get(q, {}) for q in json.loads(pool[i]["queries"] or "[]")):
                    # found by a pool query that overlaps this class (the warning above): likely a member
                    entry["decision"] = f"held:query-overlaps:{entry['accepted_as']}"
                candidates.append(entry)
            open_ = [k for k, e in enumerate(candidates) if "decision" not in e]
            hold_for_review(cfg, bundle, [candidates[k] for k in open_], probs[[hits[k] for k in open_]])
            to_add = sorted((e for e in candidates if e["decision"] == "added"), key=lambda e: -e["score"])
            # the round's cap, less what this round added already (a round mined again by number)
            cap, earlier = max_per_round(settings, training), sum(r["mined_round"] == round_no for r in training)
            for e in to_add[max(0, cap - earlier):]:
                e["decision"] = "over-cap"
            with catalog.transaction():
                late = overrides(catalog)       # decided in review while the pool was scored (hours)
                for e in candidates:
                    if e["candidate_id"] in late:
                        e["decision"] = "decided-in-review"
                # The record first: stopped after the moves, a rerun could not rebuild it (the images moved).
                # Pending until the commit: one the catalog rolled back never shows (mine_record.settle_record).
                # mined-r<N>.csv: this round's own record (a bundle can mine several rounds: the report
                # shows each); mined.csv: this bundle's latest mining, where readers looked before
                pending = record_round(Path(bundle_dir), round_no, candidates, MINED_COLUMNS, run_id)
                for e in candidates:
                    if e["decision"] == "added":
                        catalog.set_status(e["candidate_id"], "accepted", f"hard-negative:round={round_no}", run_id, "mine",
                                           purpose="train", curated_label="other", mined_round=round_no,
                                           mined_score=e["score"], mined_model=model)
                    elif e["decision"].startswith(HELD):
                        catalog.set_status(e["candidate_id"], "accepted", f"{e['decision']}:round={round_no}", run_id,
                                           "mine", mined_score=e["score"], mined_model=model)
            publish_record(pending)
            result.negatives = [{k: e[k] for k in ("photo_id", "score", "accepted_as", "likeness")} for e in candidates
                                if e["decision"] == "added"]
            result.held = [e for e in candidates if e["decision"].startswith(HELD)]
            result.over_cap = sum(e["decision"] == "over-cap" for e in candidates)
            result.added = len(result.negatives)
            result.accepted = len(candidates)
            result.decided_in_review = sum(e["decision"] == "decided-in-review" for e in candidates)
            result.undoable = bool(catalog.mined_in_round(round_no))     # this call's or an earlier one's
            result.review = review_class_images(bundle, cfg, class_rows, decided)
            catalog.finish_run(run_id, "completed", {"scored": result.scored, "added": result.added,
                                                     "held": len(result.held), "over_cap": result.over_cap})
        except BaseException as exc:   # Ctrl-C and SIGTERM too: the run is never left 'running'
            catalog.finish_run(run_id, run_end_status(exc), {"error": type(exc).__name__})
            if pending is not None:      # rolled back: removed; stopped after the commit: published
                settle_record(catalog, pending)
            raise
    write_csv(Path(bundle_dir) / "review.csv", result.review, REVIEW_COLUMNS)
    progress.summary(f"mine round {round_no}: {model}", [
        ("pool images scored", result.scored), ("accepted as a class", len(candidates)),
        ("hard negatives added", result.added), ("held for review", len(result.held)),
        ("over the round's cap", result.over_cap), ("class images to review", len(result.review)),
        ("decisions", Path(bundle_dir) / "mined.csv")])
    log.info("mining round %d: %d of %d pool images accepted as a class: %d -> hard negatives, %d held for review, "
             "%d over the round's cap of %d%s; %d class images to review", round_no, len(candidates), result.scored,
             result.added, len(result.held), result.over_cap, cap, f" ({earlier} added earlier)" if earlier else "",
             len(result.review))
    return result


def check_bundle_home(cfg: Config, bundle_dir: str | Path) -> None:
    """Refuse (ConfigError) a bundle outside this data root's models folder: mining writes its records
    into the bundle (mined-r<N>.csv, mined.csv, review.csv), where this root's report and review read
    them; in another project's bundle they showed in that project's report (2026-12-06 audit)."""
    models, where = cfg.layout.models.resolve(), Path(bundle_dir).resolve()
    if where.parent != models:
        raise ConfigError(f"mine: {bundle_dir} is not in this data root's models folder {models}: mining writes its "
                          "decisions into the bundle it mines with, for this project's report and review; nothing "
                          f"was mined (copy it there first: cp -r {bundle_dir} {models}/, then --model {where.name})")


def check_bundle_classes(cfg: Config, bundle) -> None:
    """Refuse (ConfigError) a bundle trained on other classes than the config's: its scores say nothing
    about this pool (a cat/dog model held balloon photos as `like-class:dog`)."""
    if set(bundle.classes) != set(cfg.classes):
        raise ConfigError(f"mine: {Path(bundle.path).name} was trained on classes {', '.join(bundle.classes)}, "
                          f"not on the config's ({', '.join(cfg.classes)}): its scores say nothing about this "
                          "project's pool; nothing was mined (mine with a model trained on this config: `mlc train`)")


def score_spread(cfg: Config, bundle, bundle_dir: str | Path, paths: list[str]) -> tuple[np.ndarray, dict[int, str]]:
    """`score_with_errors` here, or in chunks on the Dask cluster when one is set (each worker loads
    the bundle once). Chunks are a multiple of the batch size, so the batches are the same either way."""
    address = cluster_ready(cfg)
    if not address:
        return score_with_errors(bundle, paths)
    chunk = max(SCORE_BATCH, cfg.cluster.score_chunk // SCORE_BATCH * SCORE_BATCH)
    rows = map_chunks(partial(score_chunk, str(bundle_dir)), paths, chunk, address=address)
    probs = np.full((len(paths), len(bundle.vocab)), np.nan, dtype=np.float32)
    errors = {}
    for i, (row, error) in enumerate(rows):
        if error is None:
            probs[i] = row
        else:
            errors[i] = error
    return probs, errors


SCORE_BATCH = 64     # score_with_errors' default batch size


@lru_cache(maxsize=2)
def _worker_bundle(bundle_dir: str):
    return load_bundle(bundle_dir)


def score_chunk(bundle_dir: str, paths: list[str]) -> list[tuple[np.ndarray | None, str | None]]:
    "Run on a worker: (probabilities, None) or (None, error) per path."
    probs, errors = score_with_errors(_worker_bundle(bundle_dir), paths, batch_size=SCORE_BATCH)
    return [(None, errors[i]) if i in errors else (probs[i], None) for i in range(len(paths))]


def hold_for_review(cfg: Config, bundle, entries: list[dict], scores: np.ndarray) -> None:
    """Decide each accepted pool image (no near-copy; `scores` its row of probabilities):
    `held:like-class:<class>`, `held:confident:<class>` or `added`.

    Default: held when it looks like any class, in the model's own features, at least as much as a
    typical validation image of that class (model/likeness.py): not only the class it was accepted
    as, since a class member taken for another class is still a class member. Measured on real
    photos, the score could not tell a pool's class members from its true hard negatives, and holding
    by score starved mining (docs/training.md, "What mining holds back"). `mine.hold_above` set:
    held when its score for any class reaches that value instead, as before. Without the model's
    dataset to compare with: the same score hold at each class's median validation score."""
    if not entries:
        return
    likeness = None
    if cfg.mine.hold_above is None:
        likeness = pool_likeness(bundle, bundle_manifest(cfg, bundle), [e["file"] for e in entries],
                                 read_takedowns(cfg))       # the photos taken down since: no reference
    if likeness is None:
        hold_at = np.array(hold_scores(bundle, cfg.mine.hold_above))
        columns = [bundle.vocab.index(c) for c in bundle.classes]      # never the "other" output
        for e, row in zip(entries, scores):
            over = [j for j in columns if row[j] >= hold_at[j]]       # its surest such class named
            e["decision"] = f"held:confident:{bundle.vocab[max(over, key=lambda j: row[j])]}" if over else "added"
        return
    for i, e in enumerate(entries):
        like, margin = likeness.looks_like(i)
        if np.isnan(likeness.margins[i]).all():     # features unread: undecided is not "other"
            e["decision"] = f"held:like-class:{e['accepted_as']}"
        elif like is not None:
            e["decision"], e["likeness"] = f"held:like-class:{like}", round(margin, 4)
        else:
            m = likeness.margins[i, likeness.classes.index(e["accepted_as"])]
            e["decision"], e["likeness"] = "added", "" if np.isnan(m) else round(float(m), 4)


def bundle_manifest(cfg: Config, bundle) -> Path:
    """The manifest of the dataset version the bundle was trained on: under this data root, or
    where training read it."""
    name, _, version = str(bundle.meta.get("dataset_version", "")).rpartition("/")
    here = cfg.layout.dataset_version(name, version) / "manifest.csv"
    if name and version and here.is_file():
        return here
    return Path(bundle.meta.get("manifest", here))


def hold_scores(bundle, hold_above: float | None) -> list[float]:
    """Per vocab column, the score at which an accepted pool image is held for review instead of
    mined: the configured value, or else the median score of that class's validation images (a
    pool image the model is surer of than of a typical image of the class may well be one)."""
    if hold_above is not None:
        return [hold_above] * len(bundle.vocab)
    typical = bundle.meta.get("typical_positive_scores")
    if typical is None:
        log.info("%s predates typical_positive_scores: no confidence hold (set mine.hold_above)", bundle.path.name)
        return [float("inf")] * len(bundle.vocab)
    return [float("inf") if t is None else t for t in typical]


def training_rows(catalog: Catalog) -> list[dict]:
    """The training images as the next build sees them, the review applied (its labels, its rejects,
    the pool images it labelled): mining's class references, its cap and the class images it checks."""
    removed_owners = catalog.removed_owners()       # `mlc remove --owner`: the build leaves them out
    return [c for c in build_candidates(catalog) if c["purpose"] != "probe" and c["owner"] not in removed_owners]


def max_per_round(settings, training: list[dict]) -> int:
    """The configured cap, or by default as many as the training "other" set already holds (at
    least MIN_DEFAULT_CAP): one round can at most double the negatives, so a bad model can't flood them."""
    if settings.max_per_round is not None:
        return settings.max_per_round
    return max(MIN_DEFAULT_CAP, sum(r["curated_label"] == "other" for r in training))


def undo_round(cfg: Config, round_no: int, photo_ids: list[str] | None = None) -> int:
    """Put a round's mined negatives (all, or the given photo ids) back into the pool, marked
    `not-a-negative:round=N` so that no later round mines them again, and release the pool images it
    held for review (scored again next round). Images with a review decision in force are left as
    the reviewer has them (undone in the review app, or rejected there). Returns how many changed.
    A round with no such image, or a photo id that is not one of them, is a ConfigError naming what
    there is: an undo that changes nothing must not read as done."""
    check_round(round_no, undo=True)
    changed, kept = 0, 0
    with Catalog(cfg.catalog_path) as catalog:
        settle_stopped(catalog, bundle_folders(cfg.layout.models))     # a round killed mid-record: as committed
        check_undo(catalog, round_no, photo_ids)
        run_id = catalog.start_run(f"mine-undo-{round_no}")
        with catalog.transaction():
            decided = overrides(catalog)
            for r in catalog.mined_in_round(round_no):
                if photo_ids and r["photo_id"] not in photo_ids:
                    continue
                if r["id"] in decided:
                    kept += 1
                    continue
                mark = f"{NOT_A_NEGATIVE}round={round_no}" if r["mined_round"] == round_no else None
                catalog.set_status(r["id"], "accepted", mark, run_id, "mine-undo", purpose="pool",
                                   curated_label="other", mined_round=None, mined_score=None, mined_model=None)
                changed += 1
        catalog.finish_run(run_id, "completed", {"changed": changed, "kept_as_reviewed": kept})
    if kept:
        log.warning("mine --undo round %d: %d image(s) left as decided in review (undo or reject them in "
                    "`mlc review`)", round_no, kept)
    return changed


def check_undo(catalog: Catalog, round_no: int, photo_ids: list[str] | None) -> None:
    """Refuse (ConfigError) an undo of a round with no mined or held image, or of photos not in it.
    Photos that round's undo put back already are no mistake: a rerun changes nothing, and says so."""
    in_round = {r["photo_id"] for r in catalog.mined_in_round(round_no)}
    put_back = {r["photo_id"] for r in catalog.candidates(reason=f"{NOT_A_NEGATIVE}round={round_no}")}
    if not in_round and not put_back:
        rounds = catalog.mined_rounds()
        raise ConfigError(f"mine --undo: round {round_no} has no mined or held images to put back (" + (
            f"rounds with mined or held images: {', '.join(map(str, rounds))})" if rounds else
            "no round has mined or held images: nothing to undo)"))
    missing = [p for p in dict.fromkeys(photo_ids or []) if p not in in_round | put_back]
    if missing:
        raise ConfigError(f"mine --undo: photo id{'s' * (len(missing) > 1)} {', '.join(missing)} "
                          f"{'are' if len(missing) > 1 else 'is'} not among round {round_no}'s {len(in_round)} "
                          f"mined or held images ({len(put_back)} put back already; the round's bundle lists "
                          "its decisions in mined.csv): nothing was put back")


def review_class_images(bundle, cfg: Config, class_rows: list[dict], decided: dict[int, dict]) -> list[dict]:
    """Training class images whose own label the model scores under `mine.review_below`: possible
    label noise. Images whose labels a reviewer set are not listed again."""
    rows = [r for r in class_rows if not decided.get(r["id"], {}).get("labels")]
    if not rows:
        return []
    probs, _ = score_with_errors(bundle, [r["file_path"] for r in rows])
    out = []
    for row, p in zip(rows, probs):
        if np.isnan(p).any():
            continue
        for label in row["curated_label"].split():
            if label in bundle.vocab and p[bundle.vocab.index(label)] < cfg.mine.review_below:
                out.append({"candidate_id": row["id"], "photo_id": row["photo_id"], "label": label,
                            "score": round(float(p[bundle.vocab.index(label)]), 4), "file": row["file_path"]})
    return out

