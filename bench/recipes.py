"""Training recipes measured on real photos (shared/fixtures), the evidence behind the defaults.

Builds small dataset versions straight from the fixture folders (no collection: this measures
training only), trains the product's code path (`train_model`) once per recipe, scores valid, test,
"other" and probe images, and then compares operating points on the same scores:

- `f1`: today's per-class F1 calibration (highest threshold within f1_tolerance of the best);
- `capX`: thresholds that accept at most X of the valid "other" images (`calibrate_capped`);
- each with and without test-time flips (TTA).

Worlds (each a user's config in miniature; probes are a kind under no query):
- pets:    classes cat, dog;     other ants;            probe bees
- insects: classes ants, bees;   other dogs (half);     probe cats   (pool: the other half of dogs)

    .venv/bin/python bench/recipes.py --world insects --recipe arch=mlcnet,image_size=64 --recipe ...

`--train-fraction 0.5` trains on a seeded half of each set's training images (valid, test and probes
unchanged); with `epochs` set so that as many images are seen as with all of them, it asks whether
more photos would help (the epochs rule alone stops at 120 epochs).

`--recipe ...,max_minutes=5` trains each recipe within the product's time budget (FitToBudget);
`null` (the default) trains every epoch.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc_pipeline.model.metrics import calibrate_thresholds, evaluate, targets_from_labels  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
WORLDS = {
    # name: {set: (folder, label or "" for other, count or None for all)}
    "pets": {"cat": ("pets/cat", "cat", 300), "dog": ("pets/dog", "dog", 300),
             "other": ("hymenoptera/ants", "", None), "probe": ("hymenoptera/bees", "", None)},
    "insects": {"ants": ("hymenoptera/ants", "ants", None), "bees": ("hymenoptera/bees", "bees", None),
                "other": ("pets/dog", "", 300), "probe": ("pets/cat", "", 300)},
}
SPLIT = (("train", 0.7), ("valid", 0.15), ("test", 0.15))


def build_world(name: str, out: Path, seed: int = 0) -> Path:
    """A dataset folder with manifest.csv: class and "other" images split 70/15/15, probes apart."""
    if (out / "manifest.csv").exists():
        return out / "manifest.csv"
    rng = random.Random(seed)
    rows = []
    for set_name, (folder, label, count) in WORLDS[name].items():
        files = sorted((FIXTURES / folder).glob("*.jpg"))
        rng.shuffle(files)
        files = files[:count] if count else files
        (out / set_name).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            dest = out / set_name / f.name
            shutil.copyfile(f, dest)
            if set_name == "probe":
                split = "probe"
            else:
                frac = i / len(files)
                split = "train" if frac < 0.7 else "valid" if frac < 0.85 else "test"
            rows.append({"path": f"{set_name}/{f.name}", "labels": label, "split": split, "query": set_name})
    return write_manifest(out / "manifest.csv", rows)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    import csv
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "labels", "split", "query"])
        w.writeheader()
        w.writerows(rows)
    return path


def fewer_train_images(manifest: Path, fraction: float, seed: int) -> Path:
    """A copy of the manifest that keeps `fraction` of each set's train rows (drawn with `seed`)."""
    import csv
    out = manifest.with_name(f"manifest-train{fraction:g}.csv")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(seed)
    keep = []
    for query in sorted({r["query"] for r in rows}):
        train = [r for r in rows if r["query"] == query and r["split"] == "train"]
        rng.shuffle(train)
        keep += train[:round(len(train) * fraction)]
    kept = {r["path"] for r in keep}
    return write_manifest(out, [r for r in rows if r["split"] != "train" or r["path"] in kept])


def scores(bundle, paths: list[str], tta: bool) -> np.ndarray:
    from mlc_pipeline.model.predict import score_paths
    probs = score_paths(bundle, paths)
    if not tta:
        return probs
    from PIL import Image
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        flipped = []
        for i, p in enumerate(paths):
            q = Path(tmp) / f"{i}.png"
            Image.open(p).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(q)
            flipped.append(str(q))
        return (probs + score_paths(bundle, flipped)) / 2


def set_picture_size(bundle, size: int) -> None:
    """Validation and prediction pictures at `size` px (the crop/resize transforms' size, as
    learner.ProgressiveResize sets it); the network pools globally, so any size goes through."""
    from mlc_pipeline.model.learner import sizing_transforms
    for t in sizing_transforms(bundle.learn.dls):
        t.size = (size, size)


def operating_points(bundle, df, tta: bool, caps=(0.0, 0.02, 0.05, 0.1), save: Path | None = None) -> dict:
    """Operating points on the same scores; `save`: also write those scores (valid, test, probe, with
    targets and vocab) to this .npz, so that calibration rules can be compared later without retraining."""
    from mlc_pipeline.model.metrics import calibrate_capped
    vocab = bundle.vocab
    out = {}
    parts = {s: df[df["split"] == s].reset_index(drop=True) for s in ("valid", "test", "probe")}
    p = {s: scores(bundle, list(parts[s]["abs_path"]), tta) for s in parts}
    t_valid = targets_from_labels(list(parts["valid"]["label_list"]), vocab)
    t_test = targets_from_labels(list(parts["test"]["label_list"]), vocab)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        np.savez(save, valid=p["valid"], t_valid=t_valid, test=p["test"], t_test=t_test, probe=p["probe"],
                 vocab=np.array(vocab), head=np.array(bundle.head),
                 class_score=np.array(bundle.meta.get("class_score", "sigmoid(class)")))   # bench/scores.py
    probs_eval, targ_eval, mask = test_and_probe(p["test"], t_test, p["probe"])
    out["ood_fpr95_probe"] = ood_scores(probs_eval, targ_eval, mask, vocab)
    if bundle.head == "softmax":
        m = evaluate(probs_eval, targ_eval, None, vocab, mask, head="softmax")
        out["argmax"] = summary(m)
        return out
    rules = {"f1": calibrate_thresholds(p["valid"], t_valid, "per-class-f1", f1_tolerance=0.02),
             "f1max": calibrate_thresholds(p["valid"], t_valid, "per-class-f1", f1_tolerance=0.0)}
    for cap in caps:
        rules[f"cap{cap:g}"] = calibrate_capped(p["valid"], t_valid, vocab, cap)
    for name, thr in rules.items():
        m = evaluate(probs_eval, targ_eval, thr, vocab, mask)
        out[name] = summary(m) | {"thresholds": [round(float(t), 3) for t in thr]}
    return out


