"""Hostile files through the real `mlc curate` and `mlc predict`, with peak memory measured.

    .venv/bin/python bench/hostile.py [--copies 3] [--rss-ceiling-mb 2500] [--json out.json]

1. `mlc collect` a small dataset from the bundled server (default world, scale 0.1), then record
   every file of `tests/badfiles.py` (zero bytes, random bytes named .jpg, HTML, truncated
   JPEG/PNG/GIF/WebP, decompression bombs, tiny and extreme images, CMYK, 16-bit, palette with
   transparency, animated GIF, EXIF-rotated, wrong extensions...) `--copies` times in the catalog as
   if it had been downloaded: these are the bytes a lying server or a damaged disk can leave.
2. `mlc curate` and `mlc build`: every hostile file must end accepted (the valid-but-awkward ones)
   or rejected with the reason `tests/badfiles.py` expects; nothing undecodable may be published.
3. `mlc train` a tiny model, then `mlc predict --json` on the whole corpus: one answer per file,
   an error message for each unreadable one, never a crash.
Each command runs as a subprocess under a wall-clock limit (a hang fails the run); its peak RSS
(from wait4) must stay under the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from badfiles import make_bad_files  # noqa: E402  (the same corpus the unit tests use)
from common import source_yaml  # noqa: E402

from mlc_pipeline.catalog import Catalog, Found  # noqa: E402
from mlc_pipeline.flickr_server import FlickrServer, WorldSpec  # noqa: E402

ENV = {**os.environ, "FLICKR_API_KEY": "hostile-key-0000", "FLICKR_API_SECRET": "hostile-secret-0000"}


def run_measured(args: list[str], timeout: float) -> dict:
    """Run `mlc ARGS...` under a wall-clock limit: its exit, output, and its own peak RSS from os.wait4
    (not a running maximum over children)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mlc_pipeline.cli", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hung = False
    deadline = t0 + timeout
    out_chunks, err_chunks = [], []
    def pump(stream, sink):
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out_chunks), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err_chunks), daemon=True)]
    for t in threads:
        t.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            hung = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join(timeout=5)
    return {"code": proc.returncode, "hung": hung, "seconds": round(time.monotonic() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "stdout": b"".join(out_chunks).decode(errors="replace"),
            "stderr": b"".join(err_chunks).decode(errors="replace")}


def write_config(path: Path, data_dir: Path, srv: FlickrServer) -> Path:
    path.write_text(f"""
data_dir: {data_dir}
{source_yaml(srv)}
classes:
  balloon: {{queries: [balloon], count: 40}}
  kite: {{queries: [kite], count: 40}}
  sailboat: {{queries: [sailboat], count: 40}}
other: {{queries: [landscape, texture], count: 60}}
train: {{epochs: 2, image_size: 32, compare_baselines: false}}
""")
    return path


def plant(cfg_data: Path, corpus: dict, copies: int) -> dict[str, tuple[str, str | None]]:
    """Record each hostile file as a downloaded 'other' candidate; returns photo_id -> (case, expected)."""
    raw = cfg_data / "raw" / "hostile"
    raw.mkdir(parents=True, exist_ok=True)
    planted = {}
    with Catalog(cfg_data / "catalog.sqlite") as catalog:
        run_id = catalog.start_run("hostile-plant")
        found = []
        for k in range(copies):
            for name, bad in corpus.items():
                pid = f"hostile{k}{name.replace('-', '')}"
                dest = raw / f"{pid}{bad.path.suffix}"
                shutil.copyfile(bad.path, dest)
                planted[pid] = (name, bad.reason, str(dest))
                found.append(Found("local", pid, "train", "other", "hostile", f"http://127.0.0.1/{pid}", "url_m",
                                   None, None, 4, "CC BY 2.0", "x@N00", "hostile", name, None, None, "hostile"))
        catalog.upsert_found(found, run_id)
        with catalog.transaction():
            for pid, (_, _, dest) in planted.items():
                row = catalog.get_by_photo("local", pid)
                catalog.set_status(row["id"], "downloaded", None, run_id, "download", file_path=dest,
                                   bytes=Path(dest).stat().st_size)
        catalog.finish_run(run_id, "completed", {"planted": len(planted)})
    return planted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3, help="how many times each hostile file is planted")
    ap.add_argument("--rss-ceiling-mb", type=int, default=2500)
    ap.add_argument("--timeout", type=float, default=300, help="seconds any one command may take")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()

    report: dict = {"commands": {}}
    with tempfile.TemporaryDirectory(prefix="mlc-hostile-") as tmp, \
            FlickrServer(WorldSpec(seed=0, scale=0.1)) as srv:
        work = Path(tmp)
        corpus = make_bad_files(work / "corpus")
        data = work / "data"
        cfg = write_config(work / "hostile.yaml", data, srv)
        report["commands"]["collect"] = run_measured(["collect", "-c", str(cfg), "--no-progress"], args.timeout)
        planted = plant(data, corpus, args.copies)
        for name, cmd in [("curate", ["curate", "-c", str(cfg)]), ("build", ["build", "-c", str(cfg)]),
                          ("train", ["train", "-c", str(cfg)])]:
            report["commands"][name] = run_measured(cmd, args.timeout)
        failed = {k: v for k, v in report["commands"].items() if v["code"] != 0 or v["hung"]}
        if failed:  # without a model there is nothing to predict with: say which command broke
            for name, c in failed.items():
                print(f"{name} exit {c['code']}{' HUNG' if c['hung'] else ''}:\n{c['stderr'][-3000:]}")
            print("HOSTILE: FAIL")
            return 1
        bundle = data / "models" / (data / "models" / "LATEST").read_text().strip()
        files = [p for _, _, p in planted.values()]
        report["commands"]["predict"] = run_measured(["predict", str(bundle), *files, "--json"], args.timeout)

        with Catalog(data / "catalog.sqlite", readonly=True) as catalog:
            fate = {r["photo_id"]: (r["status"], r["reason"]) for r in catalog.candidates()
                    if r["photo_id"].startswith("hostile")}
        wrong = []
        for pid, (case, expected, _) in planted.items():
            status, reason = fate.get(pid, ("missing", None))
            got = None if status == "accepted" else reason
            # copies of a valid file are exact duplicates of each other: one accepted, the rest duplicate
            ok = (status in ("accepted", "duplicate") if expected is None else
                  status == "rejected" and (reason or "").startswith(expected))
            if not ok:
                wrong.append({"case": case, "expected": expected, "status": status, "reason": got})
        predictions = []
        pred = report["commands"]["predict"]
        try:
            predictions = json.loads(pred["stdout"])
        except json.JSONDecodeError as exc:
            report["predict_output_error"] = str(exc)
        answered = {Path(p["path"]).name for p in predictions}
        errors = {Path(p["path"]).name: p.get("error") for p in predictions if p.get("error")}
        expected_errors = {Path(p).name for pid, (_, reason, p) in planted.items() if reason is not None}
        report.update({
            "planted": len(planted), "cases": len(corpus),
            "curate_outcomes": sorted({(v[0], (v[1] or "").split(":")[0]) for v in fate.values()}),
            "wrong_outcomes": wrong,
            "predict_answered": len(answered), "predict_errors": len(errors),
            "predict_unanswered": sorted({Path(p).name for p in files} - answered),
            "predict_error_for_valid_files": sorted(set(errors) - expected_errors),
            "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in report["commands"].items()},
        })
    cmds = report["commands"]
    # `mlc predict` exits 1 when some inputs could not be scored (each listed with its error), which
    # a corpus of hostile files always has; every other command must exit 0.
    expected_code = {name: 1 if name == "predict" and report.get("predict_errors") else 0 for name in cmds}
    ok = (all(c["code"] == expected_code[name] and not c["hung"] for name, c in cmds.items())
          and not report["wrong_outcomes"]
          and not report["predict_unanswered"] and not report["predict_error_for_valid_files"]
          and all(v <= args.rss_ceiling_mb for v in report["peak_rss_mb"].values()))
    for name, c in cmds.items():
        print(f"{name:8s} exit {c['code']} in {c['seconds']:6.1f} s, peak RSS {c['peak_rss_mb']} MB"
              + (" HUNG" if c["hung"] else "") + ("" if c["code"] == expected_code[name] else f"\n{c['stderr'][-1500:]}"))
    print(f"{report['planted']} hostile files ({report['cases']} cases x {args.copies}): "
          f"{len(report['wrong_outcomes'])} with an unexpected curate outcome; predict answered "
          f"{report['predict_answered']}, {report['predict_errors']} with an error message; "
          f"unanswered {report['predict_unanswered']}; errors on valid files {report['predict_error_for_valid_files']}")
    if report["wrong_outcomes"]:
        print(json.dumps(report["wrong_outcomes"], indent=1))
    print("HOSTILE: PASS" if ok else "HOSTILE: FAIL")
    if args.json:
        slim = {k: v for k, v in report.items() if k != "commands"}
        slim["commands"] = {k: {x: y for x, y in v.items() if x not in ("stdout", "stderr")} for k, v in cmds.items()}
        Path(args.json).write_text(json.dumps(slim, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
