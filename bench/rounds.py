"""What a whole job's two rounds say about the choices made after training, replayed without training.

`bench/realworld.py --work DIR` leaves a real-photo job behind: the round-0 model, the mining
round's model and the dataset versions they were trained and calibrated on. This bench scores the
valid, test and probe images of the first version with both models once, then replays on those
scores three choices the product makes after training:

- `caps`: the operating point. Thresholds calibrated as train.py does (per-class F1 point, then
  `train.max_unknown_accepted`) for a range of caps, for each round; and, with the run's JSON, in how
  many jobs the model the job would ship beats the seeds' recipe on both axes at each cap.
- `shipping`: which round to ship. The round's rule (`pipeline.unknown_rate`, the mean of the test
  "other" and probe rates) against variants, judged without selection bias: each rule sees the test
  "other" images and a random half of the probes, and the model it picks is scored on the other half
  of the probes (200 halvings per job).
- `ensemble`: the mean of the two rounds' scores, calibrated the same way, against each round alone.

    .venv/bin/python bench/rounds.py /tmp/rw2/insects-0 /tmp/rw2/insects-1 ... [--json-dir DIR]

A job dir must hold data/models/*-r0-sigmoid-other-class-* (and *-r1-* for the shipping and ensemble
replays; pets worlds have no mining pool and give round 0 only). Mining's round 1 was trained on
negatives chosen with round 0's shipped thresholds; a replayed cap does not change those, so the
replay tells the operating point's effect, not a whole rerun's.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc_pipeline.config import MineSettings, TrainSettings  # noqa: E402
from mlc_pipeline.manifest import read_manifest_frame  # noqa: E402
from mlc_pipeline.model.metrics import (  # noqa: E402
    calibrate_thresholds, capping_path, evaluate, pick_capped, predict_matrix,
    real_class_indices, targets_from_labels,
)
from mlc_pipeline.shipping import unknown_rate  # noqa: E402

CAPS = [None, 0.1, 0.075, 0.05, 0.035, 0.025, 0.0]
SEEDS = ("seeds' recipe, softmax + other class", "seeds' recipe, sigmoid + other class")
# the config's defaults: what train.py calibrates with and what the shipping rule allows
F1_TOLERANCE, MAX_F1_LOSS = TrainSettings().f1_tolerance, MineSettings().max_f1_loss


def load_job(job: Path) -> dict | None:
    """Scores of both rounds on the first version's valid, test and probe rows."""
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.predict import score_paths
    models = job / "data" / "models"
    found = {tag: sorted(glob.glob(str(models / f"*-{tag}-sigmoid-other-class-*"))) for tag in ("r0", "r1")}
    if not found["r0"]:
        return None
    df = read_manifest_frame(job / "data" / "datasets" / "default" / "v1" / "manifest.csv")
    rows = df[df["split"].isin(["valid", "test", "probe"])].reset_index(drop=True)
    out = {"job": str(job), "split": rows["split"].to_numpy(), "rounds": {}}
    for tag, dirs in found.items():
        if not dirs:
            continue
        bundle = load_bundle(dirs[0])
        out["vocab"] = bundle.vocab
        out["rounds"][tag] = {"probs": score_paths(bundle, list(rows["abs_path"])), "thresholds": bundle.thresholds}
    out["targets"] = targets_from_labels([[] if s == "probe" else labs for labs, s in zip(rows["label_list"], rows["split"])],
                                         out["vocab"])
    return out


def calibrated(job: dict, probs: np.ndarray, caps: list[float | None]) -> dict[float | None, np.ndarray]:
    """train.py's calibration on the valid rows, for each cap: the F1 point, then the cap (None: the
    F1 point). One capping path serves every cap."""
    va = job["split"] == "valid"
    start = calibrate_thresholds(probs[va], job["targets"][va], "per-class-f1", f1_tolerance=F1_TOLERANCE)
    path = capping_path(probs[va], job["targets"][va], job["vocab"], start=start)
    return {cap: start if cap is None else pick_capped(path, cap) for cap in caps}       # as train.py picks


