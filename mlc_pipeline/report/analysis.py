"""Error analysis of a model bundle, for the HTML report: the thresholds in use, a confusion matrix
with "none", the test images it answers wrong at its thresholds, most wrong first (with thumbnails), per-class
precision-recall curves with the operating point, the unknown (probe) images it still accepts, and
what each mining round did with the pool (mined-r<N>.csv, review.csv).

Everything is computed from files in the bundle: bundle.json (vocab, thresholds, head) and the
per-image scores training writes since 0.2 (model.assess.SCORES_FILE). A bundle without that file
(0.1) gets one line saying how to get the analysis, never an error.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import html
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.catalog.overrides import overrides
from mlc_pipeline.model.assess import SCORE_PREFIX, SCORES_FILE
from mlc_pipeline.model.bundle import MetaError, read_meta
from mlc_pipeline.model.metrics import predict_matrix, real_class_indices, targets_from_labels
from mlc_pipeline.model.mine_record import settle_in
from mlc_pipeline.model.predict_cli import decimals
from mlc_pipeline.model.registry import threshold_places
from mlc_pipeline.report.html import folded, image_figure, png_img, table

log = logging.getLogger(__name__)

NONE, PROBE = "none", "probe (unknown kinds)"
TOP_LOSSES = 12
SHOWN = 24            # thumbnails per gallery before the rest fold away
CLIP = 1e-6           # scores are clipped to [CLIP, 1 - CLIP] before their logit: 0 and 1 have none


@dataclass
class Scored:
    """A bundle's scored test + probe rows and its decisions on them."""
    rows: list[dict]          # the scores file's rows (path, split, labels, query, photo_id)
    probs: np.ndarray         # (N, len(vocab))
    truth: np.ndarray         # (N, len(vocab)) multi-hot, probe rows all zero
    pred: np.ndarray          # (N, len(vocab)) bool; "other" is never a claimed label
    probe: np.ndarray         # (N,) bool
    vocab: list[str]
    classes: list[str]        # the real classes, in vocab order
    real: list[int]           # their vocab columns
    meta: dict                # bundle.json
    images: Path              # the dataset folder the rows' paths are relative to


