"""An S3 endpoint that resets its connections in the middle of a publish (the scale26 audit, finding 3):
~2,000 asyncio "Task exception was never retrieved" tracebacks (aiohttp's abandoned request writers)
reached the terminal before the one-line error. A TCP proxy in front of moto resets every connection
once a given number of bytes went through it. An endpoint that accepts connections and never answers
(the beyond28 audit, finding 1) hung a command ~7 minutes, silently: mlc set no timeouts or retry bound."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time

import pytest
import yaml

from helpers import ENV, MLC
from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import load_config

pytestmark = pytest.mark.slow


class ResettingProxy:
    """Loopback TCP proxy to `port`: passes bytes both ways until `limit` bytes went upstream in all,
    then resets (RST) every connection, open or new."""

    def __init__(self, port: int, limit: int):
        self.port, self.limit, self.sent, self.lock = port, limit, 0, threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.address = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def tripped(self, sent: int = 0) -> bool:
        with self.lock:
            self.sent += sent
            return self.sent >= self.limit

    @staticmethod
    def reset(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:         # closed by the other direction's thread already
                pass

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:         # the proxy was closed
                return
            if self.tripped():
                self.reset(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            for a, b, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self.pipe, args=(a, b, counted), daemon=True).start()

    def pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while (data := src.recv(65536)) and not self.tripped(len(data) if counted else 0):
                dst.sendall(data)
        except OSError:             # the other direction reset both
            pass
        self.reset(src, dst)

    def close(self) -> None:
        self.server.close()


def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "train", "cat", "cat", "http://x/a.jpg", "url_c", 1, 1, 4, "CC", "o", "o", "t",
                 None, None, "")


def test_connections_reset_mid_upload_give_the_one_line_only(s3_server, tmp_path):
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-resets")
    proxy = ResettingProxy(int(s3_server.rsplit(":", 1)[1]), limit=1_000_000)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "s3://mlc-resets/p", "cache_dir": str(tmp_path / "cache"),
        "storage_options": {"endpoint_url": proxy.address},
        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}}))
    cfg = load_config(config)
    with Catalog(cfg.catalog_path) as c:        # 400 downloads of 20 KB each, not published yet
        c.upsert_found([found(f"{i}") for i in range(400)], "run")
        for i in range(400):
            path = cfg.layout.raw("flickr") / f"{i % 100:02d}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(20_000))
            c.set_status(c.get_by_photo("flickr", f"{i}")["id"], "downloaded", None, "run", "download",
                         file_path=str(path))
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    try:        # a takedown: its publish uploads the files, and the proxy resets them after ~1 MB
        res = subprocess.run(MLC + ["remove", "-c", str(config), "--photo-id", "0", "--reason", "owner"],
                             env={**ENV, **creds}, text=True, capture_output=True, timeout=300)
    finally:
        proxy.close()
    assert proxy.tripped(), "the proxy never reset a connection: the test tests nothing"
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Task exception was never retrieved" not in res.stderr and "Traceback" not in res.stderr, \
        f"{res.stderr.count('Task exception was never retrieved')} tracebacks:\n{res.stderr[-3000:]}"
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("mlc: object store s3://mlc-resets/p: ") and len(lines) <= 3, res.stderr[-3000:]


class SilentServer:
    """Loopback TCP server that accepts every connection and never sends a byte (a stalled gateway)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.address = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:         # closed
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_store_that_accepts_and_never_answers_ends_in_one_line_soon(s3_server, tmp_path):
    """With only read_timeout set by the user (1 s), mlc's bounded retries apply: ~4 tries, not s3fs's 5
    times botocore's 5 (over a minute at 1 s; ~7 minutes at the 15 s default). And a user who sets
    nothing gets bounded defaults on the client itself."""
    from mlc_pipeline import objectstore
    silent = SilentServer()
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "s3://mlc-stalled/p", "cache_dir": str(tmp_path / "cache"),
        "storage_options": {"endpoint_url": silent.address, "config_kwargs": {"read_timeout": 1}},
        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}}))
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    start = time.monotonic()
    try:
        res = subprocess.run(MLC + ["inspect", "-c", str(config)], env={**ENV, **creds}, text=True,
                             capture_output=True, timeout=90)
    finally:
        silent.close()
    took = time.monotonic() - start
    assert silent.held, "nothing connected to the silent server: the test tests nothing"
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert f"the object store at {silent.address} accepted the connection but did not answer" in lines[0], lines[0]
    assert "config_kwargs" in lines[0], lines[0]
    assert took < 25, f"{took:.0f} s before the line"
    # the defaults a user gets with no config_kwargs, and what a user's key replaces: on the client itself
    for given, read_timeout in (({}, objectstore.S3_CLIENT["read_timeout"]), ({"read_timeout": 300}, 300)):
        fs = objectstore.Store("s3://mlc-stalled/p", {"endpoint_url": s3_server, "config_kwargs": given}).fs
        config_ = fs.connect().meta.config
        assert (config_.read_timeout, config_.connect_timeout) == (read_timeout, objectstore.S3_CLIENT["connect_timeout"])
        assert config_.retries == objectstore.S3_CLIENT["retries"] and fs.retries == objectstore.S3FS_TRIES
