"""Finished downloads the catalog never recorded (the collect27 audit, D2 and D3).

A download worker renames a finished file into raw/ and the main thread records it a moment later:
a collect killed in between (kill -9) or whose catalog write failed (a full disk) leaves complete
images no row names. The next collect adopts them (their candidate pending) or deletes them, and a
takedown deletes a photo's file whether or not a row names it. Real `mlc` processes, a real SIGKILL,
a real full tmpfs in a user+mount namespace (`unshare -rm`).
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from helpers import ENV, MLC, needs_namespaces, write_config

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.layout import photo_shard

# `mlc` that kills itself with SIGKILL as it is about to record its n-th finished download: that
# file is in raw/ already (and those the other workers finished meanwhile), its row still pending.
KILLED_AT = """
import os, signal, sys
from mlc_pipeline.catalog import Catalog
n, real, seen = int(sys.argv[1]), Catalog.set_status, [0]

def set_status(self, cid, status, *args, **fields):
    if status == "downloaded":
        seen[0] += 1
        if seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, cid, status, *args, **fields)

Catalog.set_status = set_status
from mlc_pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def image_files(data: Path) -> dict[str, str]:
    "Every image file under raw/ (temp files are hidden), with its sha256."
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (data / "raw").rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def recorded(data: Path) -> dict[str, dict]:
    "file path -> row, for every row that names a file."
    with Catalog(data / "catalog.sqlite", readonly=True) as c:
        return {r["file_path"]: r for r in c.candidates("file_path IS NOT NULL")}


def pending_ids(data: Path) -> set[str]:
    with Catalog(data / "catalog.sqlite", readonly=True) as c:
        return {r["photo_id"] for r in c.candidates(status="pending")}


def killed_collect(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A collect killed (SIGKILL) as it records its 12th download: (config, data root, the image files
    no row names, with their sha256)."""
    cfg = write_config(tmp_path, count=40)
    data = tmp_path / "data"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "12", "collect", "-c", str(cfg), "--no-progress"],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rows = recorded(data)
    orphans = {p: sha for p, sha in image_files(data).items() if p not in rows}
    assert orphans, "the kill left no unrecorded file: the test proves nothing"
    pending = pending_ids(data)
    assert all(Path(p).name.split(".")[0] in pending for p in orphans)
    return cfg, data, orphans


def collect_again(cfg: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(MLC + ["collect", "-c", str(cfg), "--no-progress"], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_a_takedown_deletes_a_file_a_killed_collect_did_not_record(tmp_path):
    """The audit's case: `mlc remove` said `0 file(s) deleted` and the photo stayed in raw/, even
    after a full rerun of collect."""
    cfg, data, orphans = killed_collect(tmp_path)
    taken = sorted(orphans)[0]
    photo = Path(taken).name.split(".")[0]
    res = subprocess.run(MLC + ["remove", "-c", str(cfg), "--photo-id", photo, "--reason", "owner request"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "removed 1 photo(s)" in res.stdout and "; 1 file(s) deleted" in res.stdout, res.stdout
    assert not Path(taken).exists()
    with Catalog(data / "catalog.sqlite", readonly=True) as c:
        assert c.runs()[0]["command"] == "remove" and '"files_deleted": 1' in c.runs()[0]["summary"]
    collect_again(cfg)
    assert not Path(taken).exists() and not any(Path(taken).parent.glob(f"{photo}.*"))
    with Catalog(data / "catalog.sqlite", readonly=True) as c:
        assert c.get_by_photo("local", photo)["status"] == "removed"


def test_the_next_collect_adopts_the_files_a_killed_one_did_not_record(tmp_path):
    """Adopted when the photo's candidate is pending (sha256 and size of the bytes on disk, not
    fetched again); deleted when no candidate waits for it; a third collect changes nothing."""
    cfg, data, orphans = killed_collect(tmp_path)
    stray = data / "raw" / "local" / photo_shard("990077") / "990077.jpg"     # a photo the catalog does not know
    stray.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sorted(orphans)[-1], stray)
    collect_again(cfg)
    after, rows = image_files(data), recorded(data)
    assert set(after) == set(rows), f"in raw/ but named by no row: {sorted(set(after) - set(rows))[:5]}"
    assert not stray.exists()
    for path, sha in orphans.items():
        row = rows[path]
        assert row["status"] == "downloaded" and row["sha256"] == sha == after[path]
        assert row["bytes"] == Path(path).stat().st_size and row["content_type"] == "image/jpeg"
    with Catalog(data / "catalog.sqlite", readonly=True) as c:
        adopted = [e for r in rows.values() for e in c.events(r["id"]) if e["stage"] == "adopt"]
    assert len(adopted) == len(orphans)
    again = collect_again(cfg)
    assert "adopted" not in again.stderr, again.stderr[-2000:]
    assert image_files(data) == after and recorded(data).keys() == rows.keys()


@needs_namespaces
def test_a_full_disk_under_the_catalog_is_one_line_and_loses_nothing(tmp_path):
    """The catalog's disk fills up: one line naming the catalog and its disk, exit 1 (a traceback and
    `mlc: OperationalError: database or disk is full` before); the images finished but not recorded
    are adopted by the rerun. raw/ has its own tmpfs here, so that the catalog's write is the one that
    fails (on one disk, which write finds it full first is a race; the image's is tested in
    test_interrupts.py)."""
    cfg = write_config(tmp_path, count=40)
    data, kept = tmp_path / "data", tmp_path / "kept"
    data.mkdir()
    script = (f"set -e; mount -t tmpfs -o size=400k tmpfs {data}; mkdir {data}/raw; "
              f"mount -t tmpfs -o size=20m tmpfs {data}/raw; rc=0; \"$@\" 2> {tmp_path}/err || rc=$?; "
              f"cp -a {data} {kept}; exit $rc")
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *MLC, "collect", "-c", str(cfg), "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    err = (tmp_path / "err").read_text()
    assert res.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "OperationalError" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"mlc: cannot write to the catalog {data / 'catalog.sqlite'}: the disk mounted at "
                           f"{data} (") and "is full (SQLITE_FULL); free space there" in last, last
    before = image_files(kept)
    rows = recorded(kept)
    assert set(before) - set(rows), "no finished image was left unrecorded: the test proves nothing"
    rerun = subprocess.run(MLC + ["collect", "-c", str(cfg), "--no-progress", "--set", f"data_dir={kept}"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = recorded(kept)
    assert set(image_files(kept)) == set(after)
    for path, sha in before.items():         # every image finished before the stop is kept, recorded
        assert path in after and after[path]["sha256"] == sha, (path, path in rows)
    # The stopped run could not record its end (that needs the disk too): the rerun records it failed
    # with the line, from the room the run kept for it (catalog/runs.py; `crashed` until collect28).
    with Catalog(kept / "catalog.sqlite", readonly=True) as c:
        ended = {r["status"]: json.loads(r["summary"]) for r in c.runs()}
    assert set(ended) == {"failed", "completed"}, ended
    assert "is full (SQLITE_FULL)" in ended["failed"]["error"], ended["failed"]
    assert not list((kept / "runs").iterdir())
