"""Ordinary mistakes are one line on stderr and an exit code, never a traceback (issue 17): each
case runs the `mlc` command as a user would, in a subprocess."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ENV, MLC, REPO, free_port, write_config as write_server_config
from storage_world import curated_root

from mlc_pipeline import __version__
from mlc_pipeline.cli import build_parser
from mlc_pipeline.config import load_config
from mlc_pipeline.dataset.build import build_dataset

OLD_BUNDLE = REPO / "tests" / "data" / "bundle-0.1.0"


def mlc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*MLC, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def one_line(res: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The run failed with `code` and said so in one line holding every one of `words`."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and "Traceback" not in res.stderr, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1, res.stderr[-2000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A curated data root of real photos with two published versions, v1 and v2; its config."""
    cfg_path = curated_root(tmp_path_factory.mktemp("built"), per_class=6)
    cfg = load_config(cfg_path)
    build_dataset(cfg)
    build_dataset(load_config(cfg_path, {"build": {"max_side": 64}}))     # other parameters: a new version
    assert sorted(p.name for p in cfg.layout.datasets.glob("v*")) == ["v1", "v2"]
    return cfg_path


@pytest.fixture
def listening() -> int:
    """A loopback port somebody is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_inspect_unknown_version_names_the_versions(built):
    line = one_line(mlc("inspect", "-c", str(built), "--version", "1"), 2, "no dataset version '1'", "v1, v2")
    assert "did you mean v1?" in line
    res = mlc("inspect", "-c", str(built), "--version", "v1")
    assert res.returncode == 0 and "v1" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("command", [["train"], ["inspect"], ["export", "--format", "hf"]])
def test_every_command_taking_a_version_answers_a_wrong_name_alike(built, command, tmp_path):
    """train, inspect and export resolve a version name through one function: the versions there,
    and the one probably meant. train answers before torch loads (no model folder is made)."""
    def named(version: str) -> list[str]:
        version_args = [version] if command[0] == "export" else ["--version", version]
        return [command[0], *version_args, *command[1:], "-c", str(built)]
    for wrong, hint in (("2", "did you mean v2?"), ("V1", "did you mean v1?"), ("v7", "")):
        line = one_line(mlc(*named(wrong)), 2, f"no dataset version {wrong!r}", "versions: v1, v2", hint)
        assert "run `mlc build`" not in line and ("did you mean" in line) == bool(hint), line
    assert not (load_config(built).layout.models).exists()


def test_inspect_into_a_closed_pipe_exits_quietly(built):
    """`mlc inspect | head`: the reader is gone before inspect writes; no traceback, no message."""
    proc = subprocess.Popen([*MLC, "inspect", "-c", str(built)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err     # 128 + SIGPIPE, as `yes | head` ends


def test_inspect_without_a_catalog_says_so_and_creates_nothing(tmp_path, built):
    text = built.read_text().replace(yaml.safe_load(built.read_text())["data_dir"], str(tmp_path / "typo"))
    (tmp_path / "c.yaml").write_text(text)
    one_line(mlc("inspect", "-c", str(tmp_path / "c.yaml")), 2, "no catalog at", str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def typo_config(built: Path, tmp_path: Path, data_dir: str) -> Path:
    """`built`'s config with another data_dir (and cache_dir when data_dir is a URL)."""
    data = yaml.safe_load(built.read_text())
    data["data_dir"] = data_dir
    if "://" in data_dir:
        data.update(cache_dir=str(tmp_path / "cache"), storage_options={"auto_mkdir": True})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "c.yaml"


POOL = ["--set", "mine.pool={queries: [insects], count: 1}"]


@pytest.mark.parametrize("command", [["curate"], ["build"], ["train"], ["mine", *POOL], ["mine", "--undo", "--round", "1"],
                                     ["remove", "--photo-id", "1", "--reason", "owner asked"]])
def test_write_commands_refuse_a_data_root_with_no_catalog_and_create_nothing(tmp_path, built, command):
    """A mistyped data_dir: one line, as inspect says it, not a fresh catalog reported on as empty. No
    folder there may also be a new root whose `mlc run` has not taken the lock yet (it checks its training
    settings first): the line says so too (the concurrency28 audit: a build then sent the user to check
    a data_dir that was right)."""
    config = typo_config(built, tmp_path, str(tmp_path / "typo"))
    one_line(mlc(command[0], "-c", str(config), *command[1:]), 2, "no catalog at", str(tmp_path / "typo"),
             f"check data_dir in {config}", "an `mlc run` started on it a moment ago makes it "
             "once its checks pass: rerun this then")
    assert not (tmp_path / "typo").exists()


