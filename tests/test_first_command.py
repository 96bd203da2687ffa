"""A user's first command that fails at its start leaves nothing behind, and says why in words that
fit (the dayone26 audit, D7 and D8)."""

import subprocess

import pytest
from helpers import ENV, MLC, free_port, needs_namespaces


def mlc(*args, env=ENV, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(MLC + list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def folder_config(tmp_path, folder: str, query_map: str, data="data"):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
data_dir: {data}
source:
  kind: local
  local: {{port: {free_port()}, folder: {folder}, query_map: {query_map}}}
  licenses: any
classes:
  cat: {{queries: [cats], count: 5}}
  dog: {{queries: [dogs], count: 5}}
other: {{queries: [ants], count: 5}}
""")
    return cfg


@pytest.mark.parametrize("command", ["collect", "run"])
@pytest.mark.parametrize("folder, query_map, said", [
    ("nophotos", "{cats: cats, dogs: dogs, ants: ants}", "nophotos does not exist"),
    ("photos", "{cats: cats, dogs: dogs, ants: wasps}", "subfolder 'wasps' for query 'ants' does not exist"),
])
def test_a_missing_photo_folder_creates_no_data_root(tmp_path, command, folder, query_map, said):
    for sub in ("cats", "dogs", "ants"):
        (tmp_path / "photos" / sub).mkdir(parents=True)
    res = mlc(command, "-c", str(folder_config(tmp_path, str(tmp_path / folder), query_map)), "--no-progress")
    assert res.returncode == 2 and said in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "data").exists(), sorted(p.name for p in (tmp_path / "data").iterdir())


def test_a_missing_flickr_key_creates_no_data_root(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data_dir: data\nclasses: {cat: {queries: [cats], count: 5}}\nother: {queries: [ants], count: 5}\n")
    res = mlc("collect", "-c", str(cfg), "--no-progress")
    assert res.returncode == 2 and "FLICKR_API_KEY is not set" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "data").exists()


@needs_namespaces
def test_a_new_data_root_on_a_read_only_mount_is_said_to_be_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    cfg = folder_config(tmp_path, "photos", "{cats: cats, dogs: cats, ants: cats}", data=str(ro / "data"))
    script = f"mount -t tmpfs -o ro,size=64k tmpfs {ro} || exit 99; exec \"$@\""
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *MLC, "collect", "-c", str(cfg), "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith(f"mlc: data root {ro / 'data'} cannot be made: it is on a read-only file system"), lines[0]
    assert "free space" not in lines[0]
