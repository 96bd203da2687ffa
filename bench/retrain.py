"""A mining round's retrain: continuing the round's network (mine.retrain: continue) against training a
new one from scratch (the baseline), on the same round-0 bundle and the same round-1 dataset version.

Point it at a data root where `mlc run` (or bench/realworld.py --work DIR) ran one mining round:

    .venv/bin/python bench/retrain.py --data /tmp/rw-final/data --seeds 0 1 2

It trains, per seed, the continuation (`mine.retrain_epochs`, default a third of round 0's) and a
from-scratch model (the recipe's epochs) on the round-1 version, and prints macro F1, test "other"
and probe acceptance at the default cap, the threshold-free probe FPR@95, seconds, and the means
and ratios. Results: docs/training.md, "Retraining".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a data root with a round-0 bundle and a round-1 version")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="continuation epochs (default: a third of round 0's)")
    ap.add_argument("--out", help="keep the bundles here (default: a temporary folder)")
    ap.add_argument("--bundle", help="the round-0 bundle (default: round 0 of the head models/LATEST has)")
    args = ap.parse_args()

    import logging
    logging.basicConfig(level=logging.WARNING)
    from mlc_pipeline.model.options import TrainConfig
    from mlc_pipeline.model.train import train_model

    data = Path(args.data)
    parent = Path(args.bundle) if args.bundle else round0_product(data / "models")
    if parent is None:
        print(f"no round-0 product bundle under {data / 'models'}", file=sys.stderr)
        return 2
    meta = json.loads((parent / "bundle.json").read_text())
    # Both sides train with the run's own settings, as round 0 recorded them (head, other_mode, cap...);
    # the recipe's fields are resolved again, as mine.retrain does for the round-1 data (the
    # continuation takes the parent's architecture, size and augmentation: weights.resolve_continued).
    from mlc_pipeline.model.weights import RECIPE_FIELDS
    settings = {k: v for k, v in meta["config"].items()
                if k in TrainConfig.model_fields and k not in (*RECIPE_FIELDS, "arch", "init_from", "seed")}
    versions = data / "datasets" / meta["dataset_version"].split("/")[0]
    r0_version = meta["dataset_version"].split("/")[1]
    later = sorted((p for p in versions.glob("v*") if p.name != r0_version and (p / "manifest.csv").is_file()),
                   key=lambda p: int(p.name[1:]))
    if not later:
        print(f"no dataset version after {r0_version} under {versions}: run a mining round first", file=sys.stderr)
        return 2
    manifest = later[0] / "manifest.csv"
    out = Path(args.out or tempfile.mkdtemp(prefix="mlc-retrain-"))
    print(f"round 0: {parent.name}; round-1 data: {manifest}")

    def row(result) -> dict:
        t = result.metrics["test"]
        return {"f1": t["macro_f1"], "other": t["unknown_accepted"] or 0.0, "probe": t["probe_accepted"] or 0.0,
                "fpr95": t.get("fpr95_probe"), "seconds": result.train_seconds}

    r0_test = json.loads((parent / "metrics.json").read_text())["test"]
    print(f"round 0 itself: macro F1 {r0_test['macro_f1']:.3f}, probes {100 * (r0_test['probe_accepted'] or 0):.1f}%, "
          f"FPR@95 {r0_test.get('fpr95_probe')}")
    results: dict[str, list[dict]] = {"continued": [], "from scratch": []}
    print("| retrain | seed | macro F1 | test other | probes | probe FPR@95 | s |\n|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for name, cfg in (("continued", TrainConfig(**settings, init_from=str(parent), epochs=args.epochs, seed=seed)),
                          ("from scratch", TrainConfig(**settings, seed=seed))):
            r = row(train_model(manifest, out / f"{name.replace(' ', '-')}-{seed}", cfg, overwrite=True))
            results[name].append(r)
            fpr = "n/a" if r["fpr95"] is None else f"{r['fpr95']:.2f}"
            print(f"| {name} | {seed} | {r['f1']:.3f} | {100 * r['other']:.1f}% | {100 * r['probe']:.1f}% "
                  f"| {fpr} | {r['seconds']:.0f} |", flush=True)
    mean = {n: {k: statistics.fmean(x[k] for x in rs if x[k] is not None) for k in rs[0]} for n, rs in results.items()}
    c, s = mean["continued"], mean["from scratch"]
    print(f"\nmeans: continued F1 {c['f1']:.3f}, probes {100 * c['probe']:.1f}%, FPR@95 {c['fpr95']:.3f}, {c['seconds']:.0f} s; "
          f"from scratch F1 {s['f1']:.3f}, probes {100 * s['probe']:.1f}%, FPR@95 {s['fpr95']:.3f}, {s['seconds']:.0f} s")
    print(f"continued / from scratch: F1 x{c['f1'] / s['f1']:.2f}, probes "
          f"{'x%.2f' % (c['probe'] / s['probe']) if s['probe'] else 'n/a'}, seconds x{c['seconds'] / s['seconds']:.2f}")
    return 0


def round0_product(models: Path) -> Path | None:
    """The newest round-0 bundle of the product's head: the one models/LATEST names has it (the
    default head changed in 2026-12, so no fixed name)."""
    from mlc_pipeline.model.registry import latest_bundle, variant_name
    latest = latest_bundle(models)
    if latest is None:
        return None
    meta = json.loads((latest / "bundle.json").read_text())
    head = variant_name(meta["head"], meta["other_mode"])          # e.g. sigmoid-other-class
    found = sorted(p for p in models.glob(f"*-r0-{head}-*") if p.is_dir() and ".tmp-" not in p.name
                   and ".old-" not in p.name)
    return found[-1] if found else None


if __name__ == "__main__":
    sys.exit(main())
