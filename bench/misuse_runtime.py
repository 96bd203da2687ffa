"""Issue 16, part B, rerun as a user would: signals, slow hosts, bad disks, bad catalogs, bombs.

    .venv/bin/python bench/misuse_runtime.py [--json out.json]

Every case runs real `mlc` processes on a small config against the bundled server (source.kind
local, so each process starts its own server). Disk faults are real too: a tiny tmpfs or a
read-only bind mount in a user+mount namespace (`unshare -rm`); those cases say "skipped" where the
kernel forbids it. Prints a table case -> outcome and `MISUSE: PASS` / `MISUSE: FAIL` (exit 1).
A tiny model is trained first for the predict and export cases (the shapes dataset of tests/shapes.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import ENV, MLC, write_config  # noqa: E402  (the config and `mlc` the tests use)
from shapes import FAST, make_shapes_dataset, record_curation  # noqa: E402

from mlc_pipeline.catalog import Catalog  # noqa: E402
# `mlc` that prints its own peak memory (ru_maxrss, KB) as the last line of stderr.
MEASURED = [sys.executable, "-c", "import resource, sys\nfrom mlc_pipeline.cli import main\nrc = main(sys.argv[1:])\n"
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)"]


def mlc(*args: str, prefix: list[str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run((prefix or []) + MLC + list(args), env=ENV, capture_output=True, text=True, timeout=timeout)


def last(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def clean(res: subprocess.CompletedProcess) -> bool:
    """Failed, if it failed, with one `mlc:` line and no traceback."""
    return "Traceback" not in res.stderr and last(res).startswith("mlc: ")


def namespace(mounts: str) -> list[str] | None:
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return None if probe.returncode else ["unshare", "-rm", "sh", "-c", f"set -e; {mounts}; exec \"$@\"", "sh"]


def catalog(data: Path) -> Catalog:
    """The data root's catalog as `mlc inspect` reads it: never writes, never waits for a writer."""
    return Catalog(data / "catalog.sqlite", readonly=True)


def with_status(data: Path, status: str) -> list[dict]:
    with catalog(data) as c:
        return [r for r in c.candidates() if r["status"] == status]


def runs_of(data: Path, command: str | None = None) -> list[dict]:
    """The data root's runs, latest first (one whose process is gone reads `crashed`, as `mlc inspect` shows it)."""
    with catalog(data) as c:
        return [r for r in c.runs(limit=1000) if command in (None, r["command"])]


def images_on_disk(data: Path) -> set[str]:
    return {str(p) for p in (data / "raw").rglob("*") if p.is_file() and not p.name.startswith(".")}


# --- the cases -------------------------------------------------------------------------------------