def test_build_with_nothing_accepted_is_one_line(tmp_path, built):
    """A user's audit: `mlc build` before curation accepted anything printed a 15-line traceback
    above its own clear message."""
    from mlc_pipeline.catalog import Catalog
    config = typo_config(built, tmp_path, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with Catalog(load_config(config).catalog_path):         # a catalog with no image in it yet
        pass
    one_line(mlc("build", "-c", str(config)), 1, "mlc: nothing to build: no accepted images in the catalog "
             "(run collect and curate first)")


def test_a_command_queued_behind_a_new_roots_first_collect_waits_for_its_catalog(tmp_path, built):
    """A curate started while the first collect of a new data root holds the lock but has not yet made
    the catalog: it queues and then runs on that catalog, instead of calling the root a typo."""
    from helpers import holding, queued, release
    from mlc_pipeline.catalog import Catalog
    config = typo_config(built, tmp_path, str(tmp_path / "new"))
    holder = holding("data_root_lock", tmp_path / "new", "mlc collect")    # makes the root, not the catalog
    try:
        curate = queued([*MLC, "curate", "-c", str(config)])
        with Catalog(tmp_path / "new" / "catalog.sqlite"):                  # what the collect goes on to make
            pass
    finally:
        release(holder)
    out, err = curate.communicate(timeout=120)
    assert curate.returncode == 0, err


def test_catalog_migrate_from_a_root_with_no_catalog_creates_nothing(tmp_path, built):
    """Checked before the locks (which would create the mistyped data root): one line, exit 2."""
    config = typo_config(built, tmp_path, str(tmp_path / "typo"))
    one_line(mlc("catalog", "migrate", "-c", str(config), "--to", "postgresql://u@127.0.0.1:1/db"), 2,
             "no SQLite catalog to copy", str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def test_on_an_object_store_root_the_catalog_is_looked_for_after_the_fetch(tmp_path, built):
    """data_dir file://STORE: an empty store is refused like a local typo, after the fetch and with nothing
    published; a store holding a data root is fetched into a fresh cache and built from, not refused."""
    (tmp_path / "store").mkdir()
    config = typo_config(built, tmp_path, f"file://{tmp_path}/store")
    one_line(mlc("build", "-c", str(config)), 2, "no catalog at", f"file://{tmp_path}/store (cached in")
    assert list((tmp_path / "store").iterdir()) == []
    publisher = load_config(config, {"cache_dir": str(tmp_path / "publisher")})
    shutil.copytree(load_config(built).data_dir, publisher.data_dir, symlinks=True)
    from mlc_pipeline.sync import publish
    publish(publisher)                                      # another machine's data root, in the store
    shutil.rmtree(tmp_path / "cache")
    res = mlc("build", "-c", str(config))
    assert res.returncode == 0 and "dataset default v" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("args, words", [
    (["-c", "/tmp"], ["/tmp is a folder"]),
    (["-c", "CFG", "--set", "train.epochs=[1"], ["--set 'train.epochs=[1'", "not valid YAML"]),
])
def test_config_mistakes(built, args, words):
    args = [str(built) if a == "CFG" else a for a in args]
    one_line(mlc("inspect", *args), 2, *words)


@pytest.mark.parametrize("command, settings, words", [
    ("train", ["train.arch=resnet_nope"], ["config: train: arch 'resnet_nope' is neither"]),
    ("train", ["train.pretrained=/nope/weights.pth"], ["config: train.pretrained:", "not found: /nope/weights.pth"]),
    ("train", ["train.arch=mlcnet", "train.pretrained=GARBAGE"], ["config: train.pretrained:", "not a weights file"]),
    ("run", ["train.pretrained=/nope/weights.pth"], ["config: train.pretrained:", "not found: /nope/weights.pth"]),
])
def test_training_option_mistakes_are_one_line_before_anything_runs(built, tmp_path, command, settings, words):
    """A wrong training option (a pydantic error, a weights file that is not there or that torch
    cannot read) is one line, exit 2, from `mlc train` before it trains, and from `mlc run` before it
    collects into a new root."""
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not tensors")
    sets = [w for s in settings for w in ("--set", s.replace("GARBAGE", str(garbage)))]
    if command == "run":
        fresh = tmp_path / "fresh"
        sets += ["--set", f"data_dir={fresh}"]
    models = set(load_config(built).layout.models.glob("*"))
    one_line(mlc(command, "-c", str(built), *sets, "--no-progress"), 2, *words)
    assert set(load_config(built).layout.models.glob("*")) == models
    assert command != "run" or not fresh.exists()


def test_mine_with_a_missing_model(built):
    one_line(mlc("mine", "-c", str(built), "--model", "/nope"), 2, "--model /nope", "not a model bundle")
    one_line(mlc("mine", "-c", str(built), "--model", "latest", "--set", "mine.pool={queries: [x], count: 1}"), 2,
             "--model latest: not a model bundle", "no model trained or promoted there yet")


def test_train_continues_a_named_model_and_mine_takes_names_as_documented(tmp_path):
    """`mlc train --continue latest` goes on from that network (mine.retrain's retrain, by hand);
    `mlc mine --model` takes a bundle's name or `latest`, as its help says, not only a folder."""
    cfg_path = curated_root(tmp_path, per_class=6)
    build_dataset(load_config(cfg_path))
    fast = ["--set", "train.epochs=1", "--set", "train.image_size=32", "--set", "train.pretrained=none"]
    first = mlc("train", "-c", str(cfg_path), *fast, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    models = load_config(cfg_path).layout.models
    name = (models / "LATEST").read_text().strip()
    # a continuation trains the bundle's network: `pretrained` is not looked at (a missing file is fine)
    again = mlc("train", "-c", str(cfg_path), "--continue", "latest", *fast[:4], "--set",
                "train.pretrained=/nope/weights.pth", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"continued from {name} for 1 epoch " in again.stdout
    one_line(mlc("train", "-c", str(cfg_path), "--continue", "nope"), 2, "--continue nope: not a model bundle")
    one_line(mlc("train", "-c", str(cfg_path), "--continue", "/nope"), 2, "--continue /nope: not a model bundle")
    pool = ["--set", "mine.pool={queries: [nothing collected], count: 1}"]
    newest = (models / "LATEST").read_text().strip()        # the continued model
    assert newest != name
    for spec, bundle in ((name, name), ("latest", newest)):
        res = mlc("mine", "-c", str(cfg_path), "--model", spec, *pool, timeout=300)
        assert res.returncode == 0 and f"{models / bundle}/mined.csv" in res.stdout, res.stderr[-2000:]
    one_line(mlc("mine", "-c", str(cfg_path), "--model", "nope", *pool), 2, "--model nope: not a model bundle")


def test_a_diverged_training_is_said_in_a_line_not_a_traceback(built):
    models = load_config(built).layout.models
    before = sorted(models.glob("*"))
    res = mlc("train", "-c", str(built), "--set", "train.lr=1e20", "--set", "train.epochs=2", "--set",
              "train.image_size=32", "--set", "train.pretrained=none", timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("mlc: training diverged ("), res.stderr[-2000:]
    assert sorted(models.glob("*")) == before        # nothing written, not even a half bundle


def test_mine_without_a_pool_leaves_the_bundle_alone(built, tmp_path):
    bundle = shutil.copytree(OLD_BUNDLE, tmp_path / "bundle")
    before = sorted(p.name for p in bundle.iterdir())
    assert load_config(built).mine.pool is None
    one_line(mlc("mine", "-c", str(built), "--model", str(bundle)), 2, "mine.pool is not configured", "nothing was changed")
    assert sorted(p.name for p in bundle.iterdir()) == before         # no mined.csv, no review.csv


@pytest.mark.parametrize("args, words", [
    (["--folder", "/nonexistent", "--map", "a=b"], ["/nonexistent does not exist"]),
    (["--folder", "/nonexistent"], ["/nonexistent does not exist"]),
    (["--folder", str(REPO), "--map", "a=nothere"], ["subfolder 'nothere'", "does not exist"]),
    (["--folder", str(REPO), "--map", "a=../.."], ["is outside"]),
    (["--port", "99999"], ["--port 99999", "0-65535"]),
])
def test_serve_flickr_mistakes(args, words):
    one_line(mlc("serve-flickr", *args), 2, *words)


@pytest.mark.parametrize("argv", [["-v", "serve-flickr", "--port", "99999"], ["serve-flickr", "--port", "99999", "-v"]])
def test_serve_flickr_takes_verbose_before_or_after(argv):
    """-v goes before or after the sub-command (README), serve-flickr's own parser included: the
    command goes on to check its options (before: 'unrecognized arguments')."""
    one_line(mlc(*argv), 2, "--port 99999", "0-65535")


def test_serve_flickr_on_a_port_in_use(listening):
    one_line(mlc("serve-flickr", "--port", str(listening)), 2, f"port {listening}", "already in use",
             "source.local.port")


def test_collect_on_a_port_in_use_hints_at_another_run(tmp_path, listening):
    cfg = write_server_config(tmp_path, count=2)
    data = yaml.safe_load(cfg.read_text())
    data["source"]["local"]["port"] = listening
    cfg.write_text(yaml.safe_dump(data))
    one_line(mlc("collect", "-c", str(cfg), "--no-progress"), 2, f"source.local.port {listening}",
             "already in use", "another `mlc` run")


def test_collect_from_a_missing_folder(tmp_path):
    cfg = write_server_config(tmp_path, count=2)
    data = yaml.safe_load(cfg.read_text())
    data["source"]["local"] = {"port": free_port(), "folder": str(tmp_path / "photos"), "query_map": {q: "kites" for q in ("balloon", "kite", "landscape", "texture")}}
    cfg.write_text(yaml.safe_dump(data))
    one_line(mlc("collect", "-c", str(cfg), "--no-progress"), 2, str(tmp_path / "photos"), "does not exist")
    (tmp_path / "photos").mkdir()
    one_line(mlc("collect", "-c", str(cfg), "--no-progress"), 2, "subfolder 'kites'", "does not exist")


def test_a_data_dir_under_a_file_is_one_line_naming_the_file(tmp_path):
    # The nightly audit: the lock's mkdir raised NotADirectoryError, shown as a bug's traceback.
    cfg = write_server_config(tmp_path, count=2)
    (tmp_path / "afile").write_text("not a folder")
    for command in ("collect", "curate"):       # curate probes the lock first (the verify20 audit)
        one_line(mlc(command, "-c", str(cfg), "--no-progress", "--set", f"data_dir={tmp_path / 'afile' / 'data'}"),
                 1 if command == "collect" else 2, f"{tmp_path / 'afile'}", "check data_dir")


def test_version_and_verbose_anywhere():
    res = mlc("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"mlc {__version__}"
    # one version, in the package and its metadata; not 0.2.0's, which code of 2026-12-01 to 12-07 all said
    # while bundles, catalog tables and dataset folders changed (the upgrade29 audit, finding 7)
    import tomllib
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__ == "0.3.0"
    parser = build_parser()
    assert parser.parse_args(["inspect", "-c", "x.yaml", "-v"]).verbose is True
    assert parser.parse_args(["-v", "inspect", "-c", "x.yaml"]).verbose is True
    assert parser.parse_args(["build", "-c", "x.yaml", "--verbose"]).verbose is True
    assert parser.parse_args(["inspect", "-c", "x.yaml"]).verbose is False


def test_a_data_dir_url_with_credentials_is_refused_without_repeating_them(tmp_path):
    """It was echoed in the error line ("data_dir s3://AKIDU:S3UrlPwLEAK@..."), and accepted."""
    cfg = write_server_config(tmp_path, count=2)
    leaky = "s3://AKIDU:S3UrlPwLEAK@mlc-audit/proj"
    res = mlc("inspect", "-c", str(cfg), "--set", f"data_dir={leaky}")
    one_line(res, 2, "data_dir", "holds credentials", "AWS_SECRET_ACCESS_KEY")
    assert "S3UrlPwLEAK" not in res.stderr + res.stdout and "AKIDU" not in res.stderr
    data = yaml.safe_load(cfg.read_text())              # written in the file: the same
    cfg.write_text(yaml.safe_dump({**data, "data_dir": leaky}))
    res = mlc("inspect", "-c", str(cfg))
    one_line(res, 2, "data_dir", "holds credentials")
    assert "S3UrlPwLEAK" not in res.stderr + res.stdout
    # an AWS secret key with '/' in it reads as a path to a URL parser: it was accepted (verify24 audit)
    res = mlc("inspect", "-c", str(cfg), "--set", "data_dir=s3://AKIDU:wJal/K7MD/S3UrlPwLEAK@mlc-audit/proj")
    one_line(res, 2, "data_dir", "holds credentials")
    assert "S3UrlPwLEAK" not in res.stderr + res.stdout and "K7MD" not in res.stderr + res.stdout


def test_a_one_slash_data_dir_url_is_a_typo_not_a_local_folder(tmp_path):
    """`s3:/bucket/proj` became the local folder <cwd>/s3:/bucket/proj, silently."""
    cfg = write_server_config(tmp_path, count=2)
    res = mlc("inspect", "-c", str(cfg), "--set", "data_dir=s3:/mlc-audit/proj")
    one_line(res, 2, "data_dir", "not a valid URL", "s3://mlc-audit/proj")
    assert not (Path.cwd() / "s3:").exists() and not (tmp_path / "s3:").exists()
    from mlc_pipeline.secrets import data_url_problem      # fsspec reads file://srv/data as ./srv/data
    assert "write file:///srv/data" in data_url_problem("file:/srv/data")
    assert "write file:///srv/data" in data_url_problem("file://srv/data")
    assert data_url_problem("file:///srv/data") is None and data_url_problem("s3://bucket/p") is None
    assert "names no bucket" in data_url_problem("s3:///prefix")
    # a local path with a colon further in is still a local path
    assert load_config(cfg, {"data_dir": str(tmp_path / "runs:2024")}).data_dir == tmp_path / "runs:2024"
    assert load_config(cfg, {"data_dir": "data:x"}).data_url is None


def test_an_unknown_or_unreachable_data_dir_url_is_one_line(tmp_path):
    """fsspec's ValueError ("Protocol not known: s4") and ftplib's ConnectionRefusedError came out as
    tracebacks of 28 and 40 lines."""
    cfg = write_server_config(tmp_path, count=2)
    one_line(mlc("inspect", "-c", str(cfg), "--set", "data_dir=s4://mlc-audit/proj"), 2,
             "s4://mlc-audit/proj", "scheme 's4' is not supported", "s3://")
    port = free_port()
    one_line(mlc("inspect", "-c", str(cfg), "--set", f"data_dir=ftp://127.0.0.1:{port}/proj"), 2,
             "cannot reach the object store", f"127.0.0.1:{port}", "connection refused")


AS_A_USER = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop root's override")
def test_a_file_or_folder_this_user_may_not_use_is_one_line(built, tmp_path):
    """The secrets21 audit: an unreadable config, or an --html / --out into a folder the user cannot
    write, printed a 14-23 line traceback. Run as a user is (root without its permission override:
    the tests run as root here; as a user they are that user)."""
    unreadable = tmp_path / "unreadable.yaml"
    shutil.copy(built, unreadable)
    unreadable.chmod(0)
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o555)

    def as_user(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*AS_A_USER, *MLC, *args], env=ENV, capture_output=True, text=True, timeout=120)
    one_line(as_user("inspect", "-c", str(unreadable)), 2, f"config: {unreadable} cannot be read (permission denied)")
    line = one_line(as_user("inspect", "-c", str(built), "--html", str(closed / "report.html")), 1,
                    "permission denied:", str(closed))
    assert f"{closed} (writing report.html there)" in line and ".tmp-" not in line      # not our temp file (verify21)
    one_line(as_user("export", "v1", "--format", "imagefolder", "-c", str(built), "--out", str(closed / "out")), 1,
             "permission denied:", str(closed))


def test_verbose_leaves_the_flickr_signing_library_quiet(tmp_path, monkeypatch):
    """`mlc -v` turned oauthlib's DEBUG on with the pipeline's: every Flickr request's oauth_* values
    (the verify21 audit). It stays at warnings unless MLC_LIBRARY_DEBUG is set, as the store's do."""
    import logging
    from mlc_pipeline.cli import main
    monkeypatch.delenv("MLC_LIBRARY_DEBUG", raising=False)
    assert main(["-v", "inspect", "-c", str(tmp_path / "none.yaml")]) == 2
    assert logging.getLogger("oauthlib").level == logging.WARNING
    assert logging.getLogger("requests_oauthlib").level == logging.WARNING


def test_mine_with_a_damaged_or_missing_latest_model_is_one_line(tmp_path, trained_shapes_bundle):
    """A damaged bundle gave `mlc mine` a traceback (predict said one line), and a models/LATEST naming
    a folder that is gone was 'no model yet' (the verify24 audit)."""
    data = tmp_path / "data"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data), "classes": {"red": {"queries": ["red"], "count": 5}},
                                   "other": {"queries": ["noise"], "count": 5},
                                   "mine": {"pool": {"queries": ["toys"], "count": 5}}}))
    from mlc_pipeline.catalog import Catalog
    data.mkdir()
    with Catalog(data / "catalog.sqlite"):      # a data root that has collected (here: nothing)
        pass
    models = data / "models"
    shutil.copytree(trained_shapes_bundle[1], models / "m1")
    (models / "LATEST").write_text("m1\n")
    (models / "m1" / "bundle.json").write_text("[]")
    one_line(mlc("mine", "-c", str(cfg)), 2, "bundle.json", "is not a JSON object")
    (models / "LATEST").write_text("gone\n")
    one_line(mlc("mine", "-c", str(cfg)), 2, "LATEST names 'gone', which is not a folder under")
    (models / "LATEST").unlink()
    one_line(mlc("mine", "-c", str(cfg)), 2, "no model yet")


