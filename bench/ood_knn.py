"""Does a nearest-neighbour check in the model's feature space reject unseen kinds better than the
sigmoids alone? Replayed on whole jobs' models, without training.

The issue asks for an out-of-distribution score beyond per-class sigmoids where it measurably helps.
Energy scores and test-time flips were measured and not adopted (docs/training.md). This bench
measures the deep nearest-neighbour family (Sun et al., 2022, "Out-of-distribution detection with
deep nearest neighbors"), which the product already computes for mining (`model/likeness.py`): each
image's L2-normalised features against the training images' features.

For each job's models (`bench/realworld.py --work DIR` leaves round 0's and the mining round's
behind) it scores and embeds the train, valid, test and probe images of the version each trained
on, then compares, at the same cap on validation "other" (train.max_unknown_accepted) and
calibrated as train.py does:

- `sigmoids` (the product): per-class thresholds on the probabilities;
- `gate q`: a class may be accepted only when the image's mean cosine similarity to its K nearest
  training images of any class reaches the q-quantile of that figure over the validation class
  images (so about q of the class images are given up before the thresholds are calibrated);
- `margin gate q`: the same per class, on likeness.py's margin (similarity to the class's training
  images minus that to the training "other" images);
- `fused w`: the class score p^(1-w) * u^w, where u ranks the class margin among the validation
  images of the class (w = 1: the margin alone decides, the "other" output still vetoes).

    .venv/bin/python bench/ood_knn.py /tmp/rw9/insects-0 /tmp/rw9/pets-1 ...

It prints, per rule, the means over models of test macro F1 / test "other" accepted / probes accepted,
and in how many models the rule accepts fewer probes than the sigmoids, and at what F1.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mlc_pipeline.manifest import read_manifest_frame  # noqa: E402
from mlc_pipeline.model.likeness import K, knn_similarity, reference_rows  # noqa: E402
from mlc_pipeline.model.metrics import fpr_at_tpr95, real_class_indices, targets_from_labels  # noqa: E402
from rounds import calibrated, shipped_at, test_figures  # noqa: E402

CAP = 0.05
QUANTILES = (0.02, 0.05, 0.10)


def load_job(job: Path, tag: str) -> dict | None:
    """A round's (`tag`: r0, r1) probabilities and features for the valid/test/probe rows of the
    dataset version it trained on, and that version's training images' features per class and for
    "other" (round 1's include its mined negatives, as the product's would)."""
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.predict import score_and_embed
    dirs = sorted(glob.glob(str(job / "data" / "models" / f"*-{tag}-sigmoid-other-class-*")))
    if not dirs:
        return None
    bundle = load_bundle(dirs[0])
    df = read_manifest_frame(bundle.meta["manifest"])
    rows = df[df["split"].isin(["valid", "test", "probe"])].reset_index(drop=True)
    probs, feats, _ = score_and_embed(bundle, list(rows["abs_path"]))
    # the training references mining's likeness hold uses (sampled the same way)
    train_class, train_other, _ = reference_rows(bundle.meta["manifest"], bundle.classes)
    order = [train_class[c] for c in bundle.classes] + [train_other]
    _, ref_feats, _ = score_and_embed(bundle, [str(p) for paths in order for p in paths])
    ends = np.cumsum([len(paths) for paths in order])
    ref = [f[~np.isnan(f).any(axis=1)] for f in np.split(ref_feats, ends[:-1])]
    ref_other = ref.pop()
    targets = targets_from_labels([[] if s == "probe" else labs for labs, s in zip(rows["label_list"], rows["split"])],
                                  bundle.vocab)
    feats = np.nan_to_num(feats)
    sims = np.stack([knn_similarity(feats, r, K) for r in ref], axis=1)
    sim_other = knn_similarity(feats, ref_other, K) if len(ref_other) else np.zeros(len(rows))
    return {"job": f"{job.name} {tag}", "split": rows["split"].to_numpy(), "vocab": bundle.vocab, "targets": targets,
            "probs": np.nan_to_num(probs), "sims": sims, "margins": sims - sim_other[:, None]}


def gated(job: dict, score: np.ndarray, q: float) -> np.ndarray:
    """Probabilities with each real class zeroed where `score` (per image, or per image and class)
    falls below its q-quantile over the validation images of that class."""
    probs = job["probs"].copy()
    real = real_class_indices(job["vocab"])
    va = job["split"] == "valid"
    for j, col in enumerate(real):
        s = score if score.ndim == 1 else score[:, j]
        positives = va & (job["targets"][:, col] > 0)
        if positives.any():
            probs[s < np.quantile(s[positives], q), col] = 0.0
    return probs


def fused(job: dict, weight: float) -> np.ndarray:
    """Each real class's score made of its probability and its margin, as p^(1-w) * u^w, where u is
    the margin's rank among the validation images of that class (its empirical CDF, 0..1): w = 0.5
    the geometric mean, w = 1 the margin alone. The thresholds are then calibrated on this score."""
    probs = job["probs"].copy()
    va = job["split"] == "valid"
    for j, col in enumerate(real_class_indices(job["vocab"])):
        ref = np.sort(job["margins"][va & (job["targets"][:, col] > 0), j])
        if not len(ref):
            continue
        u = np.searchsorted(ref, job["margins"][:, j], side="right") / len(ref)
        probs[:, col] = probs[:, col] ** (1 - weight) * u ** weight
    return probs


def fpr_at_95(job: dict, score: np.ndarray) -> float:
    """Share of probes scoring at least the score that keeps 95% of the test class images: how well
    a per-image score ranks the unseen kind below the classes, with no threshold chosen."""
    real = real_class_indices(job["vocab"])
    positives = (job["split"] == "test") & (job["targets"][:, real].sum(axis=1) > 0)
    probes = job["split"] == "probe"
    return fpr_at_tpr95(score, positives, probes)


def figures(job: dict, probs: np.ndarray) -> tuple[float, float, float]:
    return test_figures(job, probs, calibrated(job, probs, [CAP])[CAP])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", nargs="+", help="bench/realworld.py --work folders")
    ap.add_argument("--rounds", nargs="+", default=["r0", "r1"], help="the rounds' models to replay (default both)")
    args = ap.parse_args()
    jobs = [j for j in (load_job(Path(p), tag) for p in args.jobs for tag in args.rounds) if j is not None]
    rules = {"sigmoids (the product)": lambda j: j["probs"]}
    for q in QUANTILES:
        rules[f"gate {q}"] = lambda j, q=q: gated(j, j["sims"].max(axis=1), q)
        rules[f"margin gate {q}"] = lambda j, q=q: gated(j, j["margins"], q)
    for w in (0.25, 0.5, 0.75, 1.0):
        rules[f"fused w={w}"] = lambda j, w=w: fused(j, w)
    got = {name: [figures(j, rule(j)) for j in jobs] for name, rule in rules.items()}
    base = np.array(got["sigmoids (the product)"])
    print(f"\n## {len(jobs)} models, cap {CAP}: test macro F1 / test other / probes accepted (means)")
    print("| rule | means | probes fewer / equal / more than the sigmoids | F1 higher / lower |")
    print("|---|---|---|---|")
    for name, rows in got.items():
        rows = np.array(rows)
        m = rows.mean(axis=0)
        fewer, more = (rows[:, 2] < base[:, 2] - 1e-9).sum(), (rows[:, 2] > base[:, 2] + 1e-9).sum()
        higher, lower = (rows[:, 0] > base[:, 0] + 1e-9).sum(), (rows[:, 0] < base[:, 0] - 1e-9).sum()
        print(f"| {name} | {m[0]:.3f} / {m[1]:.1%} / {m[2]:.1%} | {fewer} / {len(rows) - fewer - more} / {more} "
              f"| {higher} / {lower} |")
    # the model each job would ship under a rule (bench/rounds.py's replay of pipeline's rule)
    by_job: dict[str, dict[str, int]] = {}
    for i, job in enumerate(jobs):
        name, tag = job["job"].rsplit(" ", 1)
        by_job.setdefault(name, {})[tag] = i
    print("\n| rule | shipped, one model per job: means | probes fewer / equal / more |\n|---|---|---|")
    ship_base = None
    for name, rows in got.items():
        shipped = np.array([shipped_at({tag: {CAP: rows[i]} for tag, i in tags.items()}, CAP)
                            for tags in by_job.values()])
        ship_base = shipped if ship_base is None else ship_base
        m = shipped.mean(axis=0)
        fewer, more = (shipped[:, 2] < ship_base[:, 2] - 1e-9).sum(), (shipped[:, 2] > ship_base[:, 2] + 1e-9).sum()
        print(f"| {name} | {m[0]:.3f} / {m[1]:.1%} / {m[2]:.1%} | {fewer} / {len(shipped) - fewer - more} / {more} |")
    real = lambda j: real_class_indices(j["vocab"])  # noqa: E731
    scores = {"max class probability": lambda j: j["probs"][:, real(j)].max(axis=1),
              "max similarity": lambda j: j["sims"].max(axis=1),
              "max margin": lambda j: j["margins"].max(axis=1)}
    print("\n| per-image score | FPR@95 on probes (mean over jobs) |\n|---|---|")
    for name, score in scores.items():
        print(f"| {name} | {np.mean([fpr_at_95(j, score(j)) for j in jobs]):.1%} |")
    for j, job in enumerate(jobs):
        print(f"\n{job['job']}: " + "; ".join(f"{n} {got[n][j][0]:.3f}/{got[n][j][1]:.1%}/{got[n][j][2]:.1%}"
                                                      for n in got))
    return 0


if __name__ == "__main__":
    sys.exit(main())
