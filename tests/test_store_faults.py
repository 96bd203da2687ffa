"""An S3 endpoint that resets its connections in the middle of a publish (the scale26 audit, finding 3):
~2,000 asyncio "Task exception was never retrieved" tracebacks (aiohttp's abandoned request writers)
reached the terminal before the one-line error. A TCP proxy in front of moto resets every connection
once a given number of bytes went through it."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

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
