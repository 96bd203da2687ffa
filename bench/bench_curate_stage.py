"""The whole curation stage, `mlc curate`, against imagededup PHash `find_duplicates` + fastai `verify_images`.

`bench/bench_curate.py` times verify + hash alone. Curation does more: exact and near duplicates
over three views per image (`find_pairs`), pixel-level confirmation of every candidate pair
(`similarity.FileSimilarity`, with `anchored_search` for corner crops), the catalog's reads and
writes. This bench times all of it, as a user runs it, on three file sets:

- `hymenoptera`: the 398 fixture photos (<= 400 px);
- `pets`: the 1,200 pet photos (180 x 180);
- `large`: the 398 hymenoptera + `--large` JPEGs of 2000-4000 px, made as bench_curate.py makes
  them (a photo upscaled with BICUBIC, saved at quality 90), but from pet photos: an upscaled
  hymenoptera photo would itself be a near copy of a file in the set.

Planted duplicates, of `--share` (5 %) of the photos of each set, in the original's folder: an exact
copy (same bytes), a re-encode (JPEG quality 50), a 5 % centre crop and a 5 % corner crop (5 % off
the left and top edges), as bench_dedup_quality.py makes them.

The files are served by the bundled server in folder mode (one subfolder per query, docs/collection.md,
"Bring your own images") and collected once with `mlc collect` into a data root; that root (catalog
and files) is the starting point of every timed run, restored before each (a copy of the catalog,
hard links to the files), so every run verifies and hashes every file afresh.

- ours: `mlc curate -c CFG --set data_dir=RUN --no-progress` in a fresh process (this file's child
  mode imports the CLI and calls `cli.main`, what `python -m mlc_pipeline.cli` runs). Timed two ways:
  the whole process, and from after its imports of the CLI and the curate stage to the end.
- baseline: a fresh process runs imagededup `PHash().find_duplicates(image_dir=DIR,
  max_distance_threshold=THRESHOLD)` (encode + search; THRESHOLD is the product's own
  `curate.hamming_threshold`, set on our side too, so both search the same distance) and fastai
  `verify_images` on the same files (a flat folder of links to them). Timed two ways: the whole process, and from after its imports (fastai
  imports torch: seconds) to the end, as bench_curate.py times it.

The sides run alternately, `--repeat` times each; the best run of each is reported. CPU time is
getrusage of the process and every reaped descendant (both sides' worker pools are joined). On a
shared machine wall time measures the other jobs: rely on the CPU ratio.

Found duplicates: ours, from the catalog after the run (a pair is found when both files end in
one group: one kept, the rest `duplicate` of it); the baseline, from `find_duplicates`' dictionary.
Recall is per planted edit; a false pair joins files of two different originals.

    .venv/bin/python bench/bench_curate_stage.py                        # all three sets, 150 large, best of 3
    .venv/bin/python bench/bench_curate_stage.py --sets pets --repeat 2
    .venv/bin/python bench/bench_curate_stage.py --sets large --profile /tmp/prof   # + a cProfile of one curate
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mlc_pipeline.catalog import Catalog  # noqa: E402 -- this checkout's, as the children's PYTHONPATH
from mlc_pipeline.config import CurateSettings  # noqa: E402
FIXTURES = ROOT.parent / "shared" / "fixtures"
EDITS = ("exact", "jpeg50", "crop5", "corner5")
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("FLICKR_")}, "PYTHONPATH": str(ROOT)}
THRESHOLD = CurateSettings().hamming_threshold  # both sides' search distance (bits of a 64-bit phash)


# ---- the file sets -------------------------------------------------------------------------------

def originals(name: str, n_large: int, out: Path, seed: int = 0) -> dict[str, list[Path]]:
    """subfolder -> original files of the set (fixtures linked, large JPEGs written under `out`)."""
    if name == "pets":
        return {sub: sorted((FIXTURES / "pets" / sub).glob("*.jpg")) for sub in ("cat", "dog")}
    found = {sub: sorted((FIXTURES / "hymenoptera" / sub).glob("*.jpg")) for sub in ("ants", "bees")}
    if name == "large":
        rng = np.random.default_rng(seed)
        pets = sorted((FIXTURES / "pets").rglob("*.jpg"))
        (out / "made").mkdir(parents=True)
        found["large"] = []
        for k, photo in enumerate(rng.choice(pets, n_large, replace=False)):
            im = Image.open(photo).convert("RGB")
            scale = rng.integers(2000, 4001) / max(im.size)
            big = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
            path = out / "made" / f"large_{k:04d}.jpg"
            big.save(path, quality=90)
            found["large"].append(path)
    return found


def edited(src: Path, edit: str, dest: Path) -> None:
    if edit == "exact":
        shutil.copyfile(src, dest)
        return
    im = Image.open(src).convert("RGB")
    w, h = im.size
    if edit == "jpeg50":
        im.save(dest, quality=50)
    elif edit == "crop5":
        im.crop((round(w * .05), round(h * .05), w - round(w * .05), h - round(h * .05))).save(dest, quality=90)
    elif edit == "corner5":
        im.crop((round(w * .05), round(h * .05), w, h)).save(dest, quality=90)


def make_world(name: str, n_large: int, share: float, out: Path, seed: int = 0):
    """The folder-mode world (subfolder per query) with planted copies, and a flat folder of links to
    the same files for the baseline. Returns (world, flat, origin: file name -> original's file name,
    copies: [(copy name, original name, edit)])."""
    world, flat = out / "world", out / "flat"
    flat.mkdir(parents=True)
    rng = np.random.default_rng(seed + 1)
    origin, copies = {}, []
    for sub, files in originals(name, n_large, out, seed).items():
        (world / sub).mkdir(parents=True)
        for f in files:                            # named after the folder: cat/1.jpg and dog/1.jpg exist
            (world / sub / f"{sub}_{f.name}").symlink_to(f.resolve())
            origin[f"{sub}_{f.name}"] = f"{sub}_{f.name}"
    everything = [(sub, f.name) for sub in sorted(os.listdir(world)) for f in sorted((world / sub).iterdir())]
    picked = rng.choice(len(everything), max(1, round(share * len(everything))), replace=False)
    for k in sorted(picked.tolist()):
        sub, fname = everything[k]
        for edit in EDITS:
            copy = f"copy_{edit}_{fname}"
            edited(world / sub / fname, edit, world / sub / copy)
            origin[copy] = fname
            copies.append((copy, fname, edit))
    names = set()
    for sub in os.listdir(world):
        for f in (world / sub).iterdir():
            assert f.name not in names, f"two files named {f.name}"
            names.add(f.name)
            (flat / f.name).symlink_to(f.resolve())
    return world, flat, origin, copies


def config_for(world: Path, out: Path) -> Path:
    subs = sorted(os.listdir(world))
    counts = {sub: len(os.listdir(world / sub)) for sub in subs}
    other = "bees" if "bees" in subs else "dog"     # a set for `other:` (required), of the same photos
    classes = [s for s in subs if s != other]
    data = {
        "data_dir": str(out / "pristine"),
        "source": {"kind": "local", "licenses": "any",
                   "sizes": ["url_l", "url_c", "url_z", "url_m", "url_n", "url_s", "url_q", "url_t", "url_sq"],
                   "local": {"port": 0, "folder": str(world), "query_map": {s: s for s in subs}}},
        "classes": {s: {"queries": [s], "count": counts[s]} for s in classes},
        "other": {"queries": [other], "count": counts[other]},
        "curate": {"hamming_threshold": THRESHOLD},
    }
    path = out / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def collect(cfg: Path, out: Path, n_files: int) -> None:
    res = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "collect", "-c", str(cfg), "--no-progress"],
                         env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    with Catalog(out / "pristine" / "catalog.sqlite", readonly=True) as catalog:
        n = catalog.status_counts().get("downloaded", 0)
    assert n == n_files, f"collected {n} of {n_files} files: {res.stderr[-2000:]}"


def fresh_root(out: Path) -> Path:
    """The collected data root again: files as hard links, every other file (the catalog) copied."""
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(out / "pristine", run, copy_function=os.link)
    for f in run.rglob("*"):
        if f.is_file() and "raw" not in f.relative_to(run).parts:
            f.unlink()
            shutil.copy2(out / "pristine" / f.relative_to(run), f)
    return run


# ---- the two sides ---------------------------------------------------------------------------------

def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    start, cpu = time.perf_counter(), children_cpu()
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    assert res.returncode == 0, res.stderr[-3000:]
    return wall, cpu, res


def run_ours(cfg: Path, out: Path, profile: Path | None = None) -> dict:
    run = fresh_root(out)
    argv = ["curate", "-c", str(cfg), "--set", f"data_dir={run}", "--no-progress"]
    if profile:
        timed([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "mlc_pipeline.cli", *argv])
        return {}
    result = out / "ours.json"
    wall, cpu, res = timed([sys.executable, __file__, "--ours-child", str(result), *argv])
    inner = json.loads(result.read_text())
    summary = json.loads(res.stdout)
    with Catalog(run / "catalog.sqlite", readonly=True) as catalog:
        rows = catalog.candidates()
    name = {r["id"]: Path(r["source_file"]).name for r in rows}
    keeper = {name[r["id"]]: name[r["duplicate_of"]] if r["status"] == "duplicate" else name[r["id"]] for r in rows}
    return dict(wall=wall, cpu=cpu, inner_wall=inner["seconds"], inner_cpu=inner["cpu"],
                inspected=summary["inspected"], keeper=keeper,
                rejected=summary["rejected"], duplicates=summary["duplicates"])


def own_cpu() -> float:
    "CPU time of this process and its reaped descendants."
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + children_cpu()


def ours_child(result: Path, argv: list[str]) -> None:
    """Child process: `mlc` itself (cli.main, what `python -m mlc_pipeline.cli` runs), the clock
    started after the imports of the CLI and the curate stage, as the baseline's is."""
    from mlc_pipeline import cli
    for module in ("mlc_pipeline.commands", "mlc_pipeline.curate.stage"):   # what `mlc curate` imports
        importlib.import_module(module)
    start, cpu = time.perf_counter(), own_cpu()
    rc = cli.main(argv)
    result.write_text(json.dumps(dict(seconds=time.perf_counter() - start, cpu=own_cpu() - cpu)))
    sys.exit(rc)


