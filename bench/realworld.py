"""Real photos end to end: the product against the seeds' recipe, in the same run, on the same data.

One command serves a world of real photos (shared/fixtures) through the bundled Flickr-compatible
server in folder mode, runs the whole product job on it (`mlc run`: collect, curate, build, train,
mine, retrain), then trains the seeds' recipe on the very dataset version the product's first model
trained on, and scores everything on the same test split and probe images.

The seeds' recipe (shared/seeds, shared/notes/fastai.md): resnet18 from scratch (offline: no
ImageNet weights), RandomResizedCrop(224, min_scale=0.5) + aug_transforms(), fine_tune(4),
"other" as a class, once as softmax single-label and once as sigmoid multi-label (threshold 0.5).

Worlds (a user's config in miniature; probes are a kind under no query, never trained on):
- insects: classes ants, bees; other: dog photos; mining pool: other dog photos; probe: cat photos
  (an unseen furry animal that looks like the negatives: the hard case users meet)
- insects-catpool: as insects, but the mining pool is cat photos (other ones than the probes): a
  pool that resembles the unseen kind, where a mining round should move the unseen rate
- insects-poisoned: as insects-catpool, but 40 of the 300 pool photos are bees the bees class never
  sees: the pool query finds class members too, and mining must not teach the model they are "other"
- pets:    classes cat, dog; other: ant photos; probe: bee photos (no pool: one round, no mining)

    .venv/bin/python bench/realworld.py --world insects [--set train.epochs=40 ...] [--no-alternatives]

Prints both sides' macro F1 and unknown-accepted rates, the ratios, and the product's curve, and
which weights the product started from: at its default (`pretrained: auto`) a machine with ImageNet
weights at hand gives a pretrained product against a from-scratch baseline, which the output then
says is not like for like (`--set train.pretrained=none` makes it so). Every run recorded in
docs/benchmarks.md was offline: both sides from scratch.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT.parent / "shared" / "fixtures"
# world -> {subfolder: (fixture folder, how many files, which of the shuffled files: slice start)}
WORLDS = {
    "insects": {
        "folders": {"ants": ("hymenoptera/ants", None, 0), "bees": ("hymenoptera/bees", None, 0),
                    "dogs-a": ("pets/dog", 300, 0), "dogs-b": ("pets/dog", 300, 300),
                    "cats": ("pets/cat", 300, 0)},
        "classes": {"ants": ["ant"], "bees": ["bee"]},
        "other": ["dog"], "pool": ["puppy"], "probe": ["cat"],
        "map": {"ant": "ants", "bee": "bees", "dog": "dogs-a", "puppy": "dogs-b", "cat": "cats"},
        "counts": {"class": 250, "other": 300, "pool": 300, "probe": 300},
    },
    # Mining with a pool that looks like the unseen kind (other cat photos): the case mining is for,
    # measuring whether a round moves a real unseen rate, and how the retrain should start.
    "insects-catpool": {
        "folders": {"ants": ("hymenoptera/ants", None, 0), "bees": ("hymenoptera/bees", None, 0),
                    "dogs": ("pets/dog", 300, 0), "cats-a": ("pets/cat", 300, 0), "cats-b": ("pets/cat", 300, 300)},
        "classes": {"ants": ["ant"], "bees": ["bee"]},
        "other": ["dog"], "pool": ["kitten"], "probe": ["cat"],
        "map": {"ant": "ants", "bee": "bees", "dog": "dogs", "kitten": "cats-a", "cat": "cats-b"},
        "counts": {"class": 250, "other": 300, "pool": 300, "probe": 300},
    },
    # The guard's case: the pool query also finds class members (40 bee photos the bees class never
    # sees among 260 cats), as "stuffed animal" finds teddies. Mining should hold them, not add them.
    "insects-poisoned": {
        "folders": {"ants": ("hymenoptera/ants", None, 0), "bees": ("hymenoptera/bees", None, 40),
                    "dogs": ("pets/dog", 300, 0), "cats-b": ("pets/cat", 300, 300),
                    "pool": [("pets/cat", 260, 0), ("hymenoptera/bees", 40, 0)]},
        "classes": {"ants": ["ant"], "bees": ["bee"]},
        "other": ["dog"], "pool": ["kitten"], "probe": ["cat"],
        "map": {"ant": "ants", "bee": "bees", "dog": "dogs", "kitten": "pool", "cat": "cats-b"},
        "counts": {"class": 250, "other": 300, "pool": 300, "probe": 300},
    },
    "pets": {
        "folders": {"cats": ("pets/cat", 300, 0), "dogs": ("pets/dog", 300, 0),
                    "ants": ("hymenoptera/ants", None, 0), "bees": ("hymenoptera/bees", None, 0)},
        "classes": {"cat": ["cat"], "dog": ["dog"]},
        "other": ["ant"], "pool": [], "probe": ["bee"],
        "map": {"cat": "cats", "dog": "dogs", "ant": "ants", "bee": "bees"},
        "counts": {"class": 300, "other": 300, "pool": 0, "probe": 300},
    },
}


def build_folder(world: dict, dest: Path, seed: int) -> None:
    for sub, slices in world["folders"].items():
        (dest / sub).mkdir(parents=True)
        # a subfolder is one slice of a fixture folder, or several (a pool that mixes kinds)
        for src, count, start in (slices if isinstance(slices, list) else [slices]):
            files = sorted((FIXTURES / src).glob("*.jpg"))
            random.Random(f"{seed}:{src}").shuffle(files)   # one order per source, so slices never overlap
            for f in files[start:start + count] if count else files[start:]:
                shutil.copyfile(f, dest / sub / f.name)


def write_config(world: dict, folder: Path, data_dir: Path, port: int, seed: int, scale: float = 1.0) -> Path:
    import yaml
    c = {k: max(1, round(v * scale)) for k, v in world["counts"].items()}
    cfg = {
        "data_dir": str(data_dir),
        "source": {"kind": "local", "local": {"port": port, "seed": seed, "folder": str(folder),
                                              "query_map": world["map"]},
                   "licenses": "any", "sizes": ["url_n", "url_s", "url_q", "url_t", "url_sq"]},
        "classes": {name: {"queries": qs, "count": c["class"]} for name, qs in world["classes"].items()},
        "other": {"queries": world["other"], "count": c["other"]},
        "probe": {"queries": world["probe"], "count": c["probe"]},
        "train": {"compare_baselines": True, "seed": seed},
        "mine": {"rounds": 1 if world["pool"] else 0,
                 **({"pool": {"queries": world["pool"], "count": c["pool"]}} if world["pool"] else {})},
    }
    path = data_dir.parent / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def seeds_recipe(manifest: Path, head: str, seed: int) -> dict:
    """The blog posts' recipe on a dataset version: train + valid rows, "other" as a class."""
    import torch
    import torchvision
    from fastai.vision.all import (
        BCEWithLogitsLossFlat, CategoryBlock, ColReader, ColSplitter, CrossEntropyLossFlat, DataBlock, ImageBlock,
        MultiCategoryBlock, RandomResizedCrop, aug_transforms, set_seed, vision_learner,
    )
    from mlc_pipeline.model.metrics import OTHER, evaluate, targets_from_labels
    from mlc_pipeline.model.train import available_cores
    from mlc_pipeline.manifest import read_manifest_frame

    torch.set_num_threads(available_cores())
    set_seed(seed, reproducible=True)
    df = read_manifest_frame(manifest)
    rows = df[df["split"].isin(["train", "valid"])].copy()
    rows["is_valid"] = rows["split"] == "valid"
    if head == "softmax":
        rows = rows[rows["label_list"].map(len) <= 1].copy()
        rows["target"] = [labs[0] if labs else OTHER for labs in rows["label_list"]]
        y_block, loss = CategoryBlock(), CrossEntropyLossFlat()
    else:
        rows["target"] = [labs if labs else [OTHER] for labs in rows["label_list"]]
        y_block, loss = MultiCategoryBlock(), BCEWithLogitsLossFlat()
    block = DataBlock(blocks=(ImageBlock, y_block), get_x=ColReader("abs_path"), get_y=ColReader("target"),
                      splitter=ColSplitter("is_valid"), item_tfms=RandomResizedCrop(224, min_scale=0.5),
                      batch_tfms=aug_transforms())
    dls = block.dataloaders(rows.reset_index(drop=True), bs=32, num_workers=0)
    learn = vision_learner(dls, torchvision.models.resnet18, pretrained=False, loss_func=loss)
    start = time.monotonic()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(4)
    seconds = time.monotonic() - start
    vocab = [str(v) for v in dls.vocab]
    held_out = df[df["split"].isin(["test", "probe"])].reset_index(drop=True)
    test_dl = learn.dls.test_dl(list(held_out["abs_path"]), num_workers=0)
    with learn.no_bar(), learn.no_logging():
        probs, _ = learn.get_preds(dl=test_dl)
    probs = probs.float().numpy()
    labels = [[] if s == "probe" else labs for labs, s in zip(held_out["label_list"], held_out["split"])]
    targets = targets_from_labels(labels, vocab)
    thresholds = None if head == "softmax" else np.full(len(vocab), 0.5)
    metrics = evaluate(probs, targets, thresholds, vocab, is_unknown_mask=(held_out["split"] == "probe").to_numpy(),
                       head=head)
    metrics["train_seconds"] = round(seconds, 1)
    return metrics