def test_figures(job: dict, probs: np.ndarray, thresholds: np.ndarray) -> tuple[float, float, float]:
    """Test macro F1, test "other" accepted, probes accepted."""
    rows = np.isin(job["split"], ["test", "probe"])
    r = evaluate(probs[rows], job["targets"][rows], thresholds, job["vocab"], is_unknown_mask=job["split"][rows] == "probe")
    return r["macro_f1"], r["unknown_accepted"], r["probe_accepted"]


def valid_f1(job: dict, probs: np.ndarray, thresholds: np.ndarray) -> float:
    va = job["split"] == "valid"
    return evaluate(probs[va], job["targets"][va], thresholds, job["vocab"])["macro_f1"]


def shipped_at(figures: dict, cap: str) -> tuple:
    """The round the job ships at this cap (the product's rule on the replayed test figures; the F1
    guard on test F1 alone, the replay's valid F1 being the calibration's own)."""
    r0, r1 = figures["r0"][cap], figures.get("r1", {}).get(cap)
    if r1 is not None and unknown_rate(r1[1], r1[2]) <= unknown_rate(r0[1], r0[2]) and r0[0] - r1[0] <= MAX_F1_LOSS + 1e-9:
        return r1
    return r0


def caps_replay(jobs: list[dict], json_dir: Path | None) -> None:
    figures = {}
    for job in jobs:
        figures[job["job"]] = {tag: {str(c): test_figures(job, r["probs"], thr)
                                     for c, thr in calibrated(job, r["probs"], CAPS).items()}
                               for tag, r in job["rounds"].items()}
    print("\n## caps: test macro F1 / test other / probes accepted, mean over jobs")
    print("| cap | round 0 | round 1 | shipped | shipped beats seeds' softmax / multi-label on both axes |")
    print("|---|---|---|---|---|")
    seeds = {}
    for job in jobs:
        name = Path(job["job"]).name
        path = (json_dir or Path(job["job"]).parent) / f"{name}.json"
        if path.exists():
            rows = json.loads(path.read_text())["rows"]
            rows = rows if isinstance(rows, dict) else ast.literal_eval(rows)
            if all(k in rows for k in SEEDS):       # runs with --skip-seeds have no baseline
                seeds[job["job"]] = rows
    for c in map(str, CAPS):
        cells = []
        for tag in ("r0", "r1"):
            got = [f[tag][c] for f in figures.values() if tag in f]
            cells.append(fmt(np.mean(got, axis=0), len(got)) if got else "")
        shipped = {j: shipped_at(f, c) for j, f in figures.items()}
        cells.append(fmt(np.mean(list(shipped.values()), axis=0), len(shipped)))
        wins = [sum(shipped[j][0] > s[k]["macro_f1"] and shipped[j][2] < s[k]["probe_accepted"] for j, s in seeds.items())
                for k in SEEDS]
        cells.append(f"{wins[0]} / {wins[1]} of {len(seeds)}" if seeds else "(no run JSON)")
        print(f"| {c} | " + " | ".join(cells) + " |")