def default_signals() -> None:
    """In the child: Ctrl-C as in a terminal (a shell's background job starts with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_collect(work: Path, sig: int, name: str) -> tuple[str, bool]:
    cfg = write_config(work, data=name, count=120, faults="image_latency_ms=300", per_host_concurrency=4)
    proc = subprocess.Popen(MLC + ["collect", "-c", str(cfg), "--no-progress"], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_signals)
    t0 = time.monotonic()
    while not (work / name / "raw").exists() or len(images_on_disk(work / name)) < 20:
        if proc.poll() is not None or time.monotonic() - t0 > 120:
            return f"collect ended before the signal: {proc.communicate()[1][-300:]}", False
        time.sleep(0.05)
    at_signal = len(images_on_disk(work / name))
    proc.send_signal(sig)
    t_sig = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t_sig
    after = len(images_on_disk(work / name)) - at_signal
    recorded = {r["file_path"] for r in with_status(work / name, "downloaded")}   # paths under the data root
    on_disk = images_on_disk(work / name)
    status = runs_of(work / name)[0]["status"]
    unknown = len(on_disk - recorded)
    line = err.strip().splitlines()[-1] if err.strip() else ""
    # At most the 4 downloads in flight (and 4 more racing our count) may still land.
    ok = after <= 8 and unknown == 0 and proc.returncode in (130, 143) and status == "interrupted"
    return (f"exit {proc.returncode} {took:.1f} s after the signal, {after} images landed after it; "
            f"{len(on_disk)} in raw/, {unknown} unknown to the catalog; run `{status}`; \"{line}\""), ok


def trickle(work: Path) -> tuple[str, bool]:
    cfg = write_config(work, data="trickle", count=20, faults="trickle=0.1,trickle_ms=5000", download_deadline_s=5)
    t0 = time.monotonic()
    try:
        res = mlc("collect", "-c", str(cfg), "--no-progress", timeout=300)
    except subprocess.TimeoutExpired:
        return "collect still running after 300 s: killed", False
    took = time.monotonic() - t0
    with catalog(work / "trickle") as c:
        reasons = [(r["reason"], r["n"]) for r in c.reasons() if r["status"] == "failed"]
    ok = res.returncode == 0 and took < 120 and reasons and all(r.startswith("transient:deadline-exceeded") for r, _ in reasons)
    return f"exit {res.returncode} after {took:.0f} s; failed: {dict(reasons)}", ok


def disk_fault(work: Path, name: str, mounts: str, expect: str) -> tuple[str, bool]:
    cfg = write_config(work, data=name, count=40)
    raw = work / name / "raw"
    raw.mkdir(parents=True)
    prefix = namespace(mounts.format(raw=raw))
    if prefix is None:
        return "skipped: no user+mount namespaces here", True
    t0 = time.monotonic()
    res = mlc("collect", "-c", str(cfg), "--no-progress", prefix=prefix)
    took = time.monotonic() - t0
    with catalog(work / name) as c:
        counts = c.status_counts()
    failed, stored = counts.get("failed", 0), counts.get("downloaded", 0)
    ok = res.returncode == 1 and clean(res) and expect in last(res) and failed == 0
    return (f"exit {res.returncode} after {took:.1f} s; {stored} stored, {failed} candidates failed; "
            f"\"{last(res)[:150]}\""), ok


def cross_device(work: Path) -> tuple[str, bool]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == work.stat().st_dev:
        return "skipped: no second file system at /dev/shm", True
    elsewhere = Path(tempfile.mkdtemp(dir=shm, prefix="mlc-misuse-"))
    try:
        cfg = write_config(work, data="xdev", count=40)
        (work / "xdev").mkdir()
        (work / "xdev" / "raw").symlink_to(elsewhere)
        res = mlc("collect", "-c", str(cfg), "--no-progress")
        with catalog(work / "xdev") as c:
            stored = c.status_counts().get("downloaded", 0)
    finally:
        shutil.rmtree(elsewhere)
    return f"exit {res.returncode}; {stored} images stored on the other file system", res.returncode == 0 and stored >= 100


def collected(work: Path, name: str, count: int = 8) -> Path:
    cfg = write_config(work, data=name, count=count)
    res = mlc("collect", "-c", str(cfg), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    return cfg


def empty_catalog(work: Path) -> tuple[str, bool]:
    cfg = write_config(work, data="empty", count=8)
    (work / "empty").mkdir()
    (work / "empty" / "catalog.sqlite").write_bytes(b"")
    res = mlc("collect", "-c", str(cfg), "--no-progress")
    size = (work / "empty" / "catalog.sqlite").stat().st_size
    downloaded = (work / "empty" / "raw").exists()
    ok = res.returncode == 1 and clean(res) and size == 0 and not downloaded
    return f"exit {res.returncode}; nothing downloaded: {not downloaded}; \"{last(res)[:160]}\"", ok


def malformed_catalog(work: Path) -> tuple[str, bool]:
    cfg = collected(work, "malformed")
    db = work / "malformed" / "catalog.sqlite"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    res = mlc("inspect", "-c", str(cfg))
    ok = res.returncode == 1 and clean(res) and str(db) in last(res) and len(res.stderr.strip().splitlines()) == 1
    return f"exit {res.returncode}; \"{last(res)[:160]}\"", ok


def read_only_root(work: Path) -> tuple[str, bool]:
    cfg = collected(work, "readonly")
    data = work / "readonly"
    prefix = namespace(f"mount --bind {data} {data}; mount -o remount,bind,ro {data}")
    if prefix is None:
        return "skipped: no user+mount namespaces here", True
    res = mlc("inspect", "-c", str(cfg), prefix=prefix)
    col = mlc("collect", "-c", str(cfg), "--no-progress", prefix=prefix)
    ok = res.returncode == 0 and "balloon" in res.stdout and col.returncode == 1 and clean(col)
    return f"inspect exit {res.returncode}; collect exit {col.returncode}: \"{last(col)[:120]}\"", ok


def locked_catalog(work: Path) -> tuple[str, bool]:
    cfg = collected(work, "locked", count=5)
    db = work / "locked" / "catalog.sqlite"
    # Raw SQL on purpose: the holder is another program (a DB browser, the sqlite3 shell), not mlc.
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "db.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(600)",
                               str(db)], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    proc = subprocess.Popen(MLC + ["collect", "-c", str(cfg), "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    said = ""
    for line in proc.stderr:          # the lock is held until collect says what it waits for
        if "locked by another process" in line:
            said = line.strip().split(": ", 1)[-1]
            break
    t_said = time.monotonic()
    time.sleep(2)
    holder.kill()
    holder.wait()
    proc.communicate(timeout=300)
    took = time.monotonic() - t_said
    ok = proc.returncode == 0 and bool(said)
    return f"said \"{said[:150]}\"; lock released 2 s later; exit {proc.returncode} {took:.0f} s after the line", ok


def sigterm_curate(work: Path) -> tuple[str, bool]:
    cfg = collected(work, "curate-term", count=40)
    proc = subprocess.Popen(MLC + ["curate", "-c", str(cfg)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not runs_of(work / "curate-term", "curate"):     # curate has started its run
        if proc.poll() is not None:
            return f"curate ended before its run began: {proc.communicate()[1][-200:]}", False
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    status = runs_of(work / "curate-term", "curate")[0]["status"]
    if proc.returncode == 0 and status == "completed":      # it won the race: nothing was interrupted
        return "curate finished before the signal landed: not exercised (tests/test_interrupts.py is)", True
    return f"exit {proc.returncode}; run `{status}`", proc.returncode == 143 and status == "interrupted"


def built(work: Path, name: str) -> Path:
    cfg = collected(work, name)
    for stage in ("curate", "build"):
        res = mlc(stage, "-c", str(cfg))
        assert res.returncode == 0, res.stderr[-2000:]
    return cfg


def latest_folder(work: Path) -> tuple[str, bool]:
    cfg = built(work, "latest")
    latest = work / "latest" / "datasets" / "default" / "latest"
    target = latest.resolve()
    latest.unlink()
    shutil.copytree(target, latest)
    res = mlc("build", "-c", str(cfg))
    again = mlc("build", "-c", str(cfg))
    aside = [p.name for p in latest.parent.iterdir() if p.name.startswith("latest.real-folder-")]
    warned = [line for line in res.stderr.splitlines() if "real folder" in line]
    ok = res.returncode == 0 and again.returncode == 0 and latest.is_symlink() and len(aside) == 1 and len(warned) == 1
    return f"build exit {res.returncode}, then {again.returncode}; latest a link again; kept aside: {aside}", ok


def two_curates(work: Path) -> tuple[str, bool]:
    cfg = collected(work, "two-curates", count=40)
    data = work / "two-curates"
    for row in with_status(data, "downloaded")[:15]:
        p = Path(row["file_path"])                                   # under the data root
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])      # truncated: to be quarantined
    procs = [subprocess.Popen(MLC + ["curate", "-c", str(cfg)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    errors = [p.stderr.read().strip().splitlines()[-1:] for p in procs]
    rejected = with_status(data, "rejected")
    in_place = sum(Path(r["file_path"]).is_file() for r in rejected)
    ok = codes == [0, 0] and len(rejected) == 15 and in_place == 15
    return f"exit codes {codes}; {in_place} of {len(rejected)} rejected files in quarantine; {errors if not ok else ''}", ok


def full_disk_build(work: Path) -> tuple[str, bool]:
    cfg = collected(work, "build-full")
    res = mlc("curate", "-c", str(cfg))
    datasets = work / "build-full" / "datasets"
    datasets.mkdir()
    prefix = namespace(f"mount -t tmpfs -o size=48k tmpfs {datasets}")
    if prefix is None:
        return "skipped: no user+mount namespaces here", True
    res = mlc("build", "-c", str(cfg), prefix=prefix)
    ok = res.returncode == 1 and clean(res) and "ENOSPC" in last(res) and len(res.stderr.strip().splitlines()) == 1
    return f"exit {res.returncode}; \"{last(res)[:150]}\"", ok


def full_disk_export(work: Path, bundle: Path) -> tuple[str, bool]:
    out = work / "models-full"
    out.mkdir()
    prefix = namespace(f"mount -t tmpfs -o size=256k tmpfs {out}")
    if prefix is None:
        return "skipped: no user+mount namespaces here", True
    code = ("import sys\nfrom pathlib import Path\nfrom fastai.learner import load_learner\n"
            "from mlc_pipeline.cli import main\nfrom mlc_pipeline.model import bundle\n"
            f"learn = load_learner({str(bundle / 'export.pkl')!r}, cpu=True)\n"
            "def run(args):\n"
            f"    bundle.export_learner(learn, Path({str(out)!r}) / 'export.pkl')\n"
            "    return 0\n"
            "import mlc_pipeline.model_commands as model_commands\nmodel_commands.cmd_predict = run\n"   # the cli's error handling around the export
            f"sys.exit(main(['predict', {str(bundle)!r}, 'x']))\n")
    res = subprocess.run(prefix + [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    ok = res.returncode == 1 and clean(res) and "No space left on device for the model bundle" in last(res)
    return f"exit {res.returncode}; \"{last(res)[:170]}\"", ok


def png_bomb(path: Path, side: int = 13000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row = zlib.compressobj(9), b"\0" * (side + 1)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def predict_bombs(work: Path, bundle: Path, good: list[str]) -> tuple[str, bool]:
    bombs = [str(png_bomb(work / f"bomb{i}.png")) for i in range(6)]
    res = subprocess.run(MEASURED + ["predict", str(bundle), good[0], *bombs, good[1]], env=ENV, capture_output=True,
                         text=True, timeout=600)
    peak_mb = int(res.stderr.strip().splitlines()[-1].split()[1]) / 1024
    errors = sum("error: too large" in line for line in res.stdout.splitlines())
    scored = sum("error" not in line for line in res.stdout.splitlines() if not line.startswith("# model "))
    ok = res.returncode == 1 and errors == 6 and scored == 2 and peak_mb < 2000
    return (f"exit {res.returncode}; {errors} refused from their headers, {scored} scored; peak RSS "
            f"{peak_mb:.0f} MB", ok)


def tiny_bundle(work: Path) -> tuple[Path, list[str]]:
    from mlc_pipeline.model.train import TrainConfig, train_model

    from mlc_pipeline.manifest import read_manifest_frame
    manifest = make_shapes_dataset(work / "shapes")
    record_curation(manifest.parent)          # the 40 px shapes: predict refuses what curation would
    train_model(manifest, work / "bundle", TrainConfig(**FAST), dataset_version="misuse")
    df = read_manifest_frame(manifest)
    return work / "bundle", list(df[df["split"] == "test"]["abs_path"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the table here too")
    parser.add_argument("--only", action="append", metavar="TEXT", help="run only the cases whose name holds TEXT")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlc-misuse-"))
    cases = [
        ("7. Ctrl-C during collect", lambda: signal_collect(work, signal.SIGINT, "sigint")),
        ("SIGTERM during collect", lambda: signal_collect(work, signal.SIGTERM, "sigterm")),
        ("SIGTERM during curate", lambda: sigterm_curate(work)),
        ("8. host trickling 1 byte / 5 s (deadline 5 s)", lambda: trickle(work)),
        ("9. disk full under data/raw (100 KB tmpfs)",
         lambda: disk_fault(work, "full", "mount -t tmpfs -o size=100k tmpfs {raw}", "ENOSPC")),
        ("9. data/raw read-only", lambda: disk_fault(
            work, "rofs", "mount --bind {raw} {raw}; mount -o remount,bind,ro {raw}", "EROFS")),
        ("9. data/raw on another file system", lambda: cross_device(work)),
        ("0-byte catalog", lambda: empty_catalog(work)),
        ("malformed catalog (truncated)", lambda: malformed_catalog(work)),
        ("read-only data root", lambda: read_only_root(work)),
        ("locked catalog (held until collect says it waits)", lambda: locked_catalog(work)),
        ("datasets/<name>/latest made a real folder", lambda: latest_folder(work)),
        ("two `mlc curate` at once", lambda: two_curates(work)),
        ("full disk during build", lambda: full_disk_build(work)),
    ]
    model: list = []      # trained once, when a case first needs it

    def needs_model(case):
        return lambda: case(*(model or model.extend(tiny_bundle(work)) or model))

    cases += [("predict: six 13000x13000 PNGs + 2 photos", needs_model(lambda b, g: predict_bombs(work, b, g))),
              ("full disk during the model export", needs_model(lambda b, g: full_disk_export(work, b)))]
    if args.only:
        cases = [(name, case) for name, case in cases if any(text in name for text in args.only)]
    table, all_ok = [], True
    for name, case in cases:
        t0 = time.monotonic()
        try:
            outcome, ok = case()
        except Exception as exc:  # a broken case is a failed case, and the others still run
            outcome, ok = f"case crashed: {type(exc).__name__}: {exc}", False
        table.append({"case": name, "outcome": outcome, "ok": ok, "seconds": round(time.monotonic() - t0, 1)})
        all_ok &= ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {outcome}", flush=True)
    print("\n| case | outcome | ok |\n|---|---|---|")
    for row in table:
        print(f"| {row['case']} | {row['outcome'].replace('|', '/')} | {'yes' if row['ok'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print("MISUSE: PASS" if all_ok else "MISUSE: FAIL")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
