"""Where training weights come from: torchvision's cache, a download, or nothing (mlc_pipeline/weights.py).

Nothing here reaches the internet. The "ImageNet" files are randomly initialised torchvision state
dicts saved under the exact names torchvision uses; downloads go to real local HTTP servers (the
weights' URL is pointed at them), and the CLI's offline failure goes through a proxy that refuses.
"""

from __future__ import annotations

import http.server
import json
import shutil
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torchvision

from helpers import FIXTURES

from mlc_pipeline.model import weights as W
from mlc_pipeline.config import load_config
from mlc_pipeline.cli import main as mlc_main
from mlc_pipeline.config import parse_overrides
from mlc_pipeline.report.model import network_line
from mlc_pipeline.model.train import TrainConfig, train_model

FIXTURES = FIXTURES
R18 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
TINY = dict(image_size=32, epochs=1, batch_size=8, threads=1, seed=0)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, downloads allowed (conftest forbids them), no memory of failed downloads."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(W, "_failed_downloads", {})
    return home


def fake_imagenet_file(path: Path, seed: int = 0) -> dict:
    """A randomly initialised resnet18 state dict saved at `path`; returns it."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def hymenoptera_manifest(root: Path, per_class: int = 8) -> Path:
    """A tiny real-photo dataset: ants and bees, cats as "other" (no label), 6 train / 1 valid / 1 test each."""
    rows = ["path,labels,split"]
    splits = ["train"] * 6 + ["valid", "test"]
    root.mkdir(parents=True, exist_ok=True)
    for label, folder in (("ant", "hymenoptera/ants"), ("bee", "hymenoptera/bees"), ("", "pets/cat")):
        for i, src in enumerate(sorted((FIXTURES / folder).glob("*.jpg"))[:per_class]):
            # Copied in: a manifest's paths may not leave its folder.
            shutil.copyfile(src, root / f"{label or 'other'}-{src.name}")
            rows.append(f"{label or 'other'}-{src.name},{label},{splits[i % len(splits)]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


class LocalServer:
    """A real HTTP server on loopback answering every GET with `status` and `body`; counts requests."""

    def __init__(self, status: int = 503, body: bytes = b"unavailable"):
        self.status, self.body, self.requests = status, body, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/models/{name}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve_weights(monkeypatch):
    """Point resnet18's ImageNet weights URL at a local server: serve(status, body, name) -> server."""
    servers = []

    def serve(status=503, body=b"unavailable", name="resnet18-f37072fd.pth"):
        server = LocalServer(status, body)
        servers.append(server)
        monkeypatch.setattr(R18.value, "url", server.url(name))
        return server

    yield serve
    for s in servers:
        s.close()