def test_and_probe(test: np.ndarray, t_test: np.ndarray, probe: np.ndarray):
    """What every operating point is scored on: test rows, then probes (no label), and a probe mask."""
    probs = np.vstack([test, probe])
    targets = np.vstack([t_test, np.zeros((len(probe), t_test.shape[1]), dtype=np.int8)])
    mask = np.r_[np.zeros(len(test), bool), np.ones(len(probe), bool)]
    return probs, targets, mask


def ood_scores(probs, targets, probe, vocab) -> dict:
    """Threshold-free: share of probes scoring above the 5th percentile of labelled test images,
    for max-probability (what per-class thresholds use) and joint energy (sum of softplus logits)."""
    from mlc_pipeline.model.metrics import fpr_at_tpr95, real_class_indices
    real = real_class_indices(vocab)
    p = np.clip(probs[:, real], 1e-6, 1 - 1e-6)
    logits = np.log(p / (1 - p))
    labelled = targets[:, real].any(axis=1) & ~probe
    out = {}
    for name, score in (("max_prob", p.max(axis=1)), ("joint_energy", np.log1p(np.exp(logits)).sum(axis=1)),
                        ("logsumexp", np.log(np.exp(logits).sum(axis=1)))):
        rate = fpr_at_tpr95(score, labelled, probe)
        out[name] = None if rate is None else round(rate, 3)
    return out


def summary(m: dict) -> dict:
    return {"f1": round(m["macro_f1"], 3), "other": m["unknown_accepted"], "probe": m["probe_accepted"],
            "fpr95_probe": m["fpr95_probe"]}


def parse_recipe(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        if value in ("true", "false"):
            value = value == "true"
        elif value == "null":     # e.g. max_minutes=null: every epoch, however long ("none" stays a
                                  # word: pretrained=none, as the documented commands write it)
            value = None
        out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=sorted(WORLDS), default="insects")
    ap.add_argument("--recipe", action="append", required=True, help="TrainConfig overrides, k=v,k=v")
    ap.add_argument("--seed", type=int, default=0, help="world split seed")
    ap.add_argument("--work", default="/tmp/recipes")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--scores", default=None, help="keep each run's scores as an .npz in this folder "
                    "(bench/caps.py compares calibration rules on them)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="train on this seeded share of each set's train images (the rest unused)")
    ap.add_argument("--no-tta", action="store_true", help="skip the test-time-flip scoring (half the time)")
    ap.add_argument("--test-sizes", default="", help="also score (and calibrate) each bundle with its validation "
                    "and prediction pictures at these sizes, e.g. 144,160 (train-test resolution: FixRes)")
    args = ap.parse_args()

    import torch
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.train import TrainConfig, train_model
    from mlc_pipeline.manifest import read_manifest_frame

    work = Path(args.work)
    manifest = build_world(args.world, work / f"{args.world}-s{args.seed}", args.seed)
    if not 0 < args.train_fraction <= 1:
        ap.error("--train-fraction must be in (0, 1]")
    if args.train_fraction < 1:
        manifest = fewer_train_images(manifest, args.train_fraction, args.seed)
    df = read_manifest_frame(manifest)
    classes = sorted({lab for labs in df["label_list"] for lab in labs})
    for text in args.recipe:
        overrides = parse_recipe(text)
        cfg = TrainConfig(**overrides)
        bundle_dir = work / "bundles" / f"{args.world}-s{args.seed}-{text.replace('=', '').replace(',', '_')}-{time.time_ns()}"
        start = time.monotonic()
        result = train_model(manifest, bundle_dir, cfg, classes=classes)
        seconds = time.monotonic() - start
        bundle = load_bundle(bundle_dir)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        line = {"world": args.world, "seed": args.seed, "recipe": text, "train_fraction": args.train_fraction,
                "device": device, "train_s": round(seconds, 1),
                "img_s": result.images_per_second, "n_train": bundle.meta["n_train"],
                "epochs_run": len(result.history), "stopped_early": result.stopped_early}
        for tta in (False,) if args.no_tta else (False, True):
            save = (Path(args.scores) / f"{bundle_dir.name}{'-tta' if tta else ''}.npz") if args.scores else None
            line["tta" if tta else "plain"] = operating_points(bundle, df, tta, save=save)
        for size in [int(v) for v in args.test_sizes.split(",") if v]:
            set_picture_size(bundle, size)
            line.setdefault("at_size", {})[str(size)] = operating_points(bundle, df, False)
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        shutil.rmtree(bundle_dir)


if __name__ == "__main__":
    main()
