"""Rules for picking the operating point under `train.max_unknown_accepted`, compared on saved scores.

The cap is met on the validation split's "other" images, which are few on a small dataset (39 in
one real-photo world: 5% of them is one image). This bench replays the product's calibration on
scores saved by `bench/recipes.py --scores DIR` (or taken here from a bundle and its dataset version)
and compares, on the same scores, how each rule picks its point, and what that point does on the
test split and the probes (an unseen kind). No training: every rule sees the same models.

Rules (all decided on validation rows only):
- `floor`:   the product until 2026-12-02: the first path point with accepted <= floor(cap * n);
- `nearest`: the cap rounded to the nearest image: accepted <= round(cap * n);
- `tenth`:   the product since: the cap met to within a tenth of itself (`metrics.allowed_other`);
- `tenth+classes`: as `tenth`, but the path stops before a point that takes a class below half of the
  validation recall it had at the start (the cap never switches a class off). Measured, not adopted.

With `--tolerances 0,0.01,0.02` it compares instead where the path starts: the F1 point that
`train.f1_tolerance` picks (the highest threshold within that much of each class's best validation F1)
and the capped point walked from it (`tenth`), one column pair per tolerance.

    .venv/bin/python bench/caps.py --scores /tmp/caps/scores [--cap 0.05]
    .venv/bin/python bench/caps.py --scores /tmp/caps/scores --tolerances 0,0.01,0.02
    .venv/bin/python bench/caps.py --bundle DATA/models/NAME --version DATA/datasets/NAME/vN --save x.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc_pipeline.model.metrics import (  # noqa: E402
    DEFAULT_F1_TOLERANCE, allowed_other, calibrate_thresholds, capping_path, evaluate, pick_capped,
    real_class_indices,
)


from recipes import operating_points, test_and_probe  # noqa: E402  (bench/ is first on sys.path)


def save_scores(bundle_dir: Path, version: Path, out: Path) -> None:
    """Score a bundle on its dataset version's valid, test and probe rows: bench/recipes.py's own
    scoring and .npz writer, so that both benches hand `compare` the same format."""
    from mlc_pipeline.manifest import read_manifest_frame
    from mlc_pipeline.model.bundle import load_bundle
    operating_points(load_bundle(bundle_dir), read_manifest_frame(version / "manifest.csv"), tta=False, save=out)


def recalls(probs: np.ndarray, targets: np.ndarray, thr: np.ndarray, real: list[int]) -> np.ndarray:
    pred = probs[:, real] >= thr[real]
    truth = targets[:, real].astype(bool)
    return (pred & truth).sum(0) / np.maximum(truth.sum(0), 1)


def pick(path, probs, targets, real, cap: float, rounding: str, keep_classes: bool) -> tuple[np.ndarray, int]:
    n = path[0][1]
    allowed = {"floor": allowed_other(cap, n, tolerance=0.0), "tenth": allowed_other(cap, n),
               "nearest": int(np.floor(cap * n + 0.5))}[rounding]
    start = recalls(probs, targets, path[0][2], real)
    chosen = path[0]
    for point in path:
        if keep_classes and (recalls(probs, targets, point[2], real) < 0.5 * start).any():
            break                       # this point switches a class (nearly) off: stop before it
        chosen = point
        if point[0] <= allowed:
            break
    return chosen[2], chosen[0]


RULES = {"floor": ("floor", False), "nearest": ("nearest", False), "tenth": ("tenth", False),
         "tenth+classes": ("tenth", True)}


def load_sigmoid(npz: Path):
    """(vocab, valid probs, valid targets, (test + probe probs, targets, probe mask)), or None for a
    softmax run (no thresholds to compare)."""
    z = np.load(npz)
    if str(z["head"]) != "sigmoid":
        return None
    return ([str(v) for v in z["vocab"]], z["valid"], z["t_valid"],
            test_and_probe(z["test"], z["t_test"], z["probe"]))


def test_point(evaluated, thr: np.ndarray, vocab: list[str]) -> dict:
    """Test macro F1, test "other" and probes accepted at thresholds `thr`."""
    m = evaluate(*evaluated[:2], thr, vocab, evaluated[2])
    return {"f1": round(m["macro_f1"], 3), "other": round(m["unknown_accepted"], 3),
            "probe": round(m["probe_accepted"], 3)}


def means_of(rows: list[dict], columns) -> dict:
    return {k: {m: float(np.mean([r[k][m] for r in rows])) for m in ("f1", "other", "probe")} for k in columns}


def compare(npz: Path, cap: float) -> dict:
    loaded = load_sigmoid(npz)
    if loaded is None:
        return {}
    vocab, valid, t_valid, evaluated = loaded
    real = real_class_indices(vocab)
    start = calibrate_thresholds(valid, t_valid, "per-class-f1", f1_tolerance=DEFAULT_F1_TOLERANCE)   # as training does
    path = capping_path(valid, t_valid, vocab, start=start)
    out = {"run": npz.stem, "valid_other": path[0][1]}
    for name, (rounding, keep) in RULES.items():
        thr, accepted = pick(path, valid, t_valid, real, cap, rounding, keep)
        out[name] = {"valid_accepted": accepted} | test_point(evaluated, thr, vocab)
    return out


def compare_tolerances(npz: Path, cap: float, tolerances: list[float]) -> dict:
    """Per tolerance: the F1 point (no cap) and the capped point walked from it, on test + probes."""
    loaded = load_sigmoid(npz)
    if loaded is None:
        return {}
    vocab, valid, t_valid, evaluated = loaded
    out = {"run": npz.stem}
    for tol in tolerances:
        start = calibrate_thresholds(valid, t_valid, "per-class-f1", f1_tolerance=tol)
        path = capping_path(valid, t_valid, vocab, start=start)
        capped = pick_capped(path, cap)     # as train.py picks
        out[f"f1@{tol:g}"] = test_point(evaluated, start, vocab)
        out[f"cap@{tol:g}"] = test_point(evaluated, capped, vocab)
    return out


def print_table(rows: list[dict], columns: list[str], title: str) -> dict:
    print(title)
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for r in rows:
        print(f"| {r['run']} | " + " | ".join(f"{r[k]['f1']:.3f} / {r[k]['other']:.1%} / {r[k]['probe']:.1%}"
                                          for k in columns) + " |")
    means = means_of(rows, columns)
    print("| **mean** | " + " | ".join(f"{v['f1']:.3f} / {v['other']:.1%} / {v['probe']:.1%}" for v in means.values()) + " |")
    return means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", help="a folder of .npz files from bench/recipes.py --scores")
    ap.add_argument("--cap", type=float, default=0.05)
    ap.add_argument("--tolerances", help="compare F1 tolerances (comma-separated) instead of cap rules")
    ap.add_argument("--bundle", help="score this bundle on --version and save to --save")
    ap.add_argument("--version")
    ap.add_argument("--save")
    args = ap.parse_args()
    if args.bundle:
        save_scores(Path(args.bundle), Path(args.version), Path(args.save))
        return
    files = sorted(Path(args.scores).glob("*.npz"))
    if args.tolerances:
        tolerances = [float(t) for t in args.tolerances.split(",")]
        rows = [r for r in (compare_tolerances(f, args.cap, tolerances) for f in files) if r]
        columns = [f"{kind}@{t:g}" for t in tolerances for kind in ("f1", "cap")]
        means = print_table(rows, columns, f"test macro F1 / test 'other' accepted / probes accepted; "
                            f"f1@T: the F1 point at tolerance T, cap@T: the {args.cap:g} cap walked from it")
        print(json.dumps({"cap": args.cap, "tolerances": tolerances, "rows": rows, "means": means}))
        return
    rows = [r for r in (compare(f, args.cap) for f in files) if r]
    print(f"cap {args.cap:g}: test macro F1 / test 'other' accepted / probes accepted (valid 'other' accepted)")
    print("| run | valid other | " + " | ".join(RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    for r in rows:
        cells = [f"{r[k]['f1']:.3f} / {r[k]['other']:.1%} / {r[k]['probe']:.1%} ({r[k]['valid_accepted']})" for k in RULES]
        print(f"| {r['run']} | {r['valid_other']} | " + " | ".join(cells) + " |")
    means = means_of(rows, RULES)
    print("| **mean** | | " + " | ".join(f"{v['f1']:.3f} / {v['other']:.1%} / {v['probe']:.1%}" for v in means.values()) + " |")
    print(json.dumps({"cap": args.cap, "rows": rows, "means": means}))


if __name__ == "__main__":
    main()