def warnings_in(caplog) -> list[str]:
    """Warnings about weights: from weights.py, or from anywhere if they name ImageNet (calibration on
    this tiny dataset may warn about its own matters)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= 30 and (r.name == W.__name__ or "ImageNet" in r.getMessage())]


# ---------------------------------------------------------------- (1) weights in the cache are used

def test_cached_imagenet_file_is_used_by_auto(torch_home, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")   # the cache alone must be enough
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert W.cache_path(R18) == cached       # the exact name torchvision expects
    state = fake_imagenet_file(cached)
    manifest = hymenoptera_manifest(tmp_path / "ds")
    result = train_model(manifest, tmp_path / "bundle", TrainConfig(lr=1e-9, **TINY))
    assert not warnings_in(caplog)
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert result.pretrained_used == "imagenet" and meta["pretrained"] == "imagenet"
    assert meta["arch"] == "resnet18" == W.RECIPES["pretrained"]["arch"]
    w = meta["weights"]
    assert w["name"] == "ResNet18_Weights.IMAGENET1K_V1" and w["file"] == str(cached)
    assert w["recipe"] == "pretrained" and w["requested"] == {"arch": "auto", "pretrained": "auto"}
    from mlc_pipeline.fsutil import sha256_file
    assert w["sha256"] == sha256_file(cached)
    assert meta["image_size"] == 32 and meta["config"]["epochs"] == 1   # explicit values beat the recipe
    assert len(meta["history"]) == 2                                    # fine_tune: frozen epoch first
    line = "Network: resnet18, ImageNet weights ResNet18_Weights.IMAGENET1K_V1 (resnet18-f37072fd.pth), fine-tuned"
    assert "arch auto: the pretrained recipe" in network_line(meta)
    # ... and the HTML report and the Prefect run summary say so
    from mlc_pipeline.report.model import model_section
    from mlc_pipeline.pipeline import PipelineResult
    from mlc_pipeline.rounds import RoundRecord
    metrics = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    html_part = model_section(PipelineResult(rounds=[RoundRecord(0, "v1", "bundle", 0.5, None, None)]), tmp_path)
    assert line in html_part
    from mlc_pipeline.report.summary import summary_markdown
    run = {"status": "Completed", "config_path": "c.yaml", "models": [
        {"round": 0, "dataset_version": "v1", "bundle": "bundle", "bundle_dir": str(tmp_path / "bundle"),
         "metrics": metrics}]}
    assert line in summary_markdown(run)
    assert "No comparison heads were trained in this run" in summary_markdown(run)   # as the HTML report says
    assert "No comparison heads" not in summary_markdown({**run, "status": "Failed"})   # a failure is not "off"
    run["alternatives"] = {"softmax-other-class": metrics}
    assert "No comparison heads" not in summary_markdown(run) and "| softmax-other-class |" in summary_markdown(run)

    # The trained body holds the file's weights (lr ~0), not a fresh initialisation.
    from mlc_pipeline.model.bundle import load_bundle
    body = load_bundle(tmp_path / "bundle").learn.model[0].state_dict()
    donor = torchvision.models.resnet18(weights=None)
    donor.load_state_dict(state)
    from fastai.vision.all import create_body
    expected = create_body(donor, pretrained=True).state_dict()
    trainable = [k for k in expected if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(trainable) > 40
    for k in trainable:
        assert torch.allclose(body[k], expected[k], atol=1e-5), k
    torch.manual_seed(1)
    fresh = torchvision.models.resnet18(weights=None).state_dict()["conv1.weight"]
    assert not torch.allclose(fresh, state["conv1.weight"], atol=1e-3)   # the comparison can fail


def test_recipe_fills_only_what_the_user_left_unset(torch_home, monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    fake_imagenet_file(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    cfg, choice = W.resolve_training(TrainConfig())
    pre = W.RECIPES["pretrained"]
    assert (cfg.arch, cfg.image_size, cfg.epochs, cfg.lr, cfg.batch_size) == (
        pre["arch"], pre["image_size"], pre["epochs"], pre["lr"], pre["batch_size"])
    assert choice.pretrained == "imagenet" and choice.recipe == "pretrained"
    cfg, _ = W.resolve_training(TrainConfig(epochs=2, lr=1e-3))
    assert (cfg.image_size, cfg.epochs, cfg.lr) == (pre["image_size"], 2, 1e-3)
    cfg, choice = W.resolve_training(TrainConfig(pretrained="none", precision="float32"))
    scratch = W.RECIPES["scratch"]
    assert (cfg.arch, cfg.image_size, cfg.epochs, choice.pretrained, choice.recipe) == (
        scratch["arch"], scratch["image_size"], scratch["epochs"], "none", "scratch")
    # bf16 batches train the larger picture in float32's time; a set image size wins over both
    assert W.resolve_training(TrainConfig(pretrained="none", precision="bfloat16"))[0].image_size == \
        W.SCRATCH_IMAGE_SIZE_MIXED > scratch["image_size"]
    assert W.resolve_training(TrainConfig(pretrained="none", precision="bfloat16", image_size=64))[0].image_size == 64
    monkeypatch.setattr(W, "training_precision", lambda choice, warn=True: "float16")     # CUDA
    assert W.resolve_training(TrainConfig(pretrained="none"))[0].image_size == W.SCRATCH_IMAGE_SIZE_MIXED
    # the two recipes' batch sizes differ (scratch: more steps per image), and a set one wins over both
    assert cfg.batch_size == scratch["batch_size"] != pre["batch_size"]
    assert W.resolve_training(TrainConfig(pretrained="none", batch_size=48))[0].batch_size == 48


def test_the_scratch_recipe_trains_a_small_dataset_for_more_epochs(torch_home, monkeypatch):
    """From scratch the epochs are a budget of images seen: a few hundred real photos get more
    passes than a thousand, never fewer than the recipe's epochs nor more than the cap; a set
    `epochs` and the pretrained recipe are left alone."""
    least, views = W.RECIPES["scratch"]["epochs"], W.SCRATCH_VIEWS
    scratch = TrainConfig(pretrained="none")
    small, large = W.resolve_training(scratch, n_train=500)[0].epochs, W.resolve_training(scratch, n_train=1_100)[0].epochs
    assert small == -(-views // 500) and large == -(-views // 1_100) and small > large > least
    assert small * 500 >= views and (small - 1) * 500 < views
    assert W.resolve_training(scratch, n_train=views)[0].epochs == least          # big sets: the recipe's epochs
    assert W.resolve_training(scratch, n_train=10)[0].epochs == W.SCRATCH_MAX_EPOCHS
    assert W.resolve_training(scratch)[0].epochs == least                          # size unknown
    assert W.resolve_training(TrainConfig(pretrained="none", epochs=7), n_train=500)[0].epochs == 7
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    fake_imagenet_file(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    cfg, choice = W.resolve_training(TrainConfig(), n_train=500)
    assert choice.recipe == "pretrained" and cfg.epochs == W.RECIPES["pretrained"]["epochs"]


def test_config_defaults_and_overrides(tmp_path):
    yaml_text = "classes: {a: {queries: [a], count: 1}}\nother: {queries: [o], count: 1}\n"
    (tmp_path / "c.yaml").write_text(yaml_text)
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.train.arch, cfg.train.pretrained, cfg.train.image_size, cfg.train.epochs) == ("auto", "auto", None, None)
    cfg = load_config(tmp_path / "c.yaml", parse_overrides(["train.epochs=2", "train.arch=mlcnet",
                                                           "train.precision=float32"]))
    tc = TrainConfig.from_settings(cfg.train)
    assert (tc.arch, tc.epochs, tc.image_size, tc.precision) == ("mlcnet", 2, None, "float32")
    resolved, _ = W.resolve_training(tc)
    assert (resolved.epochs, resolved.image_size) == (2, W.RECIPES["scratch"]["image_size"])


def test_a_weights_path_picks_the_network_it_fits(tmp_path):
    path = tmp_path / "r18.pth"
    fake_imagenet_file(path)
    cfg, choice = W.resolve_training(TrainConfig(pretrained=str(path)))
    assert cfg.arch == "resnet18" and choice.pretrained == str(path) and choice.recipe == "pretrained"
    assert choice.file == str(path) and len(choice.sha256) == 64
    from mlc_pipeline.model.nets import mlcnet
    torch.save(mlcnet(3).state_dict(), tmp_path / "m.pth")   # an earlier mlcnet model, as before arch: auto
    cfg, choice = W.resolve_training(TrainConfig(pretrained=str(tmp_path / "m.pth")))
    assert cfg.arch == "mlcnet" and choice.recipe == "scratch"
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a weights file"):
        W.resolve_training(TrainConfig(pretrained=str(tmp_path / "junk.pth")))


# ---------------------------------------------------------------- (2) no weights: one warning, scratch

def test_failed_download_falls_back_to_scratch_with_one_warning(torch_home, serve_weights, tmp_path, caplog, capfd):
    server = serve_weights(503)
    manifest = hymenoptera_manifest(tmp_path / "ds")
    result = train_model(manifest, tmp_path / "bundle", TrainConfig(**TINY))
    assert server.requests == ["/models/resnet18-f37072fd.pth"]   # torchvision did try to download
    assert "Downloading" not in capfd.readouterr().out      # torch.hub's line said it was, and it was not
    warnings = warnings_in(caplog)
    assert len(warnings) == 1, warnings
    assert "training from scratch" in warnings[0] and "503" in warnings[0] and "mlc weights fetch" in warnings[0]
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert result.pretrained_used == "none" and meta["pretrained"] == "none"
    assert meta["arch"] == W.RECIPES["scratch"]["arch"] and meta["weights"]["recipe"] == "scratch"
    assert "503" in meta["weights"]["fallback"] and meta["weights"]["file"] is None
    assert "trained from scratch" in network_line(meta) and "because no ImageNet weights" in network_line(meta)
    assert not list((torch_home / "hub" / "checkpoints").iterdir())   # no partial file left behind
    # The next training of the same run does not wait for the network again, and says why.
    caplog.clear()
    _, choice = W.resolve_training(TrainConfig())
    assert len(server.requests) == 1 and "earlier in this process" in choice.fallback
    assert len(warnings_in(caplog)) == 1
    # the warning names the whole scratch recipe the run falls back to, its batches included
    assert f"batches of {W.RECIPES['scratch']['batch_size']})" in warnings_in(caplog)[0]


def test_a_stalled_download_is_bounded_by_the_timeout(torch_home, monkeypatch):
    silent = socket.socket()          # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    monkeypatch.setattr(R18.value, "url", f"http://127.0.0.1:{silent.getsockname()[1]}/resnet18-f37072fd.pth")
    monkeypatch.setattr(W, "DOWNLOAD_TIMEOUT_S", 0.5)
    default_before = socket.getdefaulttimeout()
    start = time.monotonic()
    try:
        cfg, choice = W.resolve_training(TrainConfig())
    finally:
        silent.close()
    assert time.monotonic() - start < 10
    assert choice.pretrained == "none" and cfg.arch == W.RECIPES["scratch"]["arch"]
    assert "timed out" in choice.fallback
    assert socket.getdefaulttimeout() == default_before     # the process-wide default is restored


def test_a_download_that_fails_its_hash_check_is_not_used(torch_home, serve_weights, tmp_path):
    fake_imagenet_file(tmp_path / "served.pth")
    serve_weights(200, (tmp_path / "served.pth").read_bytes())   # not the file whose hash the name carries
    _, choice = W.resolve_training(TrainConfig())
    assert choice.pretrained == "none" and "hash" in choice.fallback
    assert not list((torch_home / "hub" / "checkpoints").iterdir())
    with pytest.raises(FileNotFoundError, match="pretrained='imagenet'"):
        W.resolve_training(TrainConfig(pretrained="imagenet"))


def test_a_successful_download_goes_through_torchvision_into_the_cache(torch_home, serve_weights, tmp_path):
    fake_imagenet_file(tmp_path / "served.pth")
    from mlc_pipeline.fsutil import sha256_file
    digest = sha256_file(tmp_path / "served.pth")
    name = f"resnet18-{digest[:8]}.pth"       # torchvision's naming: the hash prefix is checked
    server = serve_weights(200, (tmp_path / "served.pth").read_bytes(), name)
    cfg, choice = W.resolve_training(TrainConfig(pretrained="imagenet"))
    cached = torch_home / "hub" / "checkpoints" / name
    assert server.requests == [f"/models/{name}"] and cached.is_file()
    assert (cfg.arch, choice.pretrained, choice.file, choice.sha256) == ("resnet18", "imagenet", str(cached), digest)
    W.resolve_training(TrainConfig())
    assert len(server.requests) == 1          # from the cache now


# ---------------------------------------------------------------- (3) none: no network at all

_watch: dict = {}


def _audit(event, args):
    if _watch.get("thread") == threading.get_ident() and event in ("socket.connect", "socket.getaddrinfo"):
        _watch["events"].append(event)


sys.addaudithook(_audit)   # permanent, but records only while a test watches its own thread


def test_pretrained_none_makes_no_network_attempt(torch_home, serve_weights):
    server = serve_weights(503)
    _watch.update(thread=threading.get_ident(), events=[])
    try:
        cfg, choice = W.resolve_training(TrainConfig(pretrained="none"))
        none_events = list(_watch["events"])
        W.resolve_training(TrainConfig(arch="resnet18", pretrained="none"))
        none_events += _watch["events"][len(none_events):]
        W.resolve_training(TrainConfig())   # control: auto does go to the network
        auto_events = _watch["events"][len(none_events):]
    finally:
        _watch.clear()
    assert none_events == [] and choice.pretrained == "none" and cfg.arch == W.RECIPES["scratch"]["arch"]
    assert "socket.connect" in auto_events and len(server.requests) == 1


def test_pretrained_none_does_not_touch_torch_home(torch_home):
    W.resolve_training(TrainConfig(pretrained="none"))
    W.resolve_training(TrainConfig(arch="resnet18", pretrained="none"))
    assert not torch_home.exists()


# ---------------------------------------------------------------- (4) mlc weights

def test_weights_fetch_offline_fails_with_one_line(torch_home, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                    # nothing listens there: every connection is refused
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", W.OFFLINE_ENV.lower())}
    env.update(https_proxy=f"http://127.0.0.1:{port}", HTTPS_PROXY=f"http://127.0.0.1:{port}")
    proc = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "weights", "fetch", "resnet18"],
                          capture_output=True, text=True, env=env, timeout=540)
    assert proc.returncode != 0
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("mlc weights fetch: resnet18: could not download https://download.pytorch.org/")
    assert not list((torch_home / "hub" / "checkpoints").glob("*.pth"))


def test_weights_fetch_and_list_with_a_file_at_hand(torch_home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    assert mlc_main(["weights", "fetch", "resnet18"]) == 1
    assert "downloads are off" in capsys.readouterr().err
    dest = tmp_path / "carry"
    fake_imagenet_file(dest / "resnet18-f37072fd.pth")
    assert mlc_main(["weights", "fetch", "resnet18", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out.splitlines()
    from mlc_pipeline.fsutil import sha256_file
    assert out == ["ResNet18_Weights.IMAGENET1K_V1", str(dest / "resnet18-f37072fd.pth"),
                   f"sha256 {sha256_file(dest / 'resnet18-f37072fd.pth')}"]
    assert mlc_main(["weights", "list"]) == 0
    assert any(l.startswith("resnet18") and "missing" in l for l in capsys.readouterr().out.splitlines())
    fake_imagenet_file(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert mlc_main(["weights", "list"]) == 0
    assert any(l.startswith("resnet18") and "cached" in l for l in capsys.readouterr().out.splitlines())
    assert mlc_main(["weights", "fetch", "mlcnet"]) == 1
    assert "not a torchvision.models network" in capsys.readouterr().err
    assert mlc_main(["weights", "fetch", "auto"]) == 0            # arch auto's network
    assert capsys.readouterr().out.startswith("ResNet18_Weights.IMAGENET1K_V1\n")
    assert mlc_main(["weights", "list", "resnet99"]) == 2         # said, not an empty listing
    assert "'resnet99' is not a torchvision.models network" in capsys.readouterr().err
    # a cached file that is not resnet18's weights: listed as unusable, and never offered for copying
    torch.save(torchvision.models.resnet34(weights=None).state_dict(),
               torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert mlc_main(["weights", "list"]) == 0
    [line] = [l for l in capsys.readouterr().out.splitlines() if l.startswith("resnet18")]
    assert "unusable" in line and "is not torchvision resnet18 weights (other layers or shapes: 96 layers it does not have (first: " \
        "layer1.2.conv1.weight)): delete it" in line
    assert mlc_main(["weights", "fetch", "resnet18"]) == 1
    err = capsys.readouterr().err
    assert "is in the cache, but it is not torchvision resnet18 weights" in err and "delete it, then fetch again" in err


def test_a_cache_folder_that_cannot_be_written_is_named_not_the_download(torch_home, tmp_path, capsys, monkeypatch):
    """TORCH_HOME naming a file: `weights fetch` said "could not download https://...: [Errno 20] Not a
    directory", blaming the network it never reached. The folder is the problem, and is named so,
    before any connection; training's `auto` falls back to scratch with the same reason."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("TORCH_HOME", str(afile))
    _watch.update(thread=threading.get_ident(), events=[])
    try:
        assert mlc_main(["weights", "fetch", "resnet18"]) == 1
        _, choice = W.resolve_training(TrainConfig())
        events = list(_watch["events"])
    finally:
        _watch.clear()
    err = capsys.readouterr().err
    assert err.startswith(f"mlc weights fetch: resnet18: cannot write the weights cache {afile}/hub/checkpoints: "
                          f"Not a directory ({afile}/hub); nothing was downloaded"), err
    assert "could not download" not in err and len(err.strip().splitlines()) == 1
    assert choice.pretrained == "none" and "cannot write the weights cache" in choice.fallback, choice.fallback
    assert events == []                 # the network was never the problem, and never tried
    assert mlc_main(["weights", "list"]) == 0       # still a listing, that says why it stays missing
    assert f"cannot be made: {afile} is not a folder" in capsys.readouterr().out.splitlines()[0]