def shipping_replay(jobs: list[dict], halvings: int = 200) -> None:
    rng = np.random.default_rng(0)
    rules = {
        "mean of rates (pipeline.unknown_rate)": lambda o, p, n_o, n_p: unknown_rate(o / n_o, p / n_p),
        "pooled per image": lambda o, p, n_o, n_p: (o + p) / (n_o + n_p),
        "probes only": lambda o, p, n_o, n_p: p / n_p,
        "test other only": lambda o, p, n_o, n_p: o / n_o,
        "always round 1 (F1 guard only)": lambda o, p, n_o, n_p: 0.0,
    }
    results = {name: [] for name in [*rules, "always round 0"]}
    pairs = [j for j in jobs if "r1" in j["rounds"]]
    for job in pairs:
        real = job["targets"][:, real_class_indices(job["vocab"])].any(axis=1)
        other = (job["split"] == "test") & ~real
        probes = np.nonzero(job["split"] == "probe")[0]
        accepted, f1 = {}, {}
        for tag, r in job["rounds"].items():
            accepted[tag] = predict_matrix(r["probs"], r["thresholds"], job["vocab"]).any(axis=1)
            te = job["split"] == "test"
            test_f1 = evaluate(r["probs"][te], job["targets"][te], r["thresholds"], job["vocab"])["macro_f1"]
            f1[tag] = ((valid_f1(job, r["probs"], r["thresholds"]) + test_f1) / 2, test_f1)
        per_rule = {name: [] for name in results}
        for _ in range(halvings):
            perm = rng.permutation(probes)
            seen, unseen = perm[: len(perm) // 2], perm[len(perm) // 2:]
            counts = {t: (accepted[t][other].sum(), accepted[t][seen].sum()) for t in accepted}
            for name, rule in rules.items():
                u0 = rule(*counts["r0"], other.sum(), len(seen))
                u1 = rule(*counts["r1"], other.sum(), len(seen)) if "always" not in name else -1.0
                ship = "r1" if u1 <= u0 and f1["r0"][0] - f1["r1"][0] <= MAX_F1_LOSS + 1e-9 else "r0"
                per_rule[name].append((accepted[ship][unseen].mean(), f1[ship][1], ship == "r1"))
            per_rule["always round 0"].append((accepted["r0"][unseen].mean(), f1["r0"][1], False))
        for name, got in per_rule.items():
            results[name].append(np.mean(got, axis=0))
    print(f"\n## shipping: {len(pairs)} jobs with two rounds, {halvings} probe halvings each")
    print("| rule | unseen half of the probes accepted | test macro F1 | round 1 shipped |")
    print("|---|---|---|---|")
    for name, got in results.items():
        m = np.mean(got, axis=0)
        print(f"| {name} | {m[0]:.2%} | {m[1]:.3f} | {m[2]:.0%} |")


def ensemble_replay(jobs: list[dict], cap: float = 0.05) -> None:
    pairs = [j for j in jobs if "r1" in j["rounds"]]
    got = {"round 0": [], "round 1": [], "mean of both rounds' scores": []}
    for job in pairs:
        p0, p1 = job["rounds"]["r0"]["probs"], job["rounds"]["r1"]["probs"]
        # All three calibrated alike, on the same valid rows: each round's own bundle thresholds were
        # fitted on its own version's valid set (round 1's holds mined negatives), the mean's were not.
        got["round 0"].append(test_figures(job, p0, calibrated(job, p0, [cap])[cap]))
        got["round 1"].append(test_figures(job, p1, calibrated(job, p1, [cap])[cap]))
        both = (p0 + p1) / 2
        got["mean of both rounds' scores"].append(test_figures(job, both, calibrated(job, both, [cap])[cap]))
    print(f"\n## ensemble: {len(pairs)} jobs, cap {cap}")
    print("| model | test macro F1 / test other / probes accepted |")
    print("|---|---|")
    for name, rows in got.items():
        print(f"| {name} | {fmt(np.mean(rows, axis=0))} |")


def fmt(m, n: int | None = None) -> str:
    return f"{m[0]:.3f} / {m[1]:.1%} / {m[2]:.1%}" + (f" ({n})" if n is not None else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", nargs="+", help="bench/realworld.py --work folders")
    ap.add_argument("--json-dir", default=None, help="where the runs' --json files are, as <job name>.json "
                    "(default: beside each job folder)")
    args = ap.parse_args()
    jobs = []
    for path in args.jobs:
        job = load_job(Path(path))
        if job is None:
            print(f"skipped {path}: no round-0 model", file=sys.stderr)
            continue
        jobs.append(job)
    print(f"{len(jobs)} jobs")
    caps_replay(jobs, Path(args.json_dir) if args.json_dir else None)
    shipping_replay(jobs)
    ensemble_replay(jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