def load_scored(bundle_dir: str | Path) -> Scored | None:
    """None when the bundle has no per-image scores (trained before 0.2)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / SCORES_FILE
    if not path.is_file():
        return None
    try:
        meta = read_meta(bundle_dir)
        vocab = list(meta["vocab"])
    except (MetaError, KeyError, TypeError) as exc:      # the report goes on without the analysis
        log.warning("%s: no error analysis, its bundle.json cannot be read (%s: %s)", bundle_dir.name,
                    type(exc).__name__, exc)
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[SCORE_PREFIX + v]) for v in vocab] for r in rows], dtype=float).reshape(len(rows), len(vocab))
    probe = np.array([r["split"] == "probe" for r in rows], dtype=bool)
    truth = targets_from_labels([[] if p else r["labels"].split() for r, p in zip(rows, probe)], vocab)
    thresholds = None if meta.get("thresholds") is None else np.asarray(meta["thresholds"], dtype=float)
    pred = predict_matrix(probs, thresholds, vocab, meta.get("head", "sigmoid"))
    real = real_class_indices(vocab)
    return Scored(rows, probs, truth, pred, probe, vocab, [vocab[j] for j in real], real, meta,
                  Path(meta.get("manifest", "")).parent)


def confusion(s: Scored) -> tuple[list[str], list[str], np.ndarray]:
    """Rows: true class, "none" (an "other" image), or a probe image; columns: predicted class or
    "none". Off the diagonal only wrong answers: a class claimed that the image does not show (in the
    row of each of its true labels), or a true class missed while nothing wrong was claimed (in the
    "none" column). A multi-label image answered right adds to the diagonal alone, once per label."""
    row_names, col_names = s.classes + [NONE, PROBE], s.classes + [NONE]
    m = np.zeros((len(row_names), len(col_names)), dtype=int)
    for i in range(len(s.rows)):
        true = set() if s.probe[i] else {s.vocab[j] for j in s.real if s.truth[i, j]}
        said = {s.vocab[j] for j in s.real if s.pred[i, j]}
        rows = [PROBE] if s.probe[i] else sorted(true) or [NONE]
        wrong = sorted(said - true)
        cells = [(t, t) for t in sorted(true & said)] + [(r, p) for r in rows for p in wrong]
        if not wrong:       # the true classes it missed, or an "other"/probe image answered with none
            cells += [(r, NONE) for r in rows if r not in said]
        for t, p in cells:
            m[row_names.index(t), col_names.index(p)] += 1
    return row_names, col_names, m


def logit(p) -> np.ndarray:
    """log(p / (1 - p)), p clipped to [CLIP, 1 - CLIP]: a sigmoid's score back in the network's units."""
    p = np.clip(np.asarray(p, dtype=float), CLIP, 1 - CLIP)
    return np.log(p / (1 - p))


def wrong_answers(s: Scored) -> list[tuple[int, int, float]]:
    """The test images answered wrong at the decisions the model makes (s.pred: the product's own,
    model.metrics.predict_matrix, with the bundle's thresholds): a class of the image it does not
    claim, or a class it claims that the image does not show. As (row, column, margin) of each image's
    worst column, most wrong first: the margin is how far the score is on the wrong side of where the
    decision flips (the column's threshold; for softmax, the best score of the other columns), in the
    network's own units: logits (log(p/(1-p)) of score minus of threshold; softmax: log of the score
    over that other score, the difference of the two outputs). In raw scores a sailboat missed at
    0.9721 under a threshold of 0.9996 (4.27 logits) ranked after a kite missed at 0.30 under 0.5 (0.85)."""
    real = np.asarray(s.real)
    probs, wrong = s.probs[:, real], (s.pred[:, real] != s.truth[:, real].astype(bool)) & ~s.probe[:, None]
    thresholds = s.meta.get("thresholds")
    if s.meta.get("head") == "softmax" or thresholds is None:
        top2 = np.sort(s.probs, axis=1)[:, -2:]
        flip = np.where(probs >= top2[:, 1:], top2[:, :1], top2[:, 1:])
        # log(p_j / p_k): the difference of the two outputs the softmax compares
        distance = np.abs(np.log(np.clip(probs, CLIP, 1)) - np.log(np.clip(flip, CLIP, 1)))
    else:
        distance = np.abs(logit(probs) - logit(np.asarray(thresholds, dtype=float)[real]))
    margin = np.where(wrong, distance, -np.inf)
    out = [(int(i), int(real[margin[i].argmax()]), float(margin[i].max())) for i in np.flatnonzero(wrong.any(axis=1))]
    return sorted(out, key=lambda w: -w[2])


def wrong_note(s: Scored, i: int, j: int, margin: float) -> str:
    """' · missed kite: 0.9721 < threshold 0.9996, 4.27 logits off' for an image's worst column and
    its margin (wrong_answers); softmax: ' · missed kite, by 0.12 (0.26 logits)', the raw gap to the
    best other score."""
    thresholds = s.meta.get("thresholds")
    places = 2 if thresholds is None else decimals(s.probs[i, j], thresholds[j])
    what = f"claimed {s.vocab[j]} wrongly" if s.pred[i, j] else f"missed {s.vocab[j]}"
    if s.meta.get("head") == "softmax" or thresholds is None:
        gap = abs(s.probs[i, j] - np.delete(s.probs[i], j).max())   # the best other score: where it flips
        return f" · {what}, by {gap:.{places}f} ({margin:.2f} logits)"
    return (f" · {what}: {s.probs[i, j]:.{places}f} {'≥' if s.pred[i, j] else '<'} threshold "
            f"{thresholds[j]:.{threshold_places(thresholds[j])}f}, {margin:.2f} logits off")


def pr_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall at every cut through `scores` (highest first) and the average precision
    (the area under the step curve, without interpolation); nan AP without positives."""
    order = np.argsort(-scores, kind="stable")
    hits = truth[order].astype(bool)
    positives = int(hits.sum())
    if positives == 0:
        return np.zeros(0), np.zeros(0), float("nan")
    # one point per distinct score: tied images are cut together (as scikit-learn's average_precision_score)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    tp, fp = np.cumsum(hits)[last_of_tie], np.cumsum(~hits)[last_of_tie]
    precision, recall = tp / (tp + fp), tp / positives
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return precision, recall, ap


def per_class_rows(s: Scored) -> list[list]:
    """class, threshold, typical positive score, AP, precision and recall at the threshold (test split)."""
    scored = ~s.probe
    typical = s.meta.get("typical_positive_scores") or [None] * len(s.vocab)
    thresholds = s.meta.get("thresholds")
    out = []
    for j in s.real:
        t, p = s.truth[scored, j].astype(bool), s.pred[scored, j]
        _, _, ap = pr_curve(s.probs[scored, j], t)
        # as metrics.json's per_class (metrics.evaluate): 0 when nothing was taken, or nothing to find
        prec = (p & t).sum() / p.sum() if p.any() else 0.0
        rec = (p & t).sum() / t.sum() if t.any() else 0.0
        out.append([s.vocab[j], "argmax (softmax)" if thresholds is None else
                    f"{thresholds[j]:.{threshold_places(thresholds[j])}f}",
                    "n/a" if typical[j] is None else f"{typical[j]:.3f}", f"{ap:.3f}", f"{prec:.3f}", f"{rec:.3f}"])
    return out


def plot_pr(s: Scored) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = ~s.probe
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=80)
    for j in s.real:
        t = s.truth[scored, j].astype(bool)
        precision, recall, ap = pr_curve(s.probs[scored, j], t)
        if not len(recall):
            continue
        line, = ax.step(recall, precision, where="post", label=f"{s.vocab[j]} (AP {ap:.2f})")
        p = s.pred[scored, j]
        if p.any():     # where the thresholds in use put the class
            ax.plot([(p & t).sum() / t.sum()], [(p & t).sum() / p.sum()], "o", color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title="test split; dot = the thresholds in use")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def caption(s: Scored, i: int, extra: str = "") -> str:
    # decimals: as `mlc predict` prints it, 0.004 for a 0.003 threshold, not 0.00
    thresholds = s.meta.get("thresholds")
    shown = lambda j: f"{s.probs[i, j]:.{2 if thresholds is None else decimals(s.probs[i, j], thresholds[j])}f}"  # noqa: E731
    said = ", ".join(f"{s.vocab[j]} {shown(j)}" for j in s.real if s.pred[i, j]) or NONE
    true = s.rows[i].get("query", "") if s.probe[i] else (s.rows[i]["labels"] or NONE)
    return f"{'probe ' if s.probe[i] else ''}{true} → {said}{extra}"