class RunsCode:
    """Unpickling this runs a command: what a hostile .pth holds (docs/training.md "Trust model")."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_that_would_run_code_is_refused_and_never_runs_it(torch_home, tmp_path, caplog):
    """Weights files, a user's and the cached ImageNet one, are read as tensors only (weights_only):
    a pickle holding a callable is refused, and what it would run never runs."""
    marker = tmp_path / "ran"
    hostile = tmp_path / "r18.pth"
    torch.save({**fake_imagenet_file(hostile), "fc.bias": RunsCode(marker)}, hostile)
    with pytest.raises(ValueError, match="not a weights file torch can load"):
        W.resolve_training(TrainConfig(pretrained=str(hostile)))
    assert not marker.exists(), "loading the file ran its code"
    cached = W.cache_path(R18)                                  # the same file as torchvision's cached one
    cached.parent.mkdir(parents=True)
    shutil.copy(hostile, cached)
    manifest = hymenoptera_manifest(tmp_path / "ds")
    result = train_model(manifest, tmp_path / "bundle", TrainConfig(pretrained="auto", **TINY))
    assert result.pretrained_used == "none"                     # auto: from scratch, after one warning
    [warning] = warnings_in(caplog)
    assert "resnet18-f37072fd.pth is in the cache, but it is not a weights file torch can load" in warning, warning
    assert not marker.exists(), "the cached ImageNet file ran its code"


def test_weights_that_do_not_fit_the_network_are_refused_before_anything_runs(torch_home, tmp_path, caplog):
    """Another network's weights (resnet34's under resnet18's cache name, or given as a file for arch
    resnet18) passed the checks and crashed training after a run had collected and published: now
    `imagenet` and a file are one line before collecting, and `auto` falls back after one warning."""
    from mlc_pipeline.config import ConfigError
    from mlc_pipeline.model.options import check_train_settings
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    cached = W.cache_path(R18)
    cached.parent.mkdir(parents=True)
    shutil.copy(other, cached)
    base = "classes: {a: {queries: [a], count: 1}}\nother: {queries: [o], count: 1}\n"
    (tmp_path / "c.yaml").write_text(base)

    def settings(**train):
        return load_config(tmp_path / "c.yaml", {"train": train})
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd.pth is in the cache, but it is not torchvision "
                                          r"resnet18 weights \(other layers or shapes: 96 layers it does not have") as err:
        check_train_settings(settings(pretrained="imagenet"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"r34.pth is not torchvision resnet18 weights"):
        check_train_settings(settings(pretrained=str(other), arch="resnet18"))
    junk = tmp_path / "junk.pth"
    torch.save({"layer.weight": torch.zeros(3)}, junk)
    with pytest.raises(ConfigError, match=r"junk.pth is not torchvision resnet18 weights.*name its network "
                                          r"with train.arch"):
        check_train_settings(settings(pretrained=str(junk)))
    check_train_settings(settings(pretrained=str(other), arch="resnet34"))          # its own network: fine
    cfg, choice = W.resolve_training(TrainConfig(pretrained="auto"))
    assert choice.pretrained == "none" and cfg.arch == W.RECIPES["scratch"]["arch"]
    assert "is in the cache, but it is not torchvision resnet18 weights" in choice.fallback
    assert len(warnings_in(caplog)) == 1


def test_a_bundles_export_given_as_weights_points_to_continue_without_torchs_advice(tmp_path):
    """`pretrained: <bundle>/export.pkl` gave torch's text: colour codes, cut mid-word, and its advice to
    load the file unsafely (the weights23 audit)."""
    from shapes import trained_bundle
    with pytest.raises(ValueError) as err:
        W.load_state(trained_bundle()[1] / "export.pkl")
    said = str(err.value)
    assert "a whole fastai model (a bundle's export.pkl), not a weights file" in said and "--continue" in said
    assert "\x1b" not in said and "weights_only" not in said and "\n" not in said
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match=r"text.pth: not a weights file torch can load \(") as err:
        W.load_state(tmp_path / "text.pth")
    assert "\x1b" not in str(err.value) and "weights_only" not in str(err.value)


def test_files_as_torchvision_publishes_them_are_used_not_refused(torch_home, tmp_path):
    """The check that reads a weights file before training demanded exactly a fresh network's keys, so
    it refused files torch itself loads: a resnet18 file without BatchNorm's `num_batches_tracked`
    counters (the older published format) and densenet's published files, whose layer names predate
    '.'-free module names and are renamed on loading (the verify23 audit)."""
    r18 = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
           if not k.endswith("num_batches_tracked")}
    cached = W.cache_path(R18)
    cached.parent.mkdir(parents=True)
    torch.save(r18, cached)
    assert W.misfit("resnet18", cached) is None
    _, choice = W.resolve_training(TrainConfig(pretrained="imagenet"))
    assert choice.pretrained == "imagenet" and choice.file == str(cached)
    dense = torchvision.models.densenet121(weights=None).state_dict()
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1.").replace(".norm2.", ".norm.2.")
           .replace(".conv2.", ".conv.2."): v for k, v in dense.items() if not k.endswith("num_batches_tracked")}
    assert old.keys() != dense.keys(), "no key renamed: a useless test"
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    assert W.misfit("densenet121", tmp_path / "densenet121-a639ec97.pth") is None
    assert "is not torchvision resnet18 weights" in W.misfit("resnet18", tmp_path / "densenet121-a639ec97.pth")


def test_a_continuation_takes_a_third_of_what_its_parent_trained_and_never_the_recipes_default(tmp_path):
    """mine.retrain's length (resolve_continued) from bundle.json: a third of the epochs the parent
    trained, at least 1. A fine-tune train.max_minutes cut before its unfrozen stage records 0 of
    them: that is 1, not the scratch recipe's 10 (the 0 read as "no record"); a bundle with no epochs
    recorded at all takes a third of its own recipe's (the pretrained recipe's 3: 1)."""
    def continued(config: dict, recipe: str = "pretrained", continued_from: str | None = None) -> int:
        meta = {"arch": "resnet18", "image_size": 32, "head": "sigmoid", "other_mode": "class",
                "config": {"arch": "resnet18", "image_size": 32, "crop": "random", "min_scale": 0.35, **config},
                "weights": {"pretrained": "imagenet", "recipe": recipe, "continued_from": continued_from}}
        cfg, choice = W.resolve_continued(TrainConfig(), meta, tmp_path / "r0")
        assert choice.continued_from == "r0"
        return cfg.epochs
    assert continued({"epochs": 0}) == 1                    # the budget left no unfrozen epoch
    assert continued({"epochs": 0}, recipe="scratch") == 1
    assert continued({"epochs": 10}, recipe="scratch") == 3 and continued({"epochs": 3}) == 1
    assert continued({}) == 1 and continued({}, recipe="scratch") == 10      # no record: the recipe's third
    assert continued({"epochs": 4}, continued_from="x") == 4                # a continuation's: as long
    assert continued({"epochs": 0}, continued_from="x") == 1                # never a fit of 0 epochs