@pytest.mark.parametrize("code", [130, 143])
def test_an_interrupted_command_exits_even_when_the_exit_clean_up_hangs(code):
    """After a Ctrl-C, one `mlc collect` in ~100 never exited: urllib3's clean-up at exit waited on a
    lock the interrupted code still held (the verify22 audit). Here an exit handler waits on a lock
    no one will release, as that one did; the command still ends, with its code, after the grace."""
    script = ("import atexit, threading\n"
              "from mlc_pipeline import cli\n"
              "held = threading.Lock(); held.acquire()\n"
              "atexit.register(held.acquire)\n"
              "cli.EXIT_GRACE_S = 1\n"
              f"cli.main = lambda argv=None: {code}\n"
              "cli.entry()\n")
    res = subprocess.run([sys.executable, "-c", script], env=ENV, text=True, capture_output=True, timeout=60)
    assert res.returncode == code, res.stderr[-2000:]
    assert "the exit's clean-up still waited after 1 s; ended without it" in res.stderr
    script = script.replace("atexit.register(held.acquire)\n", "").replace(str(code), "0")   # nothing waits
    res = subprocess.run([sys.executable, "-c", script], env=ENV, text=True, capture_output=True, timeout=60)
    assert res.returncode == 0 and "clean-up" not in res.stderr, res.stderr