def photo_of(s: Scored, i: int) -> str:
    """' · photo 12524991925': a caption's way to the image in `mlc review`, whose queues page lists the
    same wrong answers, each linking to the page that relabels it (the caption named no image)."""
    return f" · photo {s.rows[i]['photo_id']}" if s.rows[i].get("photo_id") else ""


def gallery(items: list[tuple[str | Path, str]], what: str, limits=None) -> str:
    """Thumbnails of (file, caption): the first SHOWN on the page, the rest in a folded section. A
    file is shown as the pipeline reads it; one over curation's limits (`limits`, the config's
    VerifyLimits; its defaults when None) is not decoded (report/html.thumbnail)."""
    figs = [image_figure(path, cap, limits=limits) for path, cap in items]
    out = "<div class='grid'>" + "".join(figs[:SHOWN]) + "</div>"
    if len(figs) > SHOWN:
        out += folded(f"{len(figs) - SHOWN} more {what}", "<div class='grid'>" + "".join(figs[SHOWN:]) + "</div>")
    return out


def analysis_section(bundle_dir: str | Path) -> str:
    """HTML: thresholds, confusion matrix, PR curves, wrong answers and accepted unknowns of one bundle."""
    bundle_dir = Path(bundle_dir)
    s = load_scored(bundle_dir)
    name = html.escape(bundle_dir.name)
    if s is None:
        return (f"<h3 id='errors'>Error analysis ({name})</h3><p>This bundle has no per-image scores "
                f"(<code>{SCORES_FILE}</code>, written by training since 0.2): retrain it to see the "
                f"confusion matrix, wrong answers and precision-recall curves.</p>")
    parts = [f"<h3 id='thresholds'>Thresholds and per-class precision-recall ({name}, test split)</h3>",
             "<p>A class is claimed when its score reaches its threshold (calibrated on the validation split); "
             "the typical positive score is the median score of the class's validation images.</p>",
             table(["class", "threshold", "typical positive score", "average precision", "precision", "recall"],
                   per_class_rows(s)),
             png_img(plot_pr(s), "precision-recall curves")]
    rows, cols, m = confusion(s)
    parts += [f"<h3 id='confusion'>Confusion matrix ({name})</h3>",
              "<p>Rows: what the image is (none: an 'other' image of the test split; probe: kinds under no "
              "query). Columns: what the model said, at the thresholds in use. Off the diagonal only wrong "
              "answers: a class claimed that the image does not show (counted in the row of each of its "
              "labels), or a class of the image missed while nothing wrong was claimed (column none). A "
              "multi-label image answered right counts on the diagonal alone, once per label.</p>",
              table(["true \\ predicted"] + cols, [[r] + list(m[k]) for k, r in enumerate(rows)])]
    wrong = wrong_answers(s)
    shown = wrong[:TOP_LOSSES]
    heading = (f"the {len(shown)} of its {len(wrong)} wrong answers furthest from right" if len(wrong) > TOP_LOSSES
               else "none: every test image is answered right" if not wrong
               else f"all {len(wrong)} test images it answers wrong" + (f" (fewer than {TOP_LOSSES})" if len(wrong) < TOP_LOSSES else ""))
    parts += [f"<h3 id='top-losses'>Wrong answers: {heading}</h3>",
              "<p>Wrong: at the thresholds in use (the bundle's, as <code>mlc predict</code> decides), a class "
              "of the image not claimed, or a class claimed that the image does not show. Most wrong first: "
              "by how far the score is on the wrong side of its threshold (softmax: of the best other score), "
              "in logits, the network's own units, so that a 0.9721 under a threshold of 0.9996 (4.27 logits) "
              "ranks above a 0.30 under 0.5 (0.85). "
              "Caption: true labels → what the model claimed (score) · its column furthest from right · the "
              "photo id (<code>mlc review</code> lists the same images on its queues page).</p>",
              gallery([(s.images / s.rows[i]["path"], caption(s, i, wrong_note(s, i, j, d) + photo_of(s, i)))
                       for i, j, d in shown],
                      "images") if shown else "<p>None: every test image is answered right at the thresholds in use.</p>"]
    accepted = [i for i in np.flatnonzero(s.probe) if s.pred[i, s.real].any()]
    parts += [f"<h3 id='unknowns-accepted'>Unknown (probe) images still accepted <small>{len(accepted)} of "
              f"{int(s.probe.sum())}</small></h3>",
              gallery([(s.images / s.rows[i]["path"], caption(s, i, photo_of(s, i))) for i in accepted], "images")
              if accepted else "<p>None: every probe image was answered with none of the classes.</p>"]
    return "\n".join(parts)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


