"""Real-world misuse after collection: a `latest` copied into a real folder, two curates at once, a full
disk under build and under the model export. Real `mlc` processes on a small collected data root."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENV, MLC, needs_namespaces, write_config

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.fsutil import sha256_file


def mlc(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(MLC + list(args), env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """collect -> curate -> build of a small world; tests copy it before changing anything."""
    tmp = tmp_path_factory.mktemp("built")
    cfg = write_config(tmp, count=8)
    for stage in (["collect", "-c", str(cfg), "--no-progress"], ["curate", "-c", str(cfg)], ["build", "-c", str(cfg)]):
        res = mlc(*stage)
        assert res.returncode == 0, res.stderr[-2000:]
    return cfg


def copy_root(cfg: Path, tmp_path: Path) -> Path:
    """A copy of the data root with a config pointing at it (links copied as links)."""
    shutil.copytree(cfg.parent / "data", tmp_path / "data", symlinks=True)
    new = tmp_path / "c.yaml"
    new.write_text(cfg.read_text().replace(str(cfg.parent / "data"), str(tmp_path / "data")))
    return new


def test_latest_made_a_real_folder_is_moved_aside_and_repaired(built, tmp_path):
    cfg = copy_root(built, tmp_path)
    root = tmp_path / "data" / "datasets" / "default"
    latest = root / "latest"
    assert latest.is_symlink()
    target = latest.resolve()
    latest.unlink()
    shutil.copytree(target, latest)                 # what `cp -rL` leaves behind
    (latest / "my-notes.txt").write_text("a user's file")
    res = mlc("build", "-c", str(cfg))
    assert res.returncode == 0, res.stderr[-2000:]
    warned = [line for line in res.stderr.splitlines() if "was a real folder" in line]
    assert len(warned) == 1 and "moved it to latest.real-folder-" in warned[0], res.stderr
    assert latest.is_symlink() and latest.resolve() == target
    aside = [p for p in root.iterdir() if p.name.startswith("latest.real-folder-")]
    assert len(aside) == 1 and (aside[0] / "my-notes.txt").read_text() == "a user's file", "nothing deleted"
    res = mlc("build", "-c", str(cfg))
    assert res.returncode == 0 and "was a real folder" not in res.stderr, res.stderr[-2000:]


def test_two_curates_at_once_both_finish_and_lose_no_file(built, tmp_path):
    cfg = copy_root(built, tmp_path)
    data = tmp_path / "data"
    with Catalog(data / "catalog.sqlite") as c:
        for r in c.candidates():   # the copy's catalog must point into the copy
            if r["file_path"]:
                c.update_fields(r["id"], file_path=r["file_path"].replace(str(built.parent / "data"), str(data)))
        # 12 files as a new collect would leave them (never inspected), truncated when downloaded (the
        # download's sha256 is the truncated bytes': a file damaged on disk since would be set aside
        # for a re-download instead): both curates inspect them and both try to quarantine them.
        for r in c.candidates(status="accepted")[:12]:
            f = Path(r["file_path"])
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
            c.set_status(r["id"], "downloaded", None, None, "test", hashed_sha256=None, sha256=sha256_file(f),
                         bytes=f.stat().st_size)
    procs = [subprocess.Popen(MLC + ["curate", "-c", str(cfg)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0, err[-2000:]
    with Catalog(data / "catalog.sqlite", readonly=True) as c:
        rejected = c.candidates(status="rejected")
    assert len(rejected) == 12
    assert all(Path(r["file_path"]).is_file() and "/quarantine/" in r["file_path"] for r in rejected)


@needs_namespaces
def test_full_disk_during_build_is_one_line(built, tmp_path):
    cfg = copy_root(built, tmp_path)
    (tmp_path / "c.yaml").write_text(cfg.read_text() + "\nbuild: {name: fresh}\n")
    datasets = tmp_path / "data" / "datasets"
    script = f"set -e; mount -t tmpfs -o size=48k tmpfs {datasets}; exec \"$@\""
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *MLC, "build", "-c", str(cfg)], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-3000:]
    # the datasets folder is named (the export26 audit: the message named nothing, `cannot write: No space ...`)
    assert lines[0].startswith(f"mlc: cannot write {datasets / 'fresh'}: No space left on device (ENOSPC)"), lines[0]


def export_in_namespace(cfg: Path, mount: str, fmt: str, out: Path) -> subprocess.CompletedProcess:
    """`mlc export` with `mount` made in its own namespace; then what is left beside `out` there is
    printed (`LEFT: <names>`): the mount is gone once the namespace is."""
    script = f"{mount} || exit 99; \"$@\"; rc=$?; echo LEFT: $(ls -A {out.parent}); exit $rc"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *MLC, "export", "v1", "-c", str(cfg),
                           "--format", fmt, "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300)


@needs_namespaces
@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "hf", "fiftyone"])
def test_a_full_disk_during_an_export_names_the_export_not_the_version(built, tmp_path, fmt):
    # The export26 audit: shutil's copy put the version's image (the source) in the error's file name,
    # so the message said the published version could not be written; a tar's write named nothing.
    cfg = copy_root(built, tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    res = export_in_namespace(cfg, f"mount -t tmpfs -o size=48k tmpfs {full}", fmt, full / "v1-out")
    assert res.returncode == 1, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[0].startswith(f"mlc: cannot write {full / 'v1-out'}: No space left on device (ENOSPC);"), lines[0]
    assert res.stdout.splitlines()[-1] == "LEFT:", res.stdout          # nothing half-written, no hidden folder


@needs_namespaces
def test_a_read_only_export_target_is_named_not_the_hidden_folder(built, tmp_path):
    cfg = copy_root(built, tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    res = export_in_namespace(cfg, f"mount -t tmpfs -o ro,size=48k tmpfs {ro}", "hf", ro / "v1-hf")
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stderr.strip() == (f"mlc: cannot write {ro / 'v1-hf'}: Read-only file system (EROFS); make it "
                                  "writable or name a place on a writable disk, then rerun the same command"), \
        res.stderr[-3000:]
    assert res.stdout.splitlines()[-1] == "LEFT:", res.stdout


@needs_namespaces
def test_full_disk_during_model_export_says_disk_space(tmp_path):
    from shapes import trained_bundle
    _, bundle = trained_bundle()
    out = tmp_path / "models"
    out.mkdir()
    code = ("import sys\nfrom pathlib import Path\nfrom fastai.learner import load_learner\n"
            "from mlc_pipeline.model.bundle import export_learner\n"
            f"learn = load_learner({str(bundle / 'export.pkl')!r}, cpu=True)\n"
            "try:\n"
            f"    export_learner(learn, Path({str(out)!r}) / 'export.pkl')\n"
            "except OSError as exc:\n"
            "    print('ERRNO', exc.errno, exc.strerror); sys.exit(3)\n")
    script = f"set -e; mount -t tmpfs -o size=256k tmpfs {out}; exec \"$@\""
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-c", code], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr[-3000:]
    import errno
    assert res.stdout.startswith(f"ERRNO {errno.ENOSPC} No space left on device for the model bundle"), res.stdout


def test_an_error_in_the_hidden_folder_names_the_target_and_one_about_a_source_keeps_its_name(tmp_path):
    from mlc_pipeline.fsutil import errors_name
    out, aside = tmp_path / "out", tmp_path / ".out.export-1-0123abcd"
    aside.mkdir()
    with pytest.raises(FileExistsError) as raised, errors_name(out, aside):
        aside.mkdir()
    assert raised.value.filename == str(out) and raised.value.filename2 is None
    with pytest.raises(FileNotFoundError) as raised, errors_name(out, aside):
        shutil.copyfile(tmp_path / "gone.jpg", aside / "x.jpg")      # the source is missing: said so
    assert raised.value.filename == str(tmp_path / "gone.jpg")