def command_parsers(sub, path=()):
    """(command path, parser) of every command of the `mlc` parser tree, nested ones included."""
    import argparse
    for name, p in sub.choices.items():
        yield (*path, name), p
        for nested in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
            yield from command_parsers(nested, (*path, name))


@pytest.mark.parametrize("argv", [["catalog", "migrate", "-c", "x.yaml", "-v"],
                                  ["catalog", "migrate", "-v", "-c", "x.yaml"],
                                  ["catalog", "-v", "migrate", "-c", "x.yaml"],
                                  ["-v", "catalog", "migrate", "-c", "x.yaml"]])
def test_verbose_before_or_after_a_nested_sub_command(argv):
    """README: -v goes before or after the sub-command. `mlc catalog migrate -c X -v` was a usage error
    (exit 2): only the first-level commands took -v (the docs27 audit)."""
    args = build_parser().parse_args(argv)
    assert (args.command, args.action, args.verbose) == ("catalog", "migrate", True)
    assert build_parser().parse_args(["catalog", "migrate", "-c", "x.yaml"]).verbose is False


def test_every_command_takes_verbose_after_it():
    """Each command parser on every level (nested ones included) has its own -v; serve-flickr's own
    parser takes it (test_serve_flickr_takes_verbose_before_or_after)."""
    import argparse
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = dict(command_parsers(sub))
    assert ("catalog", "migrate") in commands and len(commands) > 15
    lacking = [c for c, p in commands.items()
               if c != ("serve-flickr",) and not any("-v" in a.option_strings for a in p._actions)]
    assert lacking == []


def test_catalog_migrate_with_verbose_at_the_end_runs(tmp_path):
    """As a user types it: the command runs (here: to its missing config), no usage error."""
    res = mlc("catalog", "migrate", "-c", str(tmp_path / "none.yaml"), "-v")
    assert "unrecognized arguments" not in res.stderr
    one_line(res, 2, "config: file not found", "none.yaml")