def baseline_child(image_dir: Path, result: Path) -> None:
    "Child process: imports first, then the clock: imagededup encode + search, fastai verify."
    import logging
    import warnings
    importlib.import_module("imagededup.methods.hashing")     # creates its INFO logger, silenced next
    from fastai.vision.utils import verify_images
    from imagededup.methods import PHash
    for name in ("imagededup.methods.hashing", "imagededup.handlers.search.retrieval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    start, cpu = time.perf_counter(), own_cpu()
    found = PHash(verbose=False).find_duplicates(image_dir=str(image_dir), max_distance_threshold=THRESHOLD)
    dedup_s = time.perf_counter() - start
    failed = verify_images(sorted(image_dir.iterdir()))
    result.write_text(json.dumps(dict(seconds=time.perf_counter() - start, dedup_s=dedup_s, found=found,
                                      failed=len(failed), cpu=own_cpu() - cpu)))


def run_baseline(flat: Path, out: Path) -> dict:
    result = out / "baseline.json"
    wall, cpu, _ = timed([sys.executable, __file__, "--baseline-child", str(flat), str(result)])
    inner = json.loads(result.read_text())
    return dict(wall=wall, cpu=cpu, inner_wall=inner["seconds"], inner_cpu=inner["cpu"], dedup_s=inner["dedup_s"],
                found=inner["found"], failed=inner["failed"])


# ---- what each side found --------------------------------------------------------------------------

def pairs_ours(keeper: dict[str, str]) -> set[frozenset]:
    groups: dict[str, list[str]] = {}
    for f, k in keeper.items():
        groups.setdefault(k, []).append(f)
    return {frozenset(p) for g in groups.values() for p in itertools.combinations(g, 2)}


def pairs_baseline(found: dict[str, list[str]]) -> set[frozenset]:
    """Its lists grouped as ours are (connected groups): a copy listed only beside another copy of the
    same photo counts, as it does for us (a user removing what the lists name drops both)."""
    root = {f: f for f in found}

    def find(f):
        while root[f] != f:
            root[f] = root[root[f]]
            f = root[f]
        return f
    for a, dups in found.items():
        for b in dups:
            root.setdefault(b, b)
            root[find(a)] = find(b)
    return pairs_ours({f: find(f) for f in root})


def quality(pairs: set[frozenset], origin: dict[str, str], copies) -> tuple[dict[str, str], int]:
    recall = {e: f"{sum(frozenset((c, o)) in pairs for c, o, e2 in copies if e2 == e)}/"
                 f"{sum(e2 == e for _, _, e2 in copies)}" for e in EDITS}
    false = sum(1 for p in pairs if len({origin[f] for f in p}) > 1)
    return recall, false


# ---- main --------------------------------------------------------------------------------------------

def bench_set(name: str, args, tmp: Path) -> dict:
    out = tmp / name
    world, flat, origin, copies = make_world(name, args.large, args.share, out)
    files = sorted(flat.iterdir())
    cfg = config_for(world, out)
    collect(cfg, out, len(files))
    for f in [*files, *(out / "pristine" / "raw").rglob("*.*")]:   # both sides from a warm page cache
        f.read_bytes()
    ours, base = [], []
    for _ in range(args.repeat):                    # alternately: background load hits both alike
        ours.append(run_ours(cfg, out))
        base.append(run_baseline(flat, out))
    assert ours[0]["inspected"] == len(files), ours[0]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        prof = args.profile / f"curate_{name}.prof"
        run_ours(cfg, out, profile=prof)
        print(f"cProfile of one `mlc curate` on {name}: {prof}")
    best = {side: {key: min(r[key] for r in runs) for key in ("wall", "cpu", "inner_wall", "inner_cpu")}
            for side, runs in (("ours", ours), ("base", base))}
    ours_recall, ours_false = quality(pairs_ours(ours[0]["keeper"]), origin, copies)
    base_recall, base_false = quality(pairs_baseline(base[0]["found"]), origin, copies)
    fastest = min(base, key=lambda r: r["inner_wall"])
    return dict(name=name, files=len(files), copies=len(copies), mib=sum(f.stat().st_size for f in files) / 2**20,
                best=best, dedup_share=fastest["dedup_s"] / fastest["inner_wall"],
                ours_recall=ours_recall, ours_false=ours_false, base_recall=base_recall, base_false=base_false,
                ours_rejected=ours[0]["rejected"], ours_dups=ours[0]["duplicates"], base_failed=base[0]["failed"],
                runs={side: [tuple(round(r[k], 2) for k in ("wall", "cpu", "inner_wall", "inner_cpu")) for r in runs]
                      for side, runs in (("ours", ours), ("baseline", base))})


def print_table(results: list[dict], repeat: int) -> None:
    print(f"\nbaseline: imagededup PHash().find_duplicates(image_dir, max_distance_threshold={THRESHOLD}) "
          f"+ fastai verify_images; ours: `mlc curate` (cli.main), curate.hamming_threshold {THRESHOLD}. Each run a fresh process; best of {repeat} "
          "each. 'whole': the process from start to exit; 'post-import': from after its imports to the end.\n")
    print("| file set | ours: whole / post-import | baseline: whole / post-import | speed-up, whole | "
          "speed-up, post-import |")
    print("|---|---|---|---|---|")
    for r in results:
        o, b = r["best"]["ours"], r["best"]["base"]
        print(f"| {r['name']}: {r['files']} files ({r['copies']} planted copies), {r['mib']:.0f} MiB "
              f"| wall {o['wall']:.2f} / {o['inner_wall']:.2f} s, CPU {o['cpu']:.2f} / {o['inner_cpu']:.2f} s "
              f"| wall {b['wall']:.2f} / {b['inner_wall']:.2f} s, CPU {b['cpu']:.2f} / {b['inner_cpu']:.2f} s "
              f"| wall {b['wall'] / o['wall']:.2f}x, CPU {b['cpu'] / o['cpu']:.2f}x "
              f"| wall {b['inner_wall'] / o['inner_wall']:.2f}x, CPU **{b['inner_cpu'] / o['inner_cpu']:.2f}x** |")
    print("\n| file set | side | " + " | ".join(EDITS) + " | false pairs | other |")
    print("|---|---|" + "---|" * (len(EDITS) + 2))
    for r in results:
        print(f"| {r['name']} | ours | " + " | ".join(r["ours_recall"][e] for e in EDITS)
              + f" | {r['ours_false']} | dropped {r['ours_dups']}, rejected {r['ours_rejected'] or 0} |")
        print(f"| {r['name']} | imagededup PHash + fastai | " + " | ".join(r["base_recall"][e] for e in EDITS)
              + f" | {r['base_false']} | verify_images failed {r['base_failed']}; find_duplicates "
              f"{r['dedup_share']:.0%} of its post-import wall |")
    print("\nevery run (wall, CPU, post-import wall, post-import CPU; s):")
    for r in results:
        print(f"  {r['name']}: ours {r['runs']['ours']}; baseline {r['runs']['baseline']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=("hymenoptera", "pets", "large"),
                        default=["hymenoptera", "pets", "large"])
    parser.add_argument("--large", type=int, default=150, help="JPEGs of 2000-4000 px in the large set")
    parser.add_argument("--share", type=float, default=0.05, help="share of the photos given planted copies")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the best is reported")
    parser.add_argument("--profile", type=Path, help="also write a cProfile of one `mlc curate` per set here")
    parser.add_argument("--baseline-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ours-child", type=Path, help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--ours-child"]:
        ours_child(Path(sys.argv[2]), sys.argv[3:])
    args = parser.parse_args()
    if args.baseline_child:
        baseline_child(*args.baseline_child)
        return
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    results = []
    with tempfile.TemporaryDirectory(prefix="curstage-") as tmp:
        for name in args.sets:
            results.append(bench_set(name, args, Path(tmp)))
            print(f"{name}: done, load average {os.getloadavg()[0]:.2f}", flush=True)
    print_table(results, args.repeat)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
