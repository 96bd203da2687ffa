"""Would averaging two trainings beat one? A replay on saved scores, no training.

`bench/recipes.py --scores DIR` keeps each training's valid, test and probe scores. Trainings of the
same recipe on the same world split that differ only in their training `seed` are grouped, and for
each pair of seeds this compares, at the product's operating point (per-class F1 point, then the
cap on validation "other"):

- each member alone (what one training ships), and their mean (the baseline: one training);
- the ensemble: each output's probability averaged over the two networks (`--average logits`:
  its logit, which is what one network wrapping both would output), then scored as the product
  scores a class (`sigmoid(class) x (1 - sigmoid(other))` for `other_mode: class`), and calibrated
  on the averaged validation scores like a single model.

An ensemble costs two trainings and two forward passes a picture, so it is the question "what would
twice the compute buy if spent on a second network", not a free gain.

    .venv/bin/python bench/ensemble.py --scores /tmp/ls/scores [--cap 0.05]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc_pipeline.model.losses import PLAIN_SIGMOID  # noqa: E402
from mlc_pipeline.model.metrics import real_class_indices  # noqa: E402

# bench/ is first on sys.path: its replays share one calibration (scores.evaluated_at_cap)
from scores import SAVED_NAME, _logit, _sigmoid, evaluated_at_cap, logits_of, scored  # noqa: E402

PARTS = ("valid", "test", "probe")


def run_key(npz: Path) -> tuple[str, str, int] | None:
    """(world split, recipe without its seed, training seed) from recipes.py's file names:
    insects-s0-<recipe with '=' dropped and ',' as '_'>-<ns>.npz; no `seed` in the recipe is 42."""
    m = SAVED_NAME.match(npz.stem)
    if not m:
        return None
    items = m["recipe"].split("_")
    seeds = [int(i[4:]) for i in items if re.fullmatch(r"seed\d+", i)]
    recipe = "_".join(i for i in items if not re.fullmatch(r"seed\d+", i))
    return f"{m['world']} {m['seed']}", recipe, seeds[0] if seeds else 42


def probabilities(z) -> tuple[dict, list[str], str]:
    """Each output's own sigmoid (class and "other" alike), undoing the saved class score."""
    vocab = [str(v) for v in z["vocab"]]
    saved = str(z["class_score"]) if "class_score" in z.files else PLAIN_SIGMOID
    return {p: _sigmoid(logits_of(z[p], vocab, saved)) for p in PARTS}, vocab, saved


def average(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    if how == "probabilities":
        return (a + b) / 2
    return _sigmoid((_logit(a) + _logit(b)) / 2)


def operating_point(probs: dict, z, vocab: list[str], class_score: str, cap: float) -> dict:
    rule = "sigmoid" if class_score == PLAIN_SIGMOID else "times"
    s = {p: scored(_logit(probs[p]), vocab, rule) for p in PARTS}
    m = evaluated_at_cap(s, z, vocab, cap)
    fpr = m["fpr95_probe"]
    return {"f1": round(m["macro_f1"], 3), "other": round(m["unknown_accepted"], 3),
            "probe": round(m["probe_accepted"], 3), "fpr95": None if fpr is None else round(fpr, 3),
            **ranking(s["test"], z["t_test"], real_class_indices(vocab))}


def ranking(test: np.ndarray, truth: np.ndarray, real: list[int]) -> dict:
    """Threshold-free, on the test rows the macro F1 is computed on (probes excluded): each class's
    average precision, and the F1 it would reach with its threshold tuned on the test rows themselves
    (an optimistic ceiling for any calibration), both averaged over the classes."""
    from sklearn.metrics import average_precision_score, precision_recall_curve
    ap, best = [], []
    for i in real:
        pos = truth[:, i] == 1
        ap.append(average_precision_score(pos, test[:, i]))
        precision, recall, _ = precision_recall_curve(pos, test[:, i])
        best.append(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))
    return {"ap": round(float(np.mean(ap)), 3), "best_f1": round(float(np.mean(best)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", action="append", required=True, help="a folder of bench/recipes.py .npz files")
    ap.add_argument("--cap", type=float, default=0.05)
    ap.add_argument("--average", choices=("probabilities", "logits"), default="probabilities")
    args = ap.parse_args()
    groups: dict[tuple[str, str], dict[int, Path]] = {}
    for folder in args.scores:
        for npz in sorted(Path(folder).glob("*.npz")):
            key = run_key(npz)
            if key is None or npz.stem.endswith("-tta"):
                continue
            split, recipe, seed = key
            groups.setdefault((recipe, split), {})[seed] = npz
    metrics = ("f1", "other", "probe", "fpr95", "ap", "best_f1")
    # fpr95 is None (NaN in means) for a world without probes: said as n/a, not a crash
    pct = lambda x: "n/a" if x is None or np.isnan(x) else f"{x:.1%}"   # noqa: E731
    cell = lambda r: (f"{r['f1']:.3f} / {r['other']:.1%} / {r['probe']:.1%} ({pct(r['fpr95'])}); "   # noqa: E731
                      f"AP {r['ap']:.3f}, best F1 {r['best_f1']:.3f}")
    results = []
    for (recipe, split), by_seed in sorted(groups.items()):
        for a, b in itertools.combinations(sorted(by_seed), 2):
            za, zb = np.load(by_seed[a]), np.load(by_seed[b])
            if str(za["head"]) != "sigmoid" or za["valid"].shape != zb["valid"].shape:
                continue
            pa, vocab, class_score = probabilities(za)
            pb, _, _ = probabilities(zb)
            single = [operating_point(p, za, vocab, class_score, args.cap) for p in (pa, pb)]
            mean_single = {k: mean_of([s[k] for s in single]) for k in metrics}
            both = operating_point({p: average(pa[p], pb[p], args.average) for p in PARTS}, za, vocab,
                                   class_score, args.cap)
            results.append({"recipe": recipe, "split": split, "seeds": [a, b], "single": single,
                            "mean_single": mean_single, "ensemble": both})
    print(f"{args.average} averaged; cap {args.cap:g}: test macro F1 / test 'other' accepted / probes accepted "
          f"(FPR@95 on probes); mean per-class average precision and test-tuned F1 on the test rows")
    print("| recipe | split | seeds | one training (mean of the two) | the two averaged | F1 gain |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['split']} | {r['seeds'][0]}+{r['seeds'][1]} | {cell(r['mean_single'])} "
              f"| {cell(r['ensemble'])} | {r['ensemble']['f1'] - r['mean_single']['f1']:+.3f} |")
    for recipe in sorted({r["recipe"] for r in results}):
        rows = [r for r in results if r["recipe"] == recipe]
        one = {k: mean_of([r["mean_single"][k] for r in rows]) for k in metrics}
        two = {k: mean_of([r["ensemble"][k] for r in rows]) for k in metrics}
        better = sum(r["ensemble"]["f1"] > max(s["f1"] for s in r["single"]) for r in rows)
        print(f"{recipe}: {len(rows)} pairs; one training {cell(one)}; two averaged {cell(two)}; "
              f"F1 x{two['f1'] / one['f1']:.3f}; the pair beats its better member in {better} of {len(rows)}")
    print(json.dumps(results))


def mean_of(values: list) -> float | None:
    """The mean of the values there are (None: a figure with nothing to measure, e.g. no probes)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


if __name__ == "__main__":
    main()
