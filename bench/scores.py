"""How a model with an "other" output should score its classes, compared on saved scores.

`other_mode: class` trains one output per class and one for "other". What a class's score is, and
so what the thresholds and the cap act on, is a choice made after training. This bench replays the
product's calibration (per-class F1 point, then `train.max_unknown_accepted`) on scores saved by
`bench/recipes.py --scores DIR`, for each way of scoring, on the same networks:

- `sigmoid`:   sigmoid(logit_class); the "other" output is a training signal only (the product
               until 2026-12-02);
- `times`:     sigmoid(logit_class) x (1 - sigmoid(logit_other)): the class, and not "other" (the
               product since 2026-12-02: model/losses.py);
- `against`:   sigmoid(logit_class - logit_other), the class's odds against "other".

Rows of models trained with `other_mode: negative` (no "other" output) on the same world split are
shown beside them, scored as the product scores them (sigmoid). No training: every rule sees the same
networks. Which score a saved file holds is in its `class_score` (files without one hold sigmoids).

    .venv/bin/python bench/scores.py --scores /tmp/caps/scores --scores /tmp/caps2/scores [--cap 0.05]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc_pipeline.model.losses import CLASS_AND_NOT_OTHER, PLAIN_SIGMOID  # noqa: E402
from mlc_pipeline.model.metrics import (  # noqa: E402
    DEFAULT_F1_TOLERANCE, OTHER, calibrate_capped, calibrate_thresholds, evaluate, real_class_indices,
)

from recipes import test_and_probe  # noqa: E402  (bench/ is first on sys.path)

EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def logits_of(scores: np.ndarray, vocab: list[str], class_score: str) -> np.ndarray:
    """The network's logits back from saved scores (each saved score is invertible)."""
    if class_score not in (CLASS_AND_NOT_OTHER, PLAIN_SIGMOID):
        raise ValueError(f"unknown class_score {class_score!r}")
    scores = scores.astype(np.float64)
    if class_score == CLASS_AND_NOT_OTHER:
        o = vocab.index(OTHER)
        for i in real_class_indices(vocab):
            scores[:, i] = scores[:, i] / np.maximum(1 - scores[:, o], EPS)
    return _logit(scores)


def scored(logits: np.ndarray, vocab: list[str], rule: str) -> np.ndarray:
    p = _sigmoid(logits)
    if rule == "sigmoid" or OTHER not in vocab:
        return p
    o = vocab.index(OTHER)
    out = p.copy()
    for i in real_class_indices(vocab):
        out[:, i] = p[:, i] * (1 - p[:, o]) if rule == "times" else _sigmoid(logits[:, i] - logits[:, o])
    return out


RULES = ("sigmoid", "times", "against")

# bench/recipes.py's score files: <world>-s<split seed>-<recipe, '=' dropped, ',' as '_'>-<ns>.npz
SAVED_NAME = re.compile(r"(?P<world>[a-z]+)-s(?P<seed>\d+)-(?P<recipe>.*)-\d+$")


def run_key(npz: Path) -> tuple[str, str] | None:
    """(world split, other_mode) from bench/recipes.py's file names: insects-s0-<recipe>-<ns>.npz."""
    m = SAVED_NAME.match(npz.stem)
    if not m:
        return None
    mode = "class" if "other_modeclass" in m["recipe"] else "negative"
    return f"{m['world']} {m['seed']}", mode


def point(z, vocab: list[str], rule: str, cap: float) -> dict:
    saved = str(z["class_score"]) if "class_score" in z.files else PLAIN_SIGMOID
    s = {part: scored(logits_of(z[part], vocab, saved), vocab, rule) for part in ("valid", "test", "probe")}
    m = evaluated_at_cap(s, z, vocab, cap)
    return {"f1": round(m["macro_f1"], 3), "other": round(m["unknown_accepted"], 3),
            "probe": round(m["probe_accepted"], 3)}


def evaluated_at_cap(s: dict, z, vocab: list[str], cap: float) -> dict:
    """The product's calibration replayed on scored valid/test/probe arrays (`s`, targets in `z`):
    the per-class F1 point, then the cap on validation "other"; `evaluate`'s metrics on test + probes."""
    start = calibrate_thresholds(s["valid"], z["t_valid"], "per-class-f1", f1_tolerance=DEFAULT_F1_TOLERANCE)
    thr = calibrate_capped(s["valid"], z["t_valid"], vocab, cap, start=start)
    probs, targets, mask = test_and_probe(s["test"], z["t_test"], s["probe"])
    return evaluate(probs, targets, thr, vocab, mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", action="append", required=True, help="a folder of bench/recipes.py .npz files")
    ap.add_argument("--cap", type=float, default=0.05)
    args = ap.parse_args()
    table: dict[str, dict[str, dict]] = {}
    for folder in args.scores:
        for npz in sorted(Path(folder).glob("*.npz")):
            key = run_key(npz)
            z = np.load(npz)
            if key is None or str(z["head"]) != "sigmoid":
                continue
            split, mode = key
            vocab = [str(v) for v in z["vocab"]]
            if mode == "negative":
                table.setdefault(split, {})["negative"] = point(z, vocab, "sigmoid", args.cap)
            else:
                for rule in RULES:
                    table.setdefault(split, {})[f"class, {rule}"] = point(z, vocab, rule, args.cap)
    columns = ["negative"] + [f"class, {r}" for r in RULES]
    paired = [s for s in sorted(table) if all(c in table[s] for c in columns)]
    print(f"cap {args.cap:g}: test macro F1 / test 'other' accepted / probes accepted; "
          f"{len(paired)} world splits with every column")
    print("| world, seed | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    cell = lambda r: f"{r['f1']:.3f} / {r['other']:.1%} / {r['probe']:.1%}"   # noqa: E731
    for s in paired:
        print(f"| {s} | " + " | ".join(cell(table[s][c]) for c in columns) + " |")
    means = {c: {m: float(np.mean([table[s][c][m] for s in paired])) for m in ("f1", "other", "probe")}
             for c in columns}
    print("| **mean** | " + " | ".join(cell(means[c]) for c in columns) + " |")
    base = "negative"
    wins = {c: {"f1": sum(table[s][c]["f1"] > table[s][base]["f1"] for s in paired),
                "probe": sum(table[s][c]["probe"] < table[s][base]["probe"] for s in paired)} for c in columns[1:]}
    print("against 'negative', splits with higher F1 / fewer probes: "
          + "; ".join(f"{c}: {w['f1']} / {w['probe']}" for c, w in wins.items()))
    print(json.dumps({"cap": args.cap, "table": table, "means": means, "wins": wins}))


if __name__ == "__main__":
    main()
