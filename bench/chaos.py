"""Chaos run: the pipeline under every fault the bundled server can inject, and under kill -9.

    .venv/bin/python bench/chaos.py [--kills 20] [--scale 0.25] [--seed 0] [--train] [--json out.json]

Phase 1, faults: collect -> curate -> build -> train against a server with every fault on (HTTP 500, code
105, 429 + Retry-After, slow responses, truncated / empty / HTML bodies, offsite redirects,
oversize bodies, exact and near duplicates under new ids). Reports: every candidate accounted for,
no crash, injected-duplicate recall, every published image decodes fully.

Phase 2, interruption: a reference run to completion, then a second data root driven through
`--kills` SIGKILLs at random moments of collect, curate, build (and train with --train), each
followed by the next command; finally the stages run to completion. The final catalog and dataset
must equal the reference's, no partial file may exist anywhere, and every dataset version (and
model) published along the way must be byte-identical at the end. With --train, a first model is
trained before the training kills, and after every kill `models/LATEST` must name a complete
bundle whose export.pkl matches its recorded checksum.

Stages run as `mlc` subprocesses (so SIGKILL is real); the server runs in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from common import FAST_RETRIES, source_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import tree_digest  # noqa: E402  (the tests' digest of a published folder)

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
from mlc_pipeline.fsutil import sha256_file

MLC = [sys.executable, "-m", "mlc_pipeline.cli"]
ENV = {**os.environ, "FLICKR_API_KEY": "chaos-key-0000", "FLICKR_API_SECRET": "chaos-secret-0000"}
STAGES = ["collect", "curate", "build"]


def write_config(path: Path, data_dir: Path, srv: FlickrServer) -> Path:
    path.write_text(f"""
data_dir: {data_dir}
{source_yaml(srv, per_page=25, **FAST_RETRIES)}
classes:
  balloon: {{queries: [balloon], count: 60}}
  kite: {{queries: [kite], count: 60}}
  sailboat: {{queries: [sailboat], count: 60}}