MINED_RECORD = re.compile(r"^mined-r(\d+)\.csv$")     # model/mine.py: one record per mining round


def mined_records(bundle_dir: Path, round_before: int) -> list[tuple[int, Path]]:
    """(round, file) of each mining round a bundle ran, from its mined-r<N>.csv. A bundle mined
    before those files has its latest mining alone, in mined.csv: taken as `round_before`, the round
    its place among the run's rounds gives it."""
    per_round = sorted((int(m.group(1)), p) for p in bundle_dir.glob("mined-r*.csv")
                       if (m := MINED_RECORD.match(p.name)))
    if per_round:
        return per_round
    legacy = bundle_dir / "mined.csv"
    return [(round_before, legacy)] if legacy.is_file() else []


NEVER = "never recorded in the catalog"


def since_mined(catalog: Catalog | None, decided: dict, round_no: int, row: dict) -> str:
    """What became of an image round `round_no`'s record says it added or held, by the catalog (the
    source of truth, that the next build reads): '' while it still is that round's (a negative of
    it, or held by it), else 'undone' (a negative put back by `mlc mine --undo`), 'released' (a hold
    the undo released: scored again by a later round, which may hold it again), 'removed' or
    'decided in review'; NEVER when the catalog has no event of that round's decision for it (a
    round stopped before its commit, whose record mining before 2026-12-07 kept: nobody undid
    anything). Always '' without a catalog to ask."""
    if catalog is None:
        return ""
    cid = int(row["candidate_id"])
    now = catalog.get(cid)
    added = row["decision"] == "added"
    reason = f"hard-negative:round={round_no}" if added else f"{row['decision']}:round={round_no}"
    if now is None:
        return "removed"
    if not any(e["reason"] == reason for e in catalog.events(cid)):
        return NEVER
    if now["status"] != "accepted":
        return "removed"
    if (now["mined_round"] == round_no) if added else (now["reason"] == reason):
        return "decided in review" if cid in decided else ""
    return "undone" if added else "released"