def pool_decisions(cfg, result) -> dict[str, dict[str, int]]:
    """{source folder: {decision: count}} over every round's mined.csv: in insects-poisoned, how many
    of the pool's class members mining added as negatives (poison) and how many it held."""
    import csv
    from collections import Counter, defaultdict
    from mlc_pipeline.sync import open_catalog
    class_kind = {f.name for f in (FIXTURES / "hymenoptera").rglob("*.jpg")}
    out: dict[str, Counter] = defaultdict(Counter)
    with open_catalog(cfg) as catalog:
        for r in result.rounds:
            path = cfg.data_dir / "models" / r.bundle / "mined.csv"
            if not path.exists():
                continue
            for row in csv.DictReader(path.open()):
                source = (catalog.get(int(row["candidate_id"])) or {}).get("source_file") or "?"
                kind = ("a class's kind (hymenoptera)" if Path(source).name in class_kind
                        else source.split("/")[0])
                out[kind][row["decision"].split(":")[0]] += 1
    return {k: dict(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=sorted(WORLDS), default="insects")
    ap.add_argument("--seed", type=int, default=0, help="world shuffle and training seed")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--work", help="keep everything here (default: a temporary folder)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count (a quick smoke run: 0.1)")
    ap.add_argument("--set", action="append", default=[], help="product config override KEY=VALUE")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--skip-seeds", action="store_true", help="the product only (no baseline: no verdict)")
    ap.add_argument("--no-alternatives", action="store_true",
                    help="skip the product recipe's comparison heads (sigmoid/softmax + other class on round 0 "
                         "data): the verdict needs only the seeds' rows, and on a slow CPU the heads are "
                         "another ~30 minutes")
    args = ap.parse_args()

    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mlc_pipeline.config import parse_overrides
    from mlc_pipeline.config import load_config
    from mlc_pipeline.report.curves import curve_markdown
    from mlc_pipeline.report.tables import pct
    from mlc_pipeline.pipeline import run_pipeline

    work = Path(args.work or tempfile.mkdtemp(prefix="mlc-realworld-"))
    world = WORLDS[args.world]
    folder = work / "world"
    if not folder.exists():
        build_folder(world, folder, args.seed)
    config = write_config(world, folder, work / "data", args.port, args.seed, args.scale)
    cfg = load_config(config, parse_overrides(args.set))

    start = time.monotonic()
    # The comparison heads are trained whenever the seeds are, unless asked not to: they are the
    # product recipe's own variants, a row of context beside the verdict, not part of it.
    alternatives = not (args.skip_seeds or args.no_alternatives)
    result = run_pipeline(cfg, progress=False, train_alternative_models=alternatives)
    product_seconds = time.monotonic() - start
    models = cfg.data_dir / "models"
    metrics = {r.bundle: json.loads((models / r.bundle / "metrics.json").read_text())["test"] for r in result.rounds}
    from mlc_pipeline.report.rounds import shipped_round
    first, last = result.rounds[0], shipped_round(result)     # last: the model the run ships (models/LATEST)
    manifest = cfg.data_dir / "datasets" / cfg.build.name / first.dataset_version / "manifest.csv"

    seeds = {} if args.skip_seeds else {f"seeds' recipe, {h} + other class": seeds_recipe(manifest, h, args.seed)
                                        for h in ("softmax", "sigmoid")}
    rows = [(f"product, round {r.round}", metrics[r.bundle]) for r in result.rounds]
    rows += [(f"product recipe, {name} (round 0 data)", m["test"]) for name, m in result.alternatives.items()]
    rows += list(seeds.items())

    print(f"\nworld {args.world} (seed {args.seed}): {work}")
    print(f"product job (collect .. retrain, {'incl.' if alternatives else 'no'} alternatives): {product_seconds:.0f} s; "
          f"stages {result.seconds}")
    print("| model | macro F1 | test other accepted | probe (unseen kind) accepted | train s |")
    print("|---|---|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m['macro_f1']:.3f} | {pct(m['unknown_accepted'])} | {pct(m['probe_accepted'])} "
              f"| {m.get('train_seconds', '')} |")
    product = metrics[last.bundle]
    # The seeds' side always trains from scratch; the product's default (`pretrained: auto`) takes
    # ImageNet weights when they are at hand: say which, so a pretrained product is never read as a
    # from-scratch win (add `--set train.pretrained=none` for like against like)
    weights = json.loads((models / last.bundle / "bundle.json").read_text()).get("pretrained", "none")
    like_for_like = weights == "none"
    print(f"\nproduct = round {last.round} ({last.bundle}), the model the run ships"
          + (f"; {result.not_shipped}" if result.not_shipped else ""))
    print(f"product's starting weights: {weights}" + ("" if like_for_like else
          " -- the seeds' recipe trains from scratch: NOT a like-for-like comparison"))
    verdicts = []
    for name, m in seeds.items():
        f1_ratio = f"x{product['macro_f1'] / m['macro_f1']:.2f}" if m["macro_f1"] else "n/a (baseline 0)"
        probe_ratio = f"x{product['probe_accepted'] / m['probe_accepted']:.2f}" if m["probe_accepted"] else "n/a (baseline 0)"
        both = product["macro_f1"] > m["macro_f1"] and product["probe_accepted"] < m["probe_accepted"]
        verdicts.append(both)
        print(f"vs {name}: macro F1 {f1_ratio}, unseen accepted {probe_ratio} -> "
              f"{'better on both axes' if both else 'NOT better on both axes'}")
    mined = pool_decisions(cfg, result)
    if mined:
        print("\nmining decisions by the pool photo's source folder (from each round's mined.csv):")
        for src, decisions in sorted(mined.items()):
            print(f"  {src}: " + ", ".join(f"{d} {n}" for d, n in sorted(decisions.items())))
    goal = product["macro_f1"] >= 0.85 and product["probe_accepted"] <= 0.05
    print(f"goal (macro F1 >= 0.85 with <= 5% of the unseen kind accepted): {'met' if goal else 'not met'}")
    if product.get("curve"):
        print("\nproduct's operating curve (test split; each row one train.max_unknown_accepted):")
        print(curve_markdown(product["curve"], rows=12))
    if args.json:
        Path(args.json).write_text(json.dumps({"world": args.world, "seed": args.seed, "rows": dict(rows),
                                               "product_seconds": product_seconds, "stages": result.seconds,
                                               "both_axes": verdicts, "goal": goal,
                                               "product_weights": weights, "like_for_like": like_for_like,
                                               "pool_decisions": mined}, indent=2, default=str))
    return 0 if verdicts and all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