other: {{queries: [landscape, texture, pattern, garden], count: 100}}
probe: {{queries: [house, fish], count: 30}}
train: {{epochs: 1, image_size: 32, compare_baselines: false}}
""")
    return path


def mlc(stage: str, cfg: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(MLC + [stage, "-c", str(cfg)] + (["--no-progress"] if stage == "collect" else []),
                          env=ENV, capture_output=True, text=True, timeout=timeout)


SNAPSHOT = ("photo_id", "purpose", "label", "status", "reason", "sha256", "phash", "curated_label")


def catalog_rows(db: Path) -> list[dict]:
    with Catalog(db, readonly=True) as catalog:
        return catalog.candidates()


def catalog_snapshot(db: Path) -> list[tuple]:
    """What two data roots must agree on: each candidate's decision, its duplicate_of as a photo id
    (row ids differ between two roots)."""
    rows = catalog_rows(db)
    pid = {r["id"]: r["photo_id"] for r in rows}
    return sorted(tuple(r[k] for k in SNAPSHOT) + (pid.get(r["duplicate_of"]),) for r in rows)


def dataset_snapshot(root: Path) -> tuple[str, str]:
    """(digest of the latest manifest without its candidate ids, digest of its image files)."""
    folder = root / (root / "LATEST").read_text().strip()
    rows = [line.split(",") for line in (folder / "manifest.csv").read_text().splitlines()]
    # Column 3 is candidate_id: catalog row ids differ between two data roots. The columns before
    # it (path, labels, split) hold no comma, so a plain split finds it.
    without_ids = "\n".join(",".join(c for i, c in enumerate(row) if i != 3) for row in rows)
    return hashlib.sha256(without_ids.encode()).hexdigest(), tree_digest(folder / "images")


def partial_files(data: Path) -> list[str]:
    bad = []
    for f in data.rglob("*"):
        name = f.name
        if name.endswith(".part") or name.startswith(".build-") or ".tmp" in name or name.startswith(".latest"):
            bad.append(str(f.relative_to(data)))
    return bad


def phase_faults(srv: FlickrServer, work: Path) -> dict:
    cfg = write_config(work / "faults.yaml", work / "faults", srv)
    codes = {s: mlc(s, cfg).returncode for s in STAGES + ["train"]}   # train: the model side of the flow too
    db = work / "faults" / "catalog.sqlite"
    rows = [(r["photo_id"], r["status"], r["reason"], r["duplicate_of"], r["id"]) for r in catalog_rows(db)]
    status = Counter(r[1] for r in rows)
    reasons = Counter(f"{r[1]}: {(r[2] or '').split(':')[0]}" for r in rows if r[2])
    unexplained = [r[0] for r in rows if r[1] in ("failed", "rejected", "duplicate", "skipped") and not r[2]]
    offered = srv.stats()["offered"]
    recorded = {r[0] for r in rows}
    # injected duplicates: both twins downloaded and verified -> the later one must be marked duplicate
    by_pid = {r[0]: r for r in rows}
    id_to_pid = {r[4]: r[0] for r in rows}
    eligible = found = 0
    for p in srv.world.photos:
        if p.dup_of and p.id in by_pid and p.dup_of in by_pid:
            a, b = by_pid[p.id], by_pid[p.dup_of]
            if {a[1], b[1]} <= {"accepted", "duplicate"}:
                eligible += 1
                found += (a[1] == "duplicate" and id_to_pid.get(a[3]) == b[0]) or (
                    b[1] == "duplicate" and id_to_pid.get(b[3]) == a[0])
    latest = (work / "faults" / "datasets" / "default" / "LATEST").read_text().strip()
    folder = work / "faults" / "datasets" / "default" / latest
    undecodable = []
    images = list((folder / "images").rglob("*.jpg"))
    for f in images:
        try:
            with Image.open(f) as im:
                im.load()
        except OSError as exc:
            undecodable.append(f"{f.name}: {exc}")
    return {"exit_codes": codes, "candidates": len(rows), "by_status": dict(status), "by_reason": dict(reasons),
            "unexplained": unexplained, "offered_by_server": len(offered), "recorded": len(recorded),
            "recorded_not_offered": len(recorded - offered), "offered_not_needed": len(offered - recorded),
            "faults_injected": srv.stats()["faults_injected"], "duplicate_twins": eligible,
            "duplicates_found": found, "duplicate_recall": found / eligible if eligible else None,
            "dataset_images": len(images), "undecodable": undecodable, "partial_files": partial_files(work / "faults"),
            "model_problem": latest_model_problem(work / "faults" / "models") if (work / "faults" / "models" / "LATEST").exists()
            else "no model published"}


def phase_kills(srv: FlickrServer, work: Path, kills: int, seed: int, train: bool) -> dict:
    rng = random.Random(seed)
    stages = STAGES + (["train"] if train else [])
    ref_cfg = write_config(work / "ref.yaml", work / "ref", srv)
    timing = {}
    for s in stages:
        t0 = time.monotonic()
        res = mlc(s, ref_cfg)
        assert res.returncode == 0, f"reference {s} failed: {res.stderr[-2000:]}"
        timing[s] = time.monotonic() - t0
    rounds, kill_log = [], []
    while sum(k["killed"] for k in kill_log) < kills and len(rounds) < 6:   # fresh data roots until enough kills
        root = work / f"killed{len(rounds)}"
        log, result = kill_round(srv, root, stages, kills, timing, rng)
        kill_log += log
        rounds.append(result)
    return {"kills": sum(k["killed"] for k in kill_log), "attempts": len(kill_log), "rounds": len(rounds),
            "log": kill_log, "same_catalog": all(r["same_catalog"] for r in rounds),
            "same_manifest": all(r["same_manifest"] for r in rounds), "same_images": all(r["same_images"] for r in rounds),
            "versions_published_while_killing": sorted({v for r in rounds for v in r["published"]}),
            "published_then_changed": [c for r in rounds for c in r["changed"]],
            "partial_files": [f for r in rounds for f in r["partial_files"]],
            "broken_latest_model": [b for r in rounds for b in r["broken_latest"]],
            "orphan_processes_left": sum(r["orphans"] for r in rounds),
            "reference_seconds": {k: round(v, 1) for k, v in timing.items()}}


def kill_round(srv, root: Path, stages: list[str], kills: int, timing: dict, rng: random.Random):
    """One fresh data root: kill each stage while it really works, then let it finish; compare."""
    work = root.parent
    cfg = write_config(work / f"{root.name}.yaml", root, srv)
    published: dict[str, str] = {}
    kill_log = []
    quota = {s: kills // len(stages) + (i < kills % len(stages)) for i, s in enumerate(stages)}
    broken_latest = []
    for stage in stages:
        if stage == "train":
            # A model first, so each kill below interrupts the training of the *next* one: the
            # published model must survive every kill byte for byte.
            res = mlc(stage, cfg)
            assert res.returncode == 0, f"first train failed: {res.stderr[-2000:]}"
        for _ in range(quota[stage]):
            proc = subprocess.Popen(MLC + [stage, "-c", str(cfg)] + (["--no-progress"] if stage == "collect" else []),
                                    env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # The reference run met the server's one-off faults first, so later collects are
            # faster; a training's time is its own (its first seconds are imports), so spread the
            # kills over all of it.
            cap = timing[stage] * 0.95 if stage == "train" else max(0.5, min(timing[stage] * 0.9, 1.5))
            if stage == "collect":  # a warm server answers a whole small collect in about a second
                cap = min(cap, 0.8)
            delay = rng.uniform(0.1, cap)
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait()     # only the parent is killed: its pool workers must die with it (PDEATHSIG)
            kill_log.append({"stage": stage, "after_s": round(delay, 2), "killed": killed,
                             "exit": "SIGKILL" if killed else proc.returncode})
            for v in (root / "datasets" / "default").glob("v*"):
                published.setdefault(v.name, tree_digest(v))
            models = root / "models"
            for m in models.glob("*") if models.exists() else []:
                if m.is_dir() and not m.name.startswith(".") and ".tmp-" not in m.name:
                    published.setdefault(f"model:{m.name}", tree_digest(m))
            problem = latest_model_problem(models)
            if problem:
                broken_latest.append(f"after killing {stage} at {delay:.2f} s: {problem}")
            if not killed:
                break                        # the stage finished before the kill: nothing left to interrupt
        res = mlc(stage, cfg)
        assert res.returncode == 0, f"{stage} after kills failed: {res.stderr[-2000:]}"
    changed = [name for name, digest in published.items()
               if tree_digest(root / ("models/" + name[6:] if name.startswith("model:")
                                      else "datasets/default/" + name)) != digest]
    time.sleep(0.5)
    # "--": a pattern starting with "-" was read as options (pgrep exits 2), so this counted 0 always.
    found = subprocess.run(["pgrep", "-f", "--", f"-c {cfg}"], capture_output=True, text=True)
    if found.returncode not in (0, 1):          # 1: no process matched
        raise RuntimeError(f"pgrep failed ({found.returncode}): {found.stderr.strip()}")
    orphans = found.stdout.split()
    ds_killed = dataset_snapshot(root / "datasets" / "default")
    ds_ref = dataset_snapshot(work / "ref" / "datasets" / "default")
    return kill_log, {"same_catalog": catalog_snapshot(root / "catalog.sqlite") == catalog_snapshot(work / "ref" / "catalog.sqlite"),
                      "same_manifest": ds_killed[0] == ds_ref[0], "same_images": ds_killed[1] == ds_ref[1],
                      "published": sorted(published), "changed": changed, "partial_files": partial_files(root),
                      "orphans": len(orphans), "broken_latest": broken_latest}


def latest_model_problem(models: Path) -> str | None:
    """None when models/LATEST is absent or names a complete bundle that passes its checksum."""
    pointer = models / "LATEST"
    if not pointer.exists():
        return None
    bundle = models / pointer.read_text().strip()
    try:
        meta = json.loads((bundle / "bundle.json").read_text())
        digest = sha256_file(bundle / "export.pkl")
    except (OSError, ValueError) as exc:
        return f"LATEST names {bundle.name}: {exc}"
    return None if digest == meta.get("export_sha256") else f"LATEST names {bundle.name}: checksum mismatch"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", action="store_true", help="also kill and resume training (slower)")
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--keep", help="work in this folder and keep it (to investigate a failure)")
    args = ap.parse_args()
    faults = FaultSpec.parse(f"all,seed={args.seed}")
    report = {"fault_spec": faults.__dict__}
    with tempfile.TemporaryDirectory(prefix="mlc-chaos-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with FlickrServer(WorldSpec(seed=args.seed, scale=args.scale), faults) as srv:
            report["faults"] = phase_faults(srv, work)
        with FlickrServer(WorldSpec(seed=args.seed, scale=args.scale), faults) as srv:
            report["interruption"] = phase_kills(srv, work, args.kills, args.seed, args.train)
        report["seconds"] = round(time.monotonic() - t0, 1)
    f, k = report["faults"], report["interruption"]
    ok = (all(c == 0 for c in f["exit_codes"].values()) and not f["unexplained"] and not f["undecodable"]
          and not f["model_problem"]
          and f["recorded_not_offered"] == 0 and not f["partial_files"] and k["same_catalog"]
          and k["same_manifest"] and k["same_images"] and not k["published_then_changed"] and not k["partial_files"] and not k["orphan_processes_left"]
          and not k["broken_latest_model"])
    print(json.dumps({"faults": {x: f[x] for x in f if x != "faults_injected"}, "faults_injected": f["faults_injected"]},
                     indent=1, default=str))
    print(f"kills: {k['kills']} of {k['attempts']} attempts over {k['rounds']} fresh data roots (stages {sorted({x['stage'] for x in k['log']})}); "
          f"same catalog {k['same_catalog']}, same manifest {k['same_manifest']}, same images {k['same_images']}; "
          f"versions published while killing {k['versions_published_while_killing']}, changed later "
          f"{k['published_then_changed']}; partial files {k['partial_files']}; orphan processes {k['orphan_processes_left']}; "
          f"models/LATEST broken after a kill: {k['broken_latest_model']}")
    print(f"duplicate recall: {f['duplicates_found']}/{f['duplicate_twins']}; "
          f"undecodable dataset images: {len(f['undecodable'])}; total {report['seconds']} s")
    print("CHAOS: PASS" if ok else "CHAOS: FAIL")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
