"""Misuse of the data root, as a user would do it: overlapping runs, a copied or moved data root, a
damaged or hand-edited dataset version, config values that escape or break (issue 16, cases 1-6).

    .venv/bin/python bench/misuse_storage.py [--project PATH] [--json out.json] [--skip-train]

Every case runs real `mlc` subprocesses against a small config and the bundled Flickr-compatible
server started by this script, on a fresh copy of one collected and curated data root. It prints a
table: case -> lost anything?, exit codes, the last line the user saw. `--project` runs the `mlc`
of another checkout (e.g. the code before the fixes) with this script and server.

A case "loses" something when images, a model or files outside the data root are missing, wrong or
replaced while the commands say nothing; a clear refusal with a non-zero exit code loses nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import source_yaml

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.flickr_server import FlickrServer, WorldSpec

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FLICKR_API_KEY": "misuse-key-0000", "FLICKR_API_SECRET": "misuse-secret-0000"}


def write_config(path: Path, data_dir: Path, srv: FlickrServer, extra: str = "") -> Path:
    path.write_text(f"""
data_dir: {data_dir}
{source_yaml(srv, per_page=50)}
classes:
  balloon: {{queries: [balloon], count: 40}}
  kite: {{queries: [kite], count: 40}}
other: {{queries: [landscape, texture], count: 40}}
probe: {{queries: [house], count: 12}}
build: {{max_side: 96}}
train: {{epochs: 1, image_size: 32, batch_size: 32, pretrained: none, compare_baselines: false}}
{extra}
""")
    return path


class Bench:
    def __init__(self, project: Path, work: Path, srv: FlickrServer):
        self.project, self.work, self.srv = project, work, srv
        self.env = {**ENV, "PYTHONPATH": str(project)}

    def mlc(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.work)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mlc_pipeline.cli", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.work)

    def fresh(self, name: str, extra: str = "") -> tuple[Path, Path]:
        """A copy of the collected + curated base root (and a built v1 if there is one)."""
        data = self.work / name
        shutil.copytree(self.work / "base", data, symlinks=True)
        return write_config(self.work / f"{name}.yaml", data, self.srv, extra), data


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip() and "Warning" not in x and "warnings.warn" not in x]
    return lines[-1][:220] if lines else ""


def manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def latest(data: Path) -> Path:
    return data / "datasets" / "default" / (data / "datasets" / "default" / "LATEST").read_text().strip()


def missing_images(folder: Path) -> int:
    return sum(not (folder / r["path"]).is_file() for r in manifest(folder))


def files_under(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def outcome(case: str, lost: str, codes: list, message: str, **more) -> dict:
    return {"case": case, "lost": lost, "exit": ",".join(str(c) for c in codes), "message": message, **more}


# ---------------------------------------------------------------------------------------- cases

def two_builds(b: Bench, trials: int = 3) -> dict:
    """The race is timing-dependent: several trials, each two builds started together on a fresh root."""
    codes, lost, messages = [], [], []
    for trial in range(trials):
        cfg, data = b.fresh(f"two-builds-{trial}")
        shutil.rmtree(data / "datasets", ignore_errors=True)
        procs = [b.start("build", "-c", str(cfg)) for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        codes += [p.returncode for p in procs]
        messages += [last_line(e) for p, (_, e) in zip(procs, outs) if p.returncode]
        folder = latest(data)
        gone = missing_images(folder)
        again = b.mlc("build", "-c", str(cfg))
        if gone:
            lost.append(f"{gone} of {len(manifest(folder))} images missing from {folder.name} "
                        f"(next build: {'unchanged' if 'unchanged' in again.stdout else again.returncode})")
    return outcome(f"1. two `mlc build` at once ({trials} trials)", f"yes: {'; '.join(lost)}" if lost else "no",
                   codes, " / ".join(sorted(set(messages))) or "both exit 0")


def no_wait(b: Bench) -> dict:
    cfg, data = b.fresh("no-wait")
    shutil.rmtree(data / "datasets", ignore_errors=True)
    first = b.start("build", "-c", str(cfg))
    time.sleep(1.5)                        # the first build is importing and writing by now
    second = b.mlc("build", "-c", str(cfg), "--no-wait")
    first.communicate(timeout=600)
    gone = missing_images(latest(data))
    return outcome("1b. `mlc build --no-wait` while a build runs", f"yes: {gone} images missing" if gone else "no",
                   [first.returncode, second.returncode], last_line(second.stderr or second.stdout))


def two_trains(b: Bench, base_built: bool) -> dict:
    cfg, data = b.fresh("two-trains")
    if not base_built:
        b.mlc("build", "-c", str(cfg))
    procs = [b.start("train", "-c", str(cfg)) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    printed = [next((x.split(": ", 1)[1] for x in o.splitlines() if x.startswith("model bundle:")), None)
               for o, _ in outs]
    bundles = [p for p in (data / "models").iterdir() if p.is_dir() and (p / "bundle.json").exists()]
    lost = "no" if len(set(printed)) == 2 and None not in printed and len(bundles) == 2 else (
        f"yes: {len(bundles)} bundle(s) for 2 trainings, printed {len(set(p for p in printed if p))} distinct path(s)")
    return outcome("2. two `mlc train` started together", lost, [p.returncode for p in procs],
                   " | ".join(Path(p).name if p else last_line(e) for p, (_, e) in zip(printed, outs)))


def collected_root(b: Bench, name: str, curated: bool = False) -> tuple[Path, Path]:
    """A root collected by its own `mlc collect` (a copy of another root would carry that root's
    paths in a catalog that stores absolute ones, which is the bug of case 3a itself)."""
    data = b.work / name
    cfg = write_config(b.work / f"{name}.yaml", data, b.srv)
    for stage in ("collect", "curate")[: 1 + curated]:
        res = b.mlc(stage, "-c", str(cfg), *(["--no-progress"] if stage == "collect" else []))
        assert res.returncode == 0, res.stderr[-2000:]
    return cfg, data


def curate_copy(b: Bench) -> dict:
    """A copy of a root whose downloads are not curated yet, curated with stricter settings."""
    _, original = collected_root(b, "copy-original")
    before = files_under(original / "raw")
    copy = b.work / "copy-of-root"
    shutil.copytree(original, copy, symlinks=True)
    cfg = write_config(b.work / "copy.yaml", copy, b.srv, "curate: {min_side: 400}")   # a stricter experiment
    res = b.mlc("curate", "-c", str(cfg))
    after = files_under(original / "raw")
    lost = f"yes: {before - after} files moved out of the original's raw/" if after != before else "no"
    rejected = json.loads(res.stdout[res.stdout.index("{"):]).get("rejected") if res.returncode == 0 else None
    return outcome("3a. curate a copy of the data root", lost, [res.returncode],
                   f"original raw/ files {before} -> {after}; the copy rejected {rejected}"
                   if res.returncode == 0 else last_line(res.stderr))


def move_root(b: Bench) -> dict:
    _, data = collected_root(b, "move-me", curated=True)
    moved = b.work / "moved-root"
    shutil.move(data, moved)
    cfg = write_config(b.work / "moved.yaml", moved, b.srv)
    res = b.mlc("curate", "-c", str(cfg))
    with Catalog(moved / "catalog.sqlite", readonly=True) as catalog:
        gone = sum(r["n"] for r in catalog.reasons() if r["reason"] == "transient:file-missing")
    lost = f"yes: {gone} images marked gone (collect downloads them again)" if gone else "no"
    return outcome("3b. move the data root, then curate", lost, [res.returncode],
                   last_line(res.stderr) if res.returncode else "curate completed")


def deleted_file(b: Bench, split: str) -> dict:
    cfg, data = b.fresh(f"deleted-{split}")
    folder = latest(data)
    victim = next(r["path"] for r in manifest(folder) if r["split"] == split)
    (folder / victim).unlink()
    build, train = b.mlc("build", "-c", str(cfg)), b.mlc("train", "-c", str(cfg))
    repair = b.mlc("build", "--repair", "-c", str(cfg))
    lost = "no" if train.returncode and build.returncode else (
        f"yes: build said {'unchanged' if 'unchanged' in build.stdout else build.returncode}, "
        f"train {'published a model' if train.returncode == 0 else 'crashed'} on a version missing a {split} file")
    return outcome(f"4. a {split} file deleted from the latest version", lost,
                   [build.returncode, train.returncode, repair.returncode],
                   last_line(train.stderr) + " | repair: " + last_line(repair.stdout or repair.stderr),
                   traceback_lines=train.stderr.count("\n") if "Traceback" in train.stderr else 0)


def edited_manifest(b: Bench, edit: str) -> dict:
    cfg, data = b.fresh(f"edited-{edit}")
    folder = latest(data)
    rows = manifest(folder)
    outside = b.work / "outside.jpg"
    shutil.copy(folder / rows[0]["path"], outside)
    if edit == "relabelled rows":
        for r in rows:
            if r["labels"] == "balloon":
                r["labels"] = "kite"
    elif edit == "../ path":
        rows[0]["path"] = os.path.relpath(outside, folder)
    else:
        rows[0]["path"] = str(outside)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = b.mlc("train", "-c", str(cfg))
    return outcome(f"5. hand-edited manifest: {edit}", "yes: trained on it silently" if res.returncode == 0 else "no",
                   [res.returncode], last_line(res.stderr) if res.returncode else last_line(res.stdout))


def config_case(b: Bench, name: str, command: list[str], extra: str = "", raw: bytes | None = None) -> dict:
    cfg, data = b.fresh(f"config-{len(list(b.work.glob('config-*')))}", extra)
    if raw is not None:
        cfg.write_bytes(raw)
    escape_probe = b.work.parent / "escape"
    t0 = time.monotonic()
    res = b.mlc(*command[:1], "-c", str(cfg), *command[1:])
    took = time.monotonic() - t0
    lost = "no"
    if escape_probe.exists() or (data.parent / "escape").exists():
        lost = "yes: wrote outside data_dir"
        shutil.rmtree(escape_probe, ignore_errors=True)
        shutil.rmtree(data.parent / "escape", ignore_errors=True)
    elif res.returncode == 0 and "split" in name:
        folder = latest(data)
        splits = {r["split"] for r in manifest(folder)}
        lost = "yes: published with splits " + ",".join(sorted(splits)) if "train" not in splits else "no"
    elif res.returncode == 0 and "lr" in name:
        lost = "yes: published a model trained with a negative learning rate"
    msg = last_line(res.stderr) if res.returncode else last_line(res.stdout) + " " + last_line(res.stderr)
    return outcome(f"6. {name}", lost, [res.returncode], msg, seconds=round(took, 1),
                   traceback="Traceback" in res.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=str(ROOT), help="checkout whose `mlc` runs the cases")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--skip-train", action="store_true", help="leave out the cases that train")
    ap.add_argument("--keep", help="work in this folder and keep it")
    ap.add_argument("--only", help="run only these cases (comma-separated names, e.g. curate_copy,move_root)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mlc-misuse-") as tmp:
        work = Path(args.keep or tmp) / "work"
        work.mkdir(parents=True, exist_ok=True)
        with FlickrServer(WorldSpec(seed=0, scale=0.1)) as srv:
            b = Bench(Path(args.project).resolve(), work, srv)
            base_cfg = write_config(work / "base.yaml", work / "base", srv)
            for stage in ("collect", "curate", "build"):
                res = b.mlc(stage, "-c", str(base_cfg), *(["--no-progress"] if stage == "collect" else []))
                if res.returncode:
                    print(f"setup: {stage} failed: {res.stderr[-2000:]}")
                    return 1
                if stage == "collect":         # a root with downloads not curated yet, for case 3a
                    shutil.copytree(work / "base", work / "collected", symlinks=True)
            cases = [("two_builds", lambda: two_builds(b)), ("no_wait", lambda: no_wait(b)),
                     ("two_trains", lambda: two_trains(b, True)),
                     ("curate_copy", lambda: curate_copy(b)), ("move_root", lambda: move_root(b)),
                     ("deleted_test", lambda: deleted_file(b, "test")), ("deleted_train", lambda: deleted_file(b, "train")),
                     ("edited_relabel", lambda: edited_manifest(b, "relabelled rows")),
                     ("edited_parent", lambda: edited_manifest(b, "../ path")),
                     ("edited_absolute", lambda: edited_manifest(b, "absolute path")),
                     ("config_name", lambda: config_case(b, "build.name=../../../escape",
                                                         ["build", "--set", "build.name=../../../escape"])),
                     ("config_split_keys", lambda: config_case(b, "split {training: 0.8, valid: 0.2}",
                                         ["build", "--set", "build.split={training: 0.8, valid: 0.2}", "--set", "build.max_side=90"])),
                     ("config_split_empty", lambda: config_case(b, "split {}", ["build", "--set", "build.split={}",
                                                                                "--set", "build.max_side=90"])),
                     ("config_lr", lambda: config_case(b, "train.lr=-1", ["train", "--set", "train.lr=-1"])),
                     ("config_arch", lambda: config_case(b, "arch=resnet_nope, mlc run",
                                                         ["run", "--set", "train.arch=resnet_nope", "--no-progress"])),
                     ("config_list", lambda: config_case(b, "YAML that is a list", ["build"], raw=b"- a\n- b\n")),
                     ("config_latin1", lambda: config_case(b, "config file in Latin-1", ["build"],
                                         raw=write_config(work / "latin.yaml", work / "x", srv).read_bytes()
                                         + "# caf\u00e9\n".encode("latin-1"))),
                     ("config_query", lambda: config_case(b, "same query under a class and mine.pool", ["build"],
                                         extra="mine: {rounds: 0, pool: {queries: [balloon], count: 5}}"))]
            cases = [(n, c) for n, c in cases if not (args.skip_train and n in ("two_trains", "config_lr"))
                     and (not args.only or n in args.only.split(","))]
            for name, case in cases:
                t0 = time.monotonic()
                try:
                    r = case()
                except Exception as exc:       # a case the code under test breaks outright: report it
                    r = outcome(name, f"bench error: {type(exc).__name__}: {exc}", [], "")
                r["bench_seconds"] = round(time.monotonic() - t0, 1)
                results.append(r)
                print(f"{r['case']}: lost {r['lost']}; exit {r['exit']}; {r['message']}", flush=True)
    print("\n| case | lost anything? | exit code(s) | last line the user sees |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['lost']} | {r['exit']} | {r['message'].replace('|', '/')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == "no" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