def fates(counts: collections.Counter) -> str:
    """'2 undone since, 1 removed since; 3 never recorded in the catalog' for counted `since_mined`s."""
    later = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()) if what != NEVER)
    return "; ".join(filter(None, [f"{later} since" if later else "", f"{counts[NEVER]} {NEVER}" if counts[NEVER] else ""]))


def mining_section(rounds: list[tuple[int, Path]], catalog_path=None, limits=None) -> str:
    """For each (round, bundle that mined it) and every other round those bundles mined: thumbnails
    of the hard negatives the round added and links to its record (every decision) and to the
    bundle's review.csv (class images to check, from its latest mining). With `catalog_path`, a
    negative the catalog no longer holds as that round's (undone, removed, decided in review) is
    counted apart and marked, so that the page says what the next build learns from. A record a
    stopped round left pending is settled against that catalog first (mine_record.settle_in)."""
    if catalog_path is not None:
        settle_in(catalog_path, {bundle_dir for _, bundle_dir in rounds})
    records = sorted({(r, path.parent, path) for round_no, bundle_dir in rounds
                      for r, path in mined_records(bundle_dir, round_no)})
    if not records:
        return ""
    with contextlib.ExitStack() as stack:
        catalog = None if catalog_path is None else stack.enter_context(Catalog(catalog_path, readonly=True))
        decided = {} if catalog is None else overrides(catalog)
        return "\n".join(mining_round_html(catalog, decided, records, *record, limits=limits) for record in records)


def mining_round_html(catalog, decided: dict, records: list, round_no: int, bundle_dir: Path, mined: Path,
                      limits=None) -> str:
    review = bundle_dir / "review.csv"
    latest = round_no == max(r for r, b, _ in records if b == bundle_dir)   # review.csv is its latest mining's
    rows = read_csv(mined)
    added = [{**r, "since": since_mined(catalog, decided, round_no, r)} for r in rows if r["decision"] == "added"]
    held = collections.Counter(since_mined(catalog, decided, round_no, r) for r in rows
                               if r["decision"].startswith("held:"))
    kept = [r for r in added if not r["since"]]
    since = collections.Counter(r["since"] for r in added if r["since"])
    links = [f"<a href='{f.as_uri()}'>{f.name}</a> ({html.escape(what)})"
             for f, what in ((mined, "every decision, with its score"), (review, "class images to review"))
             if f.is_file() and (f == mined or latest)]
    to_review = f", {len(read_csv(review))} class images to review" if latest and review.is_file() else ""
    gone = f" (of {len(added)}: {fates(since)})" if since else ""
    held_gone = collections.Counter({what: n for what, n in held.items() if what})
    # holds the catalog no longer has from this round (released by an undo, say) are not counted as held
    held_text = f" (of the {held.total()} it held: {fates(held_gone)})" if held_gone else ""
    parts = [f"<h3 id='mined-{round_no}'>Mining round {round_no}: {len(kept)} hard negatives added{gone}, "
             f"{len(rows) - len(added) - held_gone.total()} held or over the cap{held_text}{to_review}</h3>",
             f"<p>Mined by {html.escape(bundle_dir.name)}: " + "; ".join(links) + "</p>"]
    if never := since[NEVER] + held[NEVER]:
        parts.append(f"<p>{never} of this record's decisions were {NEVER}: the round stopped before the catalog "
                     "committed them, so the next build does not learn from them.</p>")
    if added:
        # the pool file as downloaded: upright and on white, as the model scored it
        parts.append(gallery([(r["file"], f"{r['photo_id']}: taken for {r['accepted_as']} "
                               f"({float(r['score']):.2f})" + (f" · {r['since']}" if r["since"] else ""))
                              for r in added], "hard negatives", limits))
    return "\n".join(parts)
